"""A Llama decoder step as one ONNX graph whose key/value cache forwardpass owns.

The graph runs one step for a batch of sequences: ``S`` new tokens each (a whole prompt at
prefill, one token while decoding) against a past of ``W`` cached positions per layer.

Inputs::

    input_ids     int64 [B, S]      the new tokens
    position_ids  int64 [B, S]      their positions (RoPE), one past the last cached one
    past_length   int64 [B]         how many of the W past positions are real, per row
    past_key_L    f32   [B, Hkv, W, D]   for every layer L (and past_value_L)

Outputs::

    logits        f32   [B, V]           next-token logits at the last new position
    new_key_L     f32   [B, Hkv, S, D]   the new tokens' keys (and new_value_L), post-RoPE

The graph never concatenates and returns the whole cache: it returns only the new positions'
keys and values, and the scheduler writes them into its own preallocated buffers, which it
then binds as the next step's ``past_*`` without copying (``W`` may be the buffer's full
length: positions at or past ``past_length`` are masked out). That is why ``past_length`` is
an input rather than an attention mask: the mask is built inside the graph from it.

The module is written here from the Hugging Face weights (not ``LlamaForCausalLM`` traced as
it is), so the exported graph has exactly this contract; :func:`verify` checks it against
transformers' own forward pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DecoderShape", "export_decoder", "shape_of", "verify"]


@dataclass(frozen=True, slots=True)
class DecoderShape:
    """The sizes a scheduler needs to allocate the cache for an exported decoder."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    def input_names(self) -> list[str]:
        names = ["input_ids", "position_ids", "past_length"]
        for layer in range(self.layers):
            names += [f"past_key_{layer}", f"past_value_{layer}"]
        return names

    def output_names(self) -> list[str]:
        names = ["logits"]
        for layer in range(self.layers):
            names += [f"new_key_{layer}", f"new_value_{layer}"]
        return names


def shape_of(config: Any) -> DecoderShape:
    """The decoder shape of a transformers ``LlamaConfig``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return DecoderShape(
        config.num_hidden_layers, config.num_key_value_heads, head_dim, config.vocab_size
    )


def _module(model: Any) -> Any:
    """The step module over ``model``'s (a ``LlamaForCausalLM``) weights."""
    import torch

    config = model.config
    shape = shape_of(config)
    heads = config.num_attention_heads
    group = heads // shape.kv_heads
    eps = config.rms_norm_eps
    rope = getattr(config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))

    def rms(x: Any, weight: Any) -> Any:
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + eps))

    def rotate(x: Any) -> Any:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # A submodule, so that its weights are the graph's initializers (not constants
            # traced in; the embedding and the tied lm_head stay one tensor).
            self.base = model
            dim = shape.head_dim
            inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, input_ids: Any, position_ids: Any, past_length: Any, *past: Any) -> Any:
            batch, new = input_ids.shape
            inner = self.base.model
            hidden = inner.embed_tokens(input_ids)
            freqs = position_ids[..., None].float() * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos()[:, None]
            sin = emb.sin()[:, None]
            window = past[0].shape[2]
            # Past position j of row b is visible iff j < past_length[b]; new position j is
            # visible from new position i iff j <= i (causal).
            cols = torch.arange(window, device=input_ids.device)
            past_ok = cols[None, :] < past_length[:, None]  # [B, W]
            steps = torch.arange(new, device=input_ids.device)
            causal = steps[None, :] <= steps[:, None]  # [S, S]
            visible = torch.cat(
                (
                    past_ok[:, None, :].expand(batch, new, window),
                    causal[None].expand(batch, -1, -1),
                ),
                dim=-1,
            )
            neg = torch.finfo(torch.float32).min
            mask = torch.where(visible, 0.0, neg)[:, None]  # [B, 1, S, W+S]
            scale = shape.head_dim**-0.5
            news: list[Any] = []
            for index, layer in enumerate(inner.layers):
                attn = layer.self_attn
                x = rms(hidden, layer.input_layernorm.weight)
                q = attn.q_proj(x).view(batch, new, heads, shape.head_dim).transpose(1, 2)
                k = attn.k_proj(x).view(batch, new, shape.kv_heads, shape.head_dim).transpose(1, 2)
                v = attn.v_proj(x).view(batch, new, shape.kv_heads, shape.head_dim).transpose(1, 2)
                q = q * cos + rotate(q) * sin
                k = k * cos + rotate(k) * sin
                news += [k, v]
                # Grouped-query attention without copying the cache: the query heads that
                # share a key/value head are stacked as rows ([B, Hkv, group*S, D]), and the
                # past and the new positions are attended separately, then softmaxed together
                # (no concatenated [B, Hkv, W+S, D] keys, no repeat per query head).
                past_k, past_v = past[2 * index], past[2 * index + 1]
                rows = q.reshape(batch, shape.kv_heads, group * new, shape.head_dim) * scale
                scores = torch.cat(
                    (
                        torch.matmul(rows, past_k.transpose(2, 3)),
                        torch.matmul(rows, k.transpose(2, 3)),
                    ),
                    dim=-1,
                )
                scores = scores.view(batch, shape.kv_heads, group, new, -1) + mask[:, :, None]
                probs = torch.softmax(scores, dim=-1).view(batch, shape.kv_heads, group * new, -1)
                out = torch.matmul(probs[..., :window], past_v) + torch.matmul(
                    probs[..., window:], v
                )
                out = (
                    out.view(batch, shape.kv_heads, group, new, shape.head_dim)
                    .permute(0, 3, 1, 2, 4)
                    .reshape(batch, new, -1)
                )
                hidden = hidden + attn.o_proj(out)
                x = rms(hidden, layer.post_attention_layernorm.weight)
                mlp = layer.mlp
                hidden = hidden + mlp.down_proj(
                    torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
                )
            last = rms(hidden[:, -1], inner.norm.weight)
            # linear on a 2-D input exports as Gemm(transB=1): the tied [V, H] weight is read
            # as it is stored, never transposed per step.
            logits = torch.nn.functional.linear(last, self.base.lm_head.weight)
            return (logits, *news)

    return Step().eval()


def _dummy(shape: DecoderShape, batch: int, new: int, window: int) -> tuple[Any, ...]:
    import torch

    ids = torch.zeros((batch, new), dtype=torch.int64)
    positions = torch.arange(window, window + new, dtype=torch.int64)[None].expand(batch, -1)
    past_length = torch.full((batch,), window, dtype=torch.int64)
    past = [
        torch.zeros((batch, shape.kv_heads, window, shape.head_dim), dtype=torch.float32)
        for _ in range(2 * shape.layers)
    ]
    return (ids, positions.contiguous(), past_length, *past)


def export_decoder(model: Any, path: Path) -> DecoderShape:
    """Export ``model`` (a float32 ``LlamaForCausalLM``) as the step graph at ``path``."""
    import torch

    shape = shape_of(model.config)
    model.requires_grad_(False)
    step = _module(model)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "new"},
        "position_ids": {0: "batch", 1: "new"},
        "past_length": {0: "batch"},
        "logits": {0: "batch"},
    }
    for layer in range(shape.layers):
        for kind in ("key", "value"):
            axes[f"past_{kind}_{layer}"] = {0: "batch", 2: "window"}
            axes[f"new_{kind}_{layer}"] = {0: "batch", 2: "new"}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is the TorchScript exporter: it announces its deprecation, and tracing
        # warns about the Python ints of the shapes (they are symbolic in the graph).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step,
            _dummy(shape, 2, 3, 4),
            str(path),
            input_names=shape.input_names(),
            output_names=shape.output_names(),
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=False,  # folding would store the tied lm_head twice
            dynamo=False,
        )
    return shape


@dataclass(frozen=True, slots=True)
class Verification:
    """How the exported graph's logits compare with transformers' (prefill and decode)."""

    max_abs_diff: float
    argmax_agree: bool
    steps: int

    def summary(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.2e} over {self.steps} steps, "
            f"argmax {'agrees' if self.argmax_agree else 'DIFFERS'}"
        )


def verify(model: Any, path: Path, prompt: list[int], steps: int = 4) -> Verification:
    """Run the graph at ``path`` and transformers side by side: a prefill of ``prompt``, then
    ``steps`` greedy decode steps; the largest logit difference seen."""
    import numpy as np
    import onnxruntime as ort
    import torch

    shape = shape_of(model.config)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past = [np.zeros((1, shape.kv_heads, 0, shape.head_dim), np.float32)] * (2 * shape.layers)
    tokens = list(prompt)
    new = list(prompt)
    worst = 0.0
    agree = True
    for _ in range(steps + 1):
        length = len(tokens) - len(new)
        feeds: dict[str, Any] = {
            "input_ids": np.array([new], np.int64),
            "position_ids": np.arange(length, length + len(new), dtype=np.int64)[None],
            "past_length": np.array([length], np.int64),
        }
        for layer in range(shape.layers):
            feeds[f"past_key_{layer}"] = past[2 * layer]
            feeds[f"past_value_{layer}"] = past[2 * layer + 1]
        outputs = session.run(None, feeds)
        ours = outputs[0][0]
        past = [np.concatenate((p, n), axis=2) for p, n in zip(past, outputs[1:], strict=True)]
        with torch.no_grad():
            theirs = model(torch.tensor([tokens])).logits[0, -1].numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()))
        agree &= int(ours.argmax()) == int(theirs.argmax())
        new = [int(theirs.argmax())]
        tokens += new
    return Verification(worst, agree, steps + 1)
