"""``forwardpass optimize`` for a generation model: weight-only quantized decoding.

A generation model (config parameter ``generation``) is not judged on a batch of tensors but
on what it generates, so its candidates (by default INT8 and INT4 weight-only ``MatMulNBits``,
methods ``int8-weight`` and ``int4``) run the decoder loop itself — prefill, then one step per
token over a KV cache, the same :class:`~forwardpass.generation.scheduler.Decoder` the
generation scheduler drives — never the dynamic batcher:

* **Greedy agreement.** ``prompts`` chat prompts × ``new_tokens`` greedy tokens, end tokens
  ignored; the share of positions whose token equals the FP32 original's, and where each
  prompt first diverges (``new_tokens`` when it never does).
* **Perplexity** on held-out text the model never saw in the run: the docstrings of a few
  standard-library modules (or ``--validation FILE``, a UTF-8 text), tokenized by the model's
  tokenizer and teacher-forced one token per step.
* **Speed.** Decode tokens/s at batch 1 and 8, interleaved over ``rounds`` as the other
  candidates' latency is (``measure.py``): ``p50_ms`` is the per-token decode latency at
  batch 1, the median of the rounds, which the selection compares.

The accuracy *drop* the budget (``--max-accuracy-drop``) bounds is the larger of
``1 − agreement`` and the relative perplexity increase. Selection, the report and promotion
to a new version are the ordinary ones: the promoted version serves through the generate
endpoints like the original (the tokenizer and settings live beside the versions).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.optimize.accuracy import Accuracy
from forwardpass.optimize.candidates import ORIGINAL, CandidateResult, count_parameters
from forwardpass.optimize.measure import Performance, open_session
from forwardpass.optimize.methods import GENERATION_METHODS, BuildContext, resolve_methods

if TYPE_CHECKING:
    from forwardpass.generation.settings import GenerationSettings
    from forwardpass.optimize.optimizer import OptimizeOptions, OptimizeResult, ProgressCallback

__all__ = ["GenerationEval", "held_out_text", "optimize_generation"]

#: Questions the agreement is measured on, rendered through the model's chat template.
PROMPTS = (
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Give me a recipe for a simple tomato soup.",
    "Why do cats purr?",
    "Summarise the plot of Romeo and Juliet.",
    "What are prime numbers? Give examples.",
    "How does a bicycle stay upright?",
    "Translate 'good morning' into French, Spanish and German.",
)
#: Standard-library modules whose docstrings make the held-out perplexity text.
_TEXT_MODULES = ("argparse", "json", "subprocess", "logging", "unittest", "pickle", "csv")


@dataclass(frozen=True, slots=True)
class GenerationEval:
    """How much a generation candidate is exercised (defaults: the figures of the issue)."""

    prompts: int = 8
    new_tokens: int = 32
    perplexity_tokens: int = 256
    #: Decode steps timed per batch size per round.
    decode_steps: int = 16
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 3
    threads: int = 1


def held_out_text(validation: Path | None = None) -> tuple[str, str]:
    """(text, where it came from): ``validation`` when given, else stdlib docstrings."""
    if validation is not None:
        if not validation.is_file():
            raise InvalidArgument(
                f"--validation {validation} is not a file; a generation model takes a UTF-8 "
                "text file for perplexity"
            )
        try:
            return validation.read_text("utf-8"), str(validation)
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"--validation {validation} is not UTF-8 text: {exc}") from None
    import importlib

    parts = [inspect.getdoc(importlib.import_module(m)) or "" for m in _TEXT_MODULES]
    text = "\n\n".join(p for p in parts if p)
    if not text:
        raise InvalidArgument(
            "no held-out text: the standard library has no docstrings here (python -OO?); "
            "give --validation FILE"
        )
    return text, "docstrings of " + ", ".join(_TEXT_MODULES)


class _Runner:
    """One candidate's decoder on onnxruntime, driven step by step."""

    def __init__(self, path: Path, providers: Sequence[str], threads: int, name: str) -> None:
        from forwardpass.generation.model import decoder_shape
        from forwardpass.generation.scheduler import Decoder

        session = open_session(path, providers, threads)
        self.decoder = Decoder(session, decoder_shape(session, name))

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        shape = self.decoder.shape
        empty = np.zeros((1, shape.kv_heads, 0, shape.head_dim), np.float32)
        count = len(ids)
        return self.decoder.run(
            np.array([ids], np.int64),
            np.arange(count, dtype=np.int64)[None],
            np.zeros(1, np.int64),
            [empty] * (2 * shape.layers),
        )

    def step(
        self, tokens: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decode step for rows of equal length; the grown past."""
        length = past[0].shape[2]
        lengths = np.full(len(tokens), length, np.int64)
        logits, new = self.decoder.run(
            tokens.reshape(-1, 1).astype(np.int64), lengths[:, None], lengths, past
        )
        return logits, [np.concatenate((p, n), axis=2) for p, n in zip(past, new, strict=True)]

    def greedy(self, prompt: Sequence[int], count: int) -> list[int]:
        logits, past = self.prefill(prompt)
        out = [int(np.argmax(logits[0]))]
        while len(out) < count:
            logits, past = self.step(np.array(out[-1:]), past)
            out.append(int(np.argmax(logits[0])))
        return out

    def perplexity(self, ids: Sequence[int]) -> float:
        logits, past = self.prefill(ids[:1])
        nll: list[float] = []
        for k in range(1, len(ids)):
            row = logits[0].astype(np.float64)
            top = row.max()
            nll.append(float(top + np.log(np.exp(row - top).sum()) - row[ids[k]]))
            if k + 1 < len(ids):
                logits, past = self.step(np.array([ids[k]]), past)
        return float(np.exp(np.mean(nll)))

    def decode_times(self, prompt: Sequence[int], batch: int, steps: int) -> list[float]:
        """Seconds of each of ``steps`` decode steps at ``batch`` rows (after one warm-up)."""
        logits, past = self.prefill(prompt)
        past = [np.repeat(p, batch, axis=0) for p in past]
        tokens = np.full(batch, int(np.argmax(logits[0])), np.int64)
        logits, past = self.step(tokens, past)
        times = []
        for _ in range(steps):
            began = time.perf_counter()
            logits, past = self.step(logits.argmax(1), past)
            times.append(time.perf_counter() - began)
        return times


def _prompts(folder: Path, settings: GenerationSettings, count: int) -> tuple[Any, list[list[int]]]:
    from tokenizers import Tokenizer

    path = folder / settings.tokenizer
    if not path.is_file():
        raise InvalidModelConfig(f"generation model in {folder} has no {settings.tokenizer}")
    tokenizer = Tokenizer.from_file(str(path))
    template_path = folder / settings.chat_template
    render: Callable[[str], str] = lambda q: q  # noqa: E731
    if template_path.is_file():
        import jinja2

        template = jinja2.Environment(autoescape=False).from_string(
            template_path.read_text("utf-8")
        )

        def render(q: str) -> str:
            return template.render(
                messages=[{"role": "user", "content": q}], add_generation_prompt=True
            )

    texts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    ids = [list(tokenizer.encode(render(t), add_special_tokens=False).ids) for t in texts]
    return tokenizer, ids


def _quality(
    runner: _Runner, prompts: list[list[int]], new_tokens: int, text_ids: list[int]
) -> tuple[list[list[int]], float]:
    return [runner.greedy(p, new_tokens) for p in prompts], runner.perplexity(text_ids)


def _accuracy(
    reference: list[list[int]],
    tokens: list[list[int]],
    perplexity: float,
    original_perplexity: float,
) -> Accuracy:
    same = [np.array(r) == np.array(t) for r, t in zip(reference, tokens, strict=True)]
    agreement = float(np.mean(np.concatenate(same)))
    first = [int(np.argmin(s)) if not s.all() else len(s) for s in same]
    ratio = perplexity / original_perplexity
    details = {
        "greedy_token_agreement": agreement,
        "first_divergence_mean": float(np.mean(first)),
        "first_divergence_min": float(min(first)),
        "identical_prompts": float(np.mean([s.all() for s in same])),
        "perplexity": perplexity,
        "original_perplexity": original_perplexity,
        "perplexity_increase": ratio - 1.0,
    }
    drop = max(1.0 - agreement, ratio - 1.0)
    return Accuracy(
        "classification", "agreement", "greedy_token_agreement", agreement, drop, details
    )


def _performance(times: dict[int, list[list[float]]]) -> Performance:
    """``times[batch][round]``: step seconds. Per-token latency at batch 1; tokens/s at each."""
    by_batch: dict[str, dict[str, float]] = {}
    for batch, rounds in times.items():
        steps = np.concatenate([np.array(r) for r in rounds]) * 1e3
        by_batch[str(batch)] = {
            "p50_ms": float(np.median(steps)),
            "p99_ms": float(np.percentile(steps, 99)),
            "tokens_per_s": float(batch * len(steps) / (steps.sum() / 1e3)),
        }
    best = max(times, key=lambda b: by_batch[str(b)]["tokens_per_s"])
    first = min(times)
    rounds_p50 = tuple(float(np.median(r) * 1e3) for r in times[first])
    return Performance(
        p50_ms=float(np.median(rounds_p50)),
        p99_ms=by_batch[str(first)]["p99_ms"],
        best_batch=best,
        best_p50_ms=by_batch[str(best)]["p50_ms"],
        best_p99_ms=by_batch[str(best)]["p99_ms"],
        throughput=by_batch[str(best)]["tokens_per_s"],
        peak_memory_mb=0.0,
        memory_kind="not measured (decoder loop in this process)",
        by_batch=by_batch,
        rounds_p50_ms=rounds_p50,
    )


def optimize_generation(
    options: OptimizeOptions,
    config: ModelConfig,
    settings: GenerationSettings,
    model_dir: Path,
    version: int,
    source: Path,
    progress: ProgressCallback | None = None,
) -> OptimizeResult:
    """Build, evaluate and (maybe) promote quantized decoders (see the module docstring)."""
    import tempfile

    from forwardpass.optimize.candidates import io_mismatch
    from forwardpass.optimize.methods import MethodSkipped
    from forwardpass.optimize.optimizer import _first_line, conclude
    from forwardpass.optimize.target import plan_target

    if options.calibration is not None or options.labels is not None:
        raise InvalidArgument(
            f"model {options.model!r} is a generation model: --calibration and --labels do not "
            "apply (weight-only quantization needs no calibration; --validation takes a text "
            "file for perplexity)"
        )
    evaluation = options.generation
    plan = plan_target(options.target)
    methods = resolve_methods(options.methods, default=GENERATION_METHODS)
    tokenizer, prompts = _prompts(model_dir, settings, evaluation.prompts)
    text, text_source = held_out_text(options.validation)
    text_ids = list(tokenizer.encode(text, add_special_tokens=False).ids)
    text_ids = text_ids[: evaluation.perplexity_tokens]
    if len(text_ids) < 2:
        raise InvalidArgument(f"the held-out text ({text_source}) has fewer than 2 tokens")
    say = progress or (lambda done, all_, what: None)
    threads = evaluation.threads

    with tempfile.TemporaryDirectory(prefix="forwardpass-optimize-") as tmp:
        workdir = Path(tmp)
        ctx = BuildContext(source, config, options.target, None, workdir)
        plans: list[tuple[CandidateResult, Callable[[Path], list[str]] | None]] = [
            (CandidateResult(ORIGINAL, ORIGINAL, f"version {version} as it is", path=source), None)
        ]
        for method in methods:
            reason = method.check(ctx)
            if reason:
                plans.append(
                    (CandidateResult(method.name, method.name, "", "skipped", reason), None)
                )
                continue
            for variant in method.variants(ctx):
                builder = functools.partial(method.build, ctx, variant)
                plans.append(
                    (CandidateResult(variant.name, method.name, variant.description), builder)
                )
        total = len(plans)
        results: list[CandidateResult] = []
        runners: dict[str, _Runner] = {}
        reference: list[list[int]] = []
        original_perplexity = 1.0
        for i, (result, build) in enumerate(plans):
            results.append(result)
            if result.status == "skipped":
                say(i + 1, total, f"{result.name}: skipped")
                continue
            try:
                if build is not None:
                    say(i, total, f"building {result.name}")
                    folder = workdir / result.name
                    folder.mkdir()
                    result.path = folder / "model.onnx"
                    with contextlib.chdir(folder):
                        result.notes.extend(build(result.path))
                    mismatch = io_mismatch(source, result.path)
                    if mismatch:
                        raise MethodSkipped(mismatch)
                assert result.path is not None
                say(i, total, f"generating with {result.name}")
                runner = _Runner(result.path, plan.providers, threads, config.name)
                tokens, perplexity = _quality(runner, prompts, evaluation.new_tokens, text_ids)
                if build is None:
                    reference, original_perplexity = tokens, perplexity
                result.accuracy = _accuracy(reference, tokens, perplexity, original_perplexity)
                result.size_bytes = result.path.stat().st_size
                result.parameters = count_parameters(result.path)
                runners[result.name] = runner
            except MethodSkipped as exc:
                result.status, result.reason = "skipped", str(exc)
            except Exception as exc:  # one method's failure must not stop the others
                if build is None:
                    raise
                result.status, result.reason = "failed", _first_line(exc)
            say(i + 1, total, f"{result.name}: {result.status}")

        # Decode speed last, interleaved round by round over every candidate.
        times: dict[str, dict[int, list[list[float]]]] = {
            n: {b: [] for b in evaluation.batch_sizes} for n in runners
        }
        for round_ in range(evaluation.rounds):
            for name, runner in runners.items():
                say(total, total, f"decode speed, round {round_ + 1}: {name}")
                for batch in evaluation.batch_sizes:
                    times[name][batch].append(
                        runner.decode_times(prompts[0], batch, evaluation.decode_steps)
                    )
        for result in results:
            if result.name in times:
                result.performance = _performance(times[result.name])
        runners.clear()

        return conclude(
            options,
            version,
            results,
            model_dir,
            config,
            providers={"available": list(plan.available), "measured_on": list(plan.providers)},
            data={
                "evaluation": f"{len(prompts)} chat prompts × {evaluation.new_tokens} greedy "
                "tokens (agreement with the original's)",
                "evaluation_samples": len(prompts),
                "perplexity_text": text_source,
                "perplexity_tokens": len(text_ids),
                "real_inputs": True,
                "labels": False,
                "calibration": "none (weight-only quantization)",
                "calibration_samples": 0,
            },
            measurement={
                **asdict(evaluation),
                "task": "generation",
                "primary_output": "logits",
                "latency": "p50_ms is the per-token decode latency at batch 1; throughput is "
                "decode tokens/s",
            },
        )
