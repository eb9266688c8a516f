"""Reads a model's ``processing`` declaration and builds its :class:`Processing`.

The declaration is JSON or YAML text in the config parameter ``processing`` (in a
``config.yaml`` it may also be written as a plain ``processing:`` mapping)::

    inputs:
      - {name: image, kind: image, to: input, resize: {shorter: 256}, crop: [224, 224],
         scale: 1, mean: 127, std: 128}
      - {name: text, kind: text, max_length: 256}
      - {kind: tabular, to: features, scaler: scaler.json}
      - {name: audio, kind: audio, to: input_features, sample_rate: 16000,
         features: log_mel, n_mels: 80, max_seconds: 30}
      - {name: user_id, kind: lookup, to: user, vocabulary: users.txt}
    outputs:
      - {name: probabilities, from: logits, steps: [softmax]}
      - {name: label, from: logits, steps: [label]}
      - {name: titles, from: scores, steps: [{exclude: {table: seen.npz, by: user}},
                                             {top_labels: 10}]}
      - {name: text, from: probs, steps: [{ctc_greedy: {dictionary: ppocr_keys_v1.txt}}]}
      - {name: text, from: probs, decode: ctc_greedy, dictionary: keys.txt, scores: score}
      - {name: detections, from: output0, decode: nms, transpose: true, labels: classes,
         image: image}    # boxes back in the client's picture pixels

``pool: process`` runs the model's input processing in the server's pool of worker processes
(:mod:`.pool`), ``pool: thread`` in a thread of the server process even when the server has a
pool (``--processing-workers``); without it the server's setting decides.

Input kinds: ``image`` (:mod:`.image`), ``text`` (:mod:`.text`), ``tabular``
(:mod:`.tabular`), ``audio`` (:mod:`.audio`: WAV clips → waveform or log-mel), ``lookup``
(:mod:`.lookup`: ids → vocabulary rows).

An output is either a chain of ``steps`` (:mod:`.outputs`) giving one client output, or a
``decode:`` entry (``ctc_greedy`` or ``nms``, :mod:`.decoding`) whose options sit beside
``name`` and ``from``; a decoder may give a second output, named by its ``scores`` (CTC
confidence) or ``labels`` (detection class names) option. The same decoders are chain steps
too (``{ctc_greedy: {...}}``, ``{nms: {...}}``) when one output is enough. Given ``image``
(the name of an image input), ``nms`` maps its boxes from model-input pixels back into each
picture's own, undoing resize, crop and letterbox.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from forwardpass.errors import ForwardpassError, InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.processing.base import InputProcessor, OutputProcessor, Processing

__all__ = ["POOLS", "build_processing", "read_declaration"]

#: The values of a declaration's ``pool`` ("" when it does not say).
POOLS = ("", "process", "thread")


def read_declaration(config: ModelConfig) -> dict[str, Any] | None:
    """The parsed ``processing`` parameter, or None when the model declares none."""
    text = config.parameters.get("processing")
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidModelConfig(
                f"parameter processing is neither JSON nor YAML: {exc}"
            ) from None
    if not isinstance(value, dict) or set(value) - {"inputs", "outputs", "pool"}:
        raise InvalidModelConfig(
            "parameter processing must be a mapping with inputs and/or outputs (and pool)"
        )
    if value.get("pool", "") not in POOLS:
        raise InvalidModelConfig(
            f"processing pool must be one of {', '.join(p for p in POOLS if p)}, "
            f"got {value['pool']!r}"
        )
    return value


def build_processing(
    config: ModelConfig, model_dir: Path, labels: Mapping[str, Sequence[str]]
) -> Processing:
    """The processors a model declares; an empty :class:`Processing` when it declares none."""
    declaration = read_declaration(config) or {}
    inputs: list[InputProcessor] = []
    outputs: list[OutputProcessor] = []
    try:
        for i, item in enumerate(_list(declaration.get("inputs"), "inputs")):
            inputs.append(_input(config, model_dir, item, i))
        model_inputs = {spec.name: spec for spec in config.inputs}
        for i, item in enumerate(_list(declaration.get("outputs"), "outputs")):
            outputs.append(_output(config, item, i, labels, model_inputs, model_dir))
    except ForwardpassError as exc:
        raise InvalidModelConfig(f"processing: {exc.message}") from None
    processing = Processing(config, tuple(inputs), tuple(outputs), declaration.get("pool", ""))
    _check_unique(processing)
    _check_sources(processing)
    return processing


def _list(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise InvalidModelConfig(f"processing {what} must be a list of mappings")
    return value


def _input(config: ModelConfig, model_dir: Path, item: Mapping[str, Any], i: int) -> InputProcessor:
    options = dict(item)
    kind = options.pop("kind", None)
    if kind == "image":
        from forwardpass.processing.image import ImageInput

        name, target = _name(options, i), config.input(str(options.pop("to", "")))
        if target is None:
            raise InvalidModelConfig(f"image input {name!r}: 'to' must name a model input")
        return ImageInput(name, target, config.batching, options)
    if kind == "text":
        from forwardpass.processing.text import TextInput

        return TextInput(_name(options, i), config, model_dir, options)
    if kind == "tabular":
        from forwardpass.processing.tabular import TabularInput

        return TabularInput(config, model_dir, options)
    if kind == "audio":
        from forwardpass.processing.audio import AudioInput

        return AudioInput(_name(options, i), config, options)
    if kind == "lookup":
        from forwardpass.processing.lookup import LookupInput

        return LookupInput(_name(options, i), config, model_dir, options)
    raise InvalidModelConfig(
        f"inputs[{i}]: kind must be image, text, tabular, audio or lookup, got {kind!r}"
    )


def _name(options: dict[str, Any], i: int) -> str:
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        raise InvalidModelConfig(f"inputs[{i}] needs a name (what clients send)")
    return name


def _output(
    config: ModelConfig,
    item: Mapping[str, Any],
    i: int,
    labels: Mapping[str, Sequence[str]],
    model_inputs: Mapping[str, Any],
    model_dir: Path,
) -> OutputProcessor:
    from forwardpass.processing.outputs import OutputChain

    options = dict(item)
    name = options.pop("name", None)
    source_name = options.pop("from", None)
    decode = options.pop("decode", None)
    steps = options.pop("steps", [])
    if options and decode is None:
        raise InvalidModelConfig(f"outputs[{i}]: unknown key(s) {sorted(options)}")
    if decode is not None and "steps" in item:
        raise InvalidModelConfig(f"outputs[{i}]: give either steps or decode, not both")
    if not isinstance(name, str) or not name:
        raise InvalidModelConfig(f"outputs[{i}] needs a name")
    source = config.output(str(source_name))
    if source is None:
        raise InvalidModelConfig(
            f"output {name!r}: 'from' must name a model output, got {source_name!r}"
        )
    if decode is not None:
        from forwardpass.processing.decoding import Decoder

        return Decoder(name, source, str(decode), options, labels.get(source.name, ()), model_dir)
    if not isinstance(steps, list):
        raise InvalidModelConfig(f"output {name!r}: steps must be a list")
    return OutputChain(name, source, steps, labels.get(source.name, ()), model_inputs, model_dir)


def _check_sources(processing: Processing) -> None:
    """Every tensor an output step reads exists: a model output or input, or image geometry."""
    from forwardpass.processing.image import ImageInput, geometry_key

    config = processing.config
    known = {s.name for s in (*config.inputs, *config.outputs)}
    known |= {
        geometry_key(p.inputs[0].name) for p in processing.inputs if isinstance(p, ImageInput)
    }
    for p in processing.outputs:
        missing = [s for s in p.sources if s not in known]
        if missing:
            names = [s.name for s in p.outputs]
            raise InvalidModelConfig(
                f"processing: output {names[0]!r} reads {missing}, which no model tensor or "
                "image input provides"
            )


def _check_unique(processing: Processing) -> None:
    seen: set[str] = set()
    for p in processing.inputs:
        for target in p.targets:
            if target in seen:
                raise InvalidModelConfig(f"processing: model input {target!r} is filled twice")
            seen.add(target)
    names = [s.name for s in processing.client_inputs]
    if len(names) != len(set(names)):
        raise InvalidModelConfig(f"processing: client input names collide: {names}")
    names = [s.name for s in processing.client_outputs]
    if len(names) != len(set(names)):
        raise InvalidModelConfig(f"processing: client output names collide: {names}")
