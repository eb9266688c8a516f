"""A generation model loaded from its repository folder: decoder session, tokenizer, chat
template, and the scheduler that serves them.

The folder (what ``forwardpass zoo add smollm2-135m-instruct`` writes)::

    M/config.pbtxt          backend "onnxruntime", parameter "generation" (settings JSON)
    M/tokenizer.json        Hugging Face tokenizers file
    M/chat_template.jinja   the model's chat template (optional)
    M/1/model.onnx          the decoder step graph of ``zoo.decoder``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.generation.sampling import parse_sampling
from forwardpass.generation.scheduler import (
    Decoder,
    GenerationRequest,
    GenerationScheduler,
    GenerationStream,
)
from forwardpass.generation.settings import GenerationSettings
from forwardpass.model_config import ModelConfig
from forwardpass.zoo.decoder import DecoderShape

__all__ = ["GenerationModel", "decoder_shape", "load_generation"]


@dataclass(slots=True)
class GenerationModel:
    """One served version of a generation model."""

    name: str
    version: int
    settings: GenerationSettings
    scheduler: GenerationScheduler
    tokenizer: Any
    chat_template: str | None
    providers: list[str]

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def submit_text(
        self, text: str, parameters: dict[str, Any], request_id: str = ""
    ) -> GenerationStream:
        """Tokenize ``text``, validate ``parameters`` (sampling) and queue the request."""
        settings = self.settings
        params = parse_sampling(
            parameters,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_limit=min(settings.max_tokens_limit, settings.context_length - 1),
            vocab=self.scheduler.decoder.shape.vocab,
        )
        ids = self.encode(text)
        return self.scheduler.submit(GenerationRequest(ids, params, request_id))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """``messages`` rendered through the model's chat template, ready for the assistant's
        turn (for a chat front end). Needs jinja2."""
        if self.chat_template is None:
            raise InvalidArgument(f"model {self.name!r} has no chat template")
        import jinja2

        try:
            template = jinja2.Environment(autoescape=False).from_string(self.chat_template)
            return template.render(messages=messages, add_generation_prompt=True)
        except jinja2.TemplateError as exc:  # e.g. the template's raise_exception on a role
            raise InvalidArgument(
                f"the chat template of model {self.name!r} refused the messages: {exc}"
            ) from None


def load_generation(
    config: ModelConfig, folder: Path, version: int, settings: GenerationSettings
) -> GenerationModel:
    """Load version ``version`` of the generation model in ``folder`` (worker thread)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from forwardpass.runtime.onnx import select_providers

    path = folder / str(version) / (config.default_model_filename or "model.onnx")
    if not path.is_file():
        raise InvalidModelConfig(f"model file {path} does not exist")
    tokenizer_path = folder / settings.tokenizer
    if not tokenizer_path.is_file():
        raise InvalidModelConfig(f"generation model {config.name!r} has no {settings.tokenizer}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    providers, _warnings = select_providers(config, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise InvalidModelConfig(f"onnxruntime cannot load {path.name}: {exc}") from exc
    shape = decoder_shape(session, config.name)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    template_path = folder / settings.chat_template
    template = template_path.read_text("utf-8") if template_path.is_file() else None
    scheduler = GenerationScheduler(
        Decoder(session, shape),
        settings,
        lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
        name=config.name,
    )
    return GenerationModel(
        config.name, version, settings, scheduler, tokenizer, template, session.get_providers()
    )


def decoder_shape(session: Any, name: str) -> DecoderShape:
    """The decoder shape read off the graph's tensors (and a check of its contract)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layers = sum(1 for n in inputs if n.startswith("past_key_"))
    missing = [
        n for n in ("input_ids", "position_ids", "past_length", "past_key_0") if n not in inputs
    ]
    if missing or "logits" not in outputs:
        raise InvalidModelConfig(
            f"generation model {name!r}: the graph is not a forwardpass decoder step "
            f"(missing {', '.join(missing) or 'output logits'}; see forwardpass.zoo.decoder)"
        )
    past = inputs["past_key_0"].shape
    vocab = outputs["logits"].shape[-1]
    if not isinstance(past[1], int) or not isinstance(past[3], int) or not isinstance(vocab, int):
        raise InvalidModelConfig(f"generation model {name!r}: cache heads/dims must be fixed")
    return DecoderShape(layers, past[1], past[3], vocab)
