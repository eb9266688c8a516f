"""A BERT sentence encoder rebuilt in torch from its ONNX initializers (extra ``torch``).

:mod:`.torch_graph` converts feed-forward graphs node by node; a transformer's graph
(LayerNormalization, Softmax, Erf, the attention reshapes) is outside it. A BERT-family
encoder exported by ``torch.onnx`` from Hugging Face ``transformers`` (what ``forwardpass
import huggingface`` and the zoo's ``all-minilm-l6-v2`` write) keeps the module path in every
node name (``/model/encoder/layer.0/attention/self/query/MatMul``) and in the bias and
LayerNorm initializer names, so :func:`read_encoder` finds each weight by that path rather
than by the graph's shape, and checks the structure it relies on: word/position/token-type
embeddings, post-LayerNorm layers with exact (Erf) GELU, mean pooling over the attention mask
and L2 normalisation at the end. Anything else raises :class:`~forwardpass.errors.Unsupported`
naming what is missing.

:class:`SentenceEncoder` is the same computation in torch (:func:`verify_encoder` proves a
reading against ONNX Runtime); :func:`shrink` derives a student from it: a subset of the
layers (e.g. every other one), optionally a narrower feed-forward (the intermediate neurons
with the largest ``‖w_in‖·‖w_out‖`` kept; :mod:`.encoder_width` chooses and re-fits them on
real activations instead). :func:`export_encoder` writes it back with the
teacher's input and output names and dynamic batch and sequence axes, so the tokenizer and
the config stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from forwardpass.errors import InvalidArgument, Unsupported

__all__ = [
    "EncoderWeights",
    "SentenceEncoder",
    "export_encoder",
    "largest_weights",
    "read_encoder",
    "shrink",
    "verify_encoder",
]

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)$")
#: Per-layer weights, by their transformers module path below ``encoder.layer.N.``.
_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


@dataclass(slots=True)
class EncoderWeights:
    """A BERT encoder's weights (numpy, linear weights as ``[in, out]``) and its shape."""

    embeddings: dict[str, np.ndarray]
    #: One dict per layer: ``<linear>.weight`` / ``.bias``, ``<norm>.weight`` / ``.bias``.
    layers: list[dict[str, np.ndarray]]
    head_dim: int
    eps: float
    input_names: tuple[str, ...]
    output_name: str

    @property
    def hidden(self) -> int:
        return int(self.embeddings["word"].shape[1])

    def heads(self, layer: int) -> int:
        return int(self.layers[layer]["attention.self.query.weight"].shape[1]) // self.head_dim

    def intermediate(self, layer: int) -> int:
        return int(self.layers[layer]["intermediate.dense.weight"].shape[1])

    def describe(self) -> str:
        return (
            f"{len(self.layers)} layers, hidden {self.hidden}, "
            f"{self.heads(0)}×{self.head_dim} heads, FFN {self.intermediate(0)}"
        )


def _path(node_name: str) -> str:
    """``/model/encoder/layer.0/attention/self/query/MatMul`` → ``...attention.self.query``."""
    return node_name.strip("/").rsplit("/", 1)[0].replace("/", ".")


def read_encoder(model: onnx.ModelProto) -> EncoderWeights:
    """The encoder's weights, found by module path (see the module docstring)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ops = {n.op_type for n in graph.node}
    names = tuple(i.name for i in graph.input if i.name not in inits)
    if len(graph.output) != 1:
        raise Unsupported("a sentence encoder has one output (the pooled embedding)")
    missing_inputs = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing_inputs or set(names) - set(INPUTS):
        raise Unsupported(
            f"a BERT encoder takes {'/'.join(INPUTS)}; this graph takes {list(names)}"
        )
    if "ReduceL2" not in ops or "ReduceSum" not in ops or "Erf" not in ops:
        raise Unsupported(
            "not a mean-pooled, L2-normalised BERT encoder with exact GELU "
            "(no ReduceSum/ReduceL2/Erf in the graph)"
        )

    # The exporter shares equal weights (fresh LayerNorms are all ones) through Identity.
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }

    def resolve(name: str) -> str:
        for _ in range(len(alias) + 1):
            if name not in alias:
                break
            name = alias[name]
        return name

    def known(name: str) -> bool:
        return resolve(name) in inits

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[resolve(name)]).astype(np.float32)

    def by_suffix(suffix: str) -> np.ndarray:
        found = [n for n in inits if n.endswith(suffix)]
        if len(found) != 1:
            raise Unsupported(
                f"not a transformers BERT export: {len(found)} initializers end in {suffix!r}"
            )
        return array(found[0])

    embeddings = {
        "word": by_suffix("embeddings.word_embeddings.weight"),
        "position": by_suffix("embeddings.position_embeddings.weight"),
        "norm.weight": by_suffix("embeddings.LayerNorm.weight"),
        "norm.bias": by_suffix("embeddings.LayerNorm.bias"),
    }
    token_types = [n for n in inits if n.endswith("embeddings.token_type_embeddings.weight")]
    if token_types:
        embeddings["token_type"] = array(token_types[0])
    layers: dict[int, dict[str, np.ndarray]] = {}
    eps: set[float] = set()
    head_dims: set[int] = set()
    for node in graph.node:
        match = _LAYER.search(_path(node.name))
        if match is None:
            continue
        layer = layers.setdefault(int(match.group(1)), {})
        local = match.group(2)
        if node.op_type in ("MatMul", "Add") and local in _LINEARS:
            found = [x for x in node.input if known(x)]
            if len(found) == 1:
                kind = "weight" if node.op_type == "MatMul" else "bias"
                layer[f"{local}.{kind}"] = array(found[0])
        elif node.op_type == "LayerNormalization" and local in _NORMS:
            layer[f"{local}.weight"] = array(node.input[1])
            layer[f"{local}.bias"] = array(node.input[2])
            eps.update(a.f for a in node.attribute if a.name == "epsilon")
        elif node.op_type == "Concat" and local == "attention.self" and len(node.input) >= 3:
            # The head split's target shape: [batch, sequence, -1, head_dim] (the constants
            # -1 and head_dim as one input or two).
            tail = consts.get(node.input[-1])
            if tail is not None and tail.size and int(tail.reshape(-1)[-1]) > 0:
                head_dims.add(int(tail.reshape(-1)[-1]))
    if not layers:
        raise Unsupported("no encoder.layer.N nodes: not a transformers BERT export")
    wanted = {f"{n}.{p}" for n in (*_LINEARS, *_NORMS) for p in ("weight", "bias")}
    ordered = [layers[i] for i in sorted(layers)]
    if sorted(layers) != list(range(len(layers))):
        raise Unsupported(f"encoder layers {sorted(layers)} are not numbered 0..N-1")
    for i, layer_weights in enumerate(ordered):
        lacking = sorted(wanted - set(layer_weights))
        if lacking:
            raise Unsupported(f"encoder layer {i} lacks {', '.join(lacking)}")
    if len(head_dims) != 1:
        raise Unsupported(f"cannot tell the attention head size (found {sorted(head_dims)})")
    return EncoderWeights(
        embeddings,
        ordered,
        head_dims.pop(),
        float(min(eps)) if eps else 1e-12,
        names,
        graph.output[0].name,
    )


def _linear(weights: Mapping[str, np.ndarray], name: str) -> nn.Linear:
    w = np.asarray(weights[f"{name}.weight"])
    lin = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
        lin.bias.copy_(torch.from_numpy(np.asarray(weights[f"{name}.bias"])))
    return lin


def _norm(weights: Mapping[str, np.ndarray], name: str, eps: float) -> nn.LayerNorm:
    w = np.asarray(weights[f"{name}.weight"])
    ln = nn.LayerNorm(w.shape[0], eps=eps)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(w))
        ln.bias.copy_(torch.from_numpy(np.asarray(weights[f"{name}.bias"])))
    return ln


class _Dense(nn.Module):
    """transformers' ``*.output`` (``dense``, residual, ``LayerNorm``) and ``intermediate``
    (``dense``, GELU) modules."""

    def __init__(self, dense: nn.Linear, norm: nn.LayerNorm | None = None) -> None:
        super().__init__()
        self.dense = dense
        self.LayerNorm = norm

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.LayerNorm is None:
            return F.gelu(self.dense(x))
        assert residual is not None
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, weights: Mapping[str, np.ndarray], head_dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (
            _linear(weights, f"attention.self.{n}") for n in ("query", "key", "value")
        )
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape[0], x.shape[1]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, -1, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = (q @ k.transpose(-1, -2)) * (self.head_dim**-0.5) + mask
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)


class _Attention(nn.Module):
    def __init__(self, weights: Mapping[str, np.ndarray], head_dim: int, eps: float) -> None:
        super().__init__()
        self.add_module("self", _SelfAttention(weights, head_dim))
        self.output = _Dense(
            _linear(weights, "attention.output.dense"),
            _norm(weights, "attention.output.LayerNorm", eps),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context = self._modules["self"](x, mask)  # type: ignore[misc]
        return self.output(context, x)


class _Layer(nn.Module):
    """One post-LayerNorm BERT layer, its submodules named as in transformers."""

    def __init__(self, weights: Mapping[str, np.ndarray], head_dim: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(weights, head_dim, eps)
        self.intermediate = _Dense(_linear(weights, "intermediate.dense"))
        self.output = _Dense(
            _linear(weights, "output.dense"), _norm(weights, "output.LayerNorm", eps)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, e: Mapping[str, np.ndarray], eps: float) -> None:
        super().__init__()

        def table(name: str) -> nn.Embedding:
            return nn.Embedding.from_pretrained(torch.from_numpy(e[name].copy()), freeze=False)

        self.word_embeddings = table("word")
        self.position_embeddings = table("position")
        self.token_type_embeddings = table("token_type") if "token_type" in e else None
        self.LayerNorm = _norm({"n.weight": e["norm.weight"], "n.bias": e["norm.bias"]}, "n", eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        if self.token_type_embeddings is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class _Stack(nn.Module):
    def __init__(self, layers: Sequence[_Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        hidden = [x]
        for layer in self.layer:
            hidden.append(layer(hidden[-1], mask))
        return hidden


def _params(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """``module``'s parameters under ``prefix`` as numpy, linear weights as ``[in, out]``."""
    linear = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    out: dict[str, np.ndarray] = {}
    for name, param in module.named_parameters():
        value = param.detach().numpy().copy()
        out[f"{prefix}{name}"] = value.T.copy() if name in linear else value
    return out


class SentenceEncoder(nn.Module):
    """BERT embeddings, post-LayerNorm layers, mean pooling over the mask, L2 normalisation.

    ``forward(input_ids, attention_mask[, token_type_ids])`` returns the unit embedding;
    :meth:`encode` also returns every layer's hidden states (for hidden-state matching).
    Submodules carry transformers' names, so an export of it reads back with
    :func:`read_encoder`.
    """

    def __init__(self, weights: EncoderWeights) -> None:
        super().__init__()
        self.embeddings = _Embeddings(weights.embeddings, weights.eps)
        self.encoder = _Stack([_Layer(w, weights.head_dim, weights.eps) for w in weights.layers])
        self.head_dim, self.eps = weights.head_dim, weights.eps
        self.input_names, self.output_name = weights.input_names, weights.output_name

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.embeddings(input_ids, token_type_ids)
        keep = attention_mask.to(x.dtype)
        mask = (1.0 - keep)[:, None, None, :] * torch.finfo(x.dtype).min
        hidden = self.encoder(x, mask)
        x = hidden[-1]
        weights = keep.unsqueeze(-1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1, eps=1e-12), hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.encode(input_ids, attention_mask, token_type_ids)[0]

    def weights(self) -> EncoderWeights:
        """The current weights, in :func:`read_encoder`'s form."""
        e = _params(self.embeddings, "")
        embeddings = {
            "word": e["word_embeddings.weight"],
            "position": e["position_embeddings.weight"],
            "norm.weight": e["LayerNorm.weight"],
            "norm.bias": e["LayerNorm.bias"],
        }
        if "token_type_embeddings.weight" in e:
            embeddings["token_type"] = e["token_type_embeddings.weight"]
        layers = [_params(layer, "") for layer in self.encoder.layer]
        return EncoderWeights(
            embeddings, layers, self.head_dim, self.eps, self.input_names, self.output_name
        )


def largest_weights(w_in: np.ndarray, w_out: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` feed-forward neurons of largest ``‖w_in‖·‖w_out‖`` (sorted indices), for
    ``w_in`` (hidden × neurons) and ``w_out`` (neurons × hidden): the data-free choice."""
    score = np.linalg.norm(w_in, axis=0) * np.linalg.norm(w_out, axis=1)
    return np.sort(np.argsort(-score, kind="stable")[:width])


def shrink(
    weights: EncoderWeights, layers: Sequence[int], intermediate: int | None = None
) -> EncoderWeights:
    """A student's starting weights: the teacher's ``layers`` (in order), optionally with the
    feed-forward cut to the ``intermediate`` neurons of largest ``‖w_in‖·‖w_out‖``."""
    count = len(weights.layers)
    if not layers or any(not 0 <= i < count for i in layers) or len(set(layers)) != len(layers):
        raise InvalidArgument(
            f"student layers {list(layers)}: distinct indices of the teacher's {count} layers"
        )
    if list(layers) != sorted(layers):
        raise InvalidArgument(f"student layers {list(layers)} must keep the teacher's order")
    chosen: list[dict[str, np.ndarray]] = []
    for i in layers:
        layer = {k: v.copy() for k, v in weights.layers[i].items()}
        if intermediate is not None:
            width = layer["intermediate.dense.weight"].shape[1]
            if not 1 <= intermediate <= width:
                raise InvalidArgument(f"student FFN width {intermediate}: between 1 and {width}")
            keep = largest_weights(
                layer["intermediate.dense.weight"], layer["output.dense.weight"], intermediate
            )
            layer["intermediate.dense.weight"] = layer["intermediate.dense.weight"][:, keep]
            layer["intermediate.dense.bias"] = layer["intermediate.dense.bias"][keep]
            layer["output.dense.weight"] = layer["output.dense.weight"][keep]
        chosen.append(layer)
    embeddings = {k: v.copy() for k, v in weights.embeddings.items()}
    return EncoderWeights(
        embeddings, chosen, weights.head_dim, weights.eps, weights.input_names, weights.output_name
    )


class _Exported(nn.Module):
    """Positional inputs in the teacher's order (the exporter names them so)."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        super().__init__()
        self.model = encoder  # node names /model/encoder/layer.N/..., as transformers'
        self.names = encoder.input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.names, tensors, strict=True))
        return self.model(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))


def export_encoder(encoder: SentenceEncoder, path: Path, samples: Mapping[str, Any]) -> None:
    """Write ``encoder`` to ``path`` with the teacher's I/O names (dynamic batch, sequence)."""
    from forwardpass.importers.torch import quiet_export

    names = list(encoder.input_names)
    was_training = encoder.training
    wrapper = _Exported(encoder).eval()
    try:
        quiet_export(
            torch,
            wrapper,
            tuple(torch.from_numpy(np.asarray(samples[n], np.int64)) for n in names),
            path,
            input_names=names,
            output_names=[encoder.output_name],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                encoder.output_name: {0: "batch"},
            },
        )
    finally:
        encoder.train(was_training)


def verify_encoder(
    model: onnx.ModelProto | Path, encoder: SentenceEncoder, feeds: Mapping[str, np.ndarray]
) -> float:
    """Largest absolute difference between ONNX Runtime on ``model`` and ``encoder``."""
    from forwardpass.optimize.torch_graph import _ort_outputs

    names = encoder.input_names
    (expected,) = _ort_outputs(model, {n: feeds[n] for n in names})
    with torch.no_grad():
        got = _Exported(encoder).eval()(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
    return float(np.max(np.abs(expected - got)))
