"""``forwardpass export --edge``: a self-contained folder that answers like the server.

A bundle holds the model in ORT format (:mod:`.conversion`), the reduced operator config a
minimal ONNX Runtime build takes, ``bundle.json`` (tensors, processing, labels) read by
``runner.py`` (:mod:`.runner`, copied verbatim), and ``manifest.json`` (:mod:`.manifest`).
Nothing is written until the bundle's answers equal the engine's on sample inputs
(:mod:`.samples`, :mod:`.verification`): it is built in a staging folder beside the output,
then renamed into place (over an existing bundle only with ``force``), with a ``.tar.gz`` of it
beside.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InternalError, InvalidArgument, Unsupported
from forwardpass.export.conversion import STANDARD_DOMAINS, convert
from forwardpass.export.manifest import Manifest, run_runner
from forwardpass.export.runner import TextStep, wordpiece_problems
from forwardpass.export.samples import image_inputs, request_arrays, write_samples
from forwardpass.export.target import ANY, TARGETS, Target, require_runtime
from forwardpass.export.verification import differences
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.repository import ModelRepository

__all__ = [
    "ExportOptions",
    "ExportResult",
    "client_inputs",
    "export_bundle",
    "unsupported_processing",
]

#: Runner features (kept in step with runner.py's INPUT_KINDS and OUTPUT_STEPS).
_INPUT_KINDS = frozenset({"image", "text"})
_OUTPUT_STEPS = frozenset(
    {"softmax", "sigmoid", "l2_normalize", "mean_pool", "argmax", "label", "topk", "threshold"}
)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    model: str
    repository: Path
    version: int | None = None
    target: Target = ANY
    #: The bundle folder (default: ``./<model>-<version>-<target>-edge``).
    output: Path | None = None
    force: bool = False
    #: Leave the processing out: the runner takes and returns the model's own tensors.
    raw: bool = False
    #: Rounds over the samples for the latency figures.
    repeat: int = 50


@dataclass(frozen=True, slots=True)
class ExportResult:
    folder: Path
    archive: Path
    manifest: Manifest


def unsupported_processing(
    declaration: dict[str, Any] | None, model_dir: Path | None = None
) -> list[str]:
    """The declared processing steps the runner does not implement (a text input's tokenizer
    file is read from ``model_dir``)."""
    missing: list[str] = []
    for item in (declaration or {}).get("inputs", []):
        if item.get("kind") not in _INPUT_KINDS:
            missing.append(f"input {item.get('name', item.get('kind'))!r}: kind {item.get('kind')}")
        elif item.get("kind") == "text":
            missing.extend(
                f"input {item.get('name')!r}: {problem}"
                for problem in _tokenizer_problems(item, model_dir)
            )
        elif str(item.get("decoder", "pil")).lower() != "pil":
            missing.append(f"input {item.get('name')!r}: decoder {item.get('decoder')}")
    for item in (declaration or {}).get("outputs", []):
        if "decode" in item:
            missing.append(f"output {item.get('name')!r}: decode {item['decode']}")
        for step in item.get("steps", []):
            kind = step if isinstance(step, str) else next(iter(step), None)
            if kind not in _OUTPUT_STEPS:
                missing.append(f"output {item.get('name')!r}: step {kind}")
    return missing


def _tokenizer_problems(item: dict[str, Any], model_dir: Path | None) -> list[str]:
    if model_dir is None:
        return ["tokenizer not checked"]
    file = model_dir / str(item.get("tokenizer", "tokenizer.json"))
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"tokenizer {file.name}: {exc}"]
    return [f"tokenizer {p}" for p in wordpiece_problems(document)]


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.value, "dims": list(spec.dims)}


def client_inputs(config: ModelConfig, declaration: dict[str, Any] | None) -> list[TensorSpec]:
    from forwardpass.datatypes import DataType

    declared = (declaration or {}).get("inputs", [])
    targeted = {str(i.get("to")) for i in declared if i.get("kind") != "text"}
    for item in declared:
        if item.get("kind") == "text":  # a text input feeds the roles the model has
            roles = dict(item.get("targets") or {})
            targeted.update(str(roles.get(r, r)) for r in TextStep.ROLES)
    kept = [s for s in config.inputs if s.name not in targeted]
    raw = [TensorSpec(name=str(i["name"]), datatype=DataType.BYTES, dims=(1,)) for i in declared]
    return kept + raw


def export_bundle(options: ExportOptions) -> ExportResult:
    """Build, check and write the edge bundle ``options`` describe (see the module docstring)."""
    import onnxruntime

    from forwardpass.processing.spec import read_declaration

    target = options.target
    require_runtime(target)
    entry = ModelRepository(options.repository).read(options.model)
    config = entry.config
    if config.backend != "onnxruntime":
        raise InvalidArgument(
            f"model {options.model!r} runs on the {config.backend} backend; an edge bundle "
            "holds an ONNX model (backend onnxruntime)"
        )
    version = options.version if options.version is not None else entry.versions[-1]
    onnx_model = entry.version_dir(version) / (config.default_model_filename or "model.onnx")
    if not onnx_model.is_file():
        raise InvalidArgument(f"model {options.model!r} version {version} has no {onnx_model.name}")
    declaration = read_declaration(config)
    missing = unsupported_processing(declaration, entry.path)
    if missing and not options.raw:
        raise Unsupported(
            f"the edge runner does not implement these processing steps of {options.model!r}: "
            f"{'; '.join(missing)}. Pass --raw for a bundle that takes and returns the model's "
            "own tensors (the client then does this processing)"
        )
    if any(s.datatype.value == "BF16" for s in (*config.inputs, *config.outputs)):
        raise Unsupported("the edge runner cannot feed or read BF16 tensors")
    applied = None if options.raw else declaration
    folder = (
        options.output
        if options.output is not None
        else Path(f"{options.model}-{version}-{target.name}-edge")
    ).absolute()
    archive = folder.with_name(folder.name + ".tar.gz")
    if (folder.exists() or archive.exists()) and not options.force:
        raise InvalidArgument(f"{folder} already exists; pass --force to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would carry over to the bundle
    try:
        with tempfile.TemporaryDirectory(prefix="fp-edge-samples-") as scratch:
            manifest = _build(
                options,
                entry.labels,
                config,
                version,
                onnx_model,
                applied,
                missing,
                staging,
                Path(scratch),
                onnxruntime.__version__,
            )
        _archive(staging, folder.name, archive)
        _replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(folder, archive, manifest)


def _build(
    options: ExportOptions,
    labels: Any,
    config: ModelConfig,
    version: int,
    onnx_model: Path,
    declaration: dict[str, Any] | None,
    missing: list[str],
    staging: Path,
    scratch: Path,
    ort_version: str,
) -> Manifest:
    target = options.target
    converted = convert(onnx_model, target, staging)
    label_files: dict[str, str] = {}
    for name, lines in labels.items():
        (staging / "labels").mkdir(exist_ok=True)
        (staging / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        label_files[name] = f"labels/{name}.txt"
    image_params = {
        k: v for k, v in config.parameters.items() if k in ("image_invert", "image_resample")
    }
    threads = config.parameters.get("intra_op_thread_count", "1")
    spec = {
        "format": 1,
        "name": config.name,
        "version": version,
        "model": converted.model.name,
        "runtime_optimizations": target.runtime_optimizations,
        "batching": config.batching,
        "inputs": [_tensor(s) for s in config.inputs],
        "outputs": [_tensor(s) for s in config.outputs],
        "image_params": image_params,
        "processing": declaration,
        "labels": label_files,
        "threads": int(threads) if threads.isdigit() else 1,
    }
    (staging / "bundle.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    if declaration is not None:
        (staging / "processing.json").write_text(
            json.dumps(declaration, indent=2) + "\n", encoding="utf-8"
        )
    shutil.copyfile(Path(__file__).with_name("runner.py"), staging / "runner.py")
    for item in (declaration or {}).get("inputs", []):
        if item.get("kind") == "text":
            name = str(item.get("tokenizer", "tokenizer.json"))
            shutil.copyfile(onnx_model.parent.parent / name, staging / name)

    client = client_inputs(config, declaration)
    samples = write_samples(config, onnx_model.parent.parent, client, declaration, scratch)
    paths = [s.path for s in samples]
    if options.raw:
        expected = _reference_raw(onnx_model, config, paths, declaration)
        reference = "onnxruntime on the ONNX model (raw bundle: no processing)"
    else:
        expected = _reference_engine(options, config, version, paths, declaration)
        reference = "the forwardpass engine"
    answers = run_runner(staging / "runner.py", paths, options.repeat)
    if len(answers.answers) != len(paths):
        raise InternalError(f"the runner answered {len(answers.answers)} of {len(paths)} samples")
    for path, want, got in zip(paths, expected, answers.answers, strict=True):
        problems = differences(want, got["outputs"])
        if problems:
            # Replayed runtime optimizations pick the kernels of the CPU the bundle loads on;
            # for a quantized model those can round differently from the engine's.
            hint = (
                "; the runtime optimizations replayed at load choose their own kernels (int8 "
                "ones round differently on some CPUs): try --target "
                f"{' or '.join(sorted(TARGETS))}, the fixed optimizations for the CPU it runs on"
                if target.runtime_optimizations
                else ""
            )
            raise InternalError(
                f"the bundle answers sample {path.name} differently from {reference}: "
                f"{'; '.join(problems)}; nothing was written{hint}"
            )
    files = {
        str(p.relative_to(staging)): p.stat().st_size
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    manifest = Manifest(
        model=config.name,
        version=version,
        target=target.name,
        optimization_style=target.optimization_style,
        onnxruntime=ort_version,
        files=files,
        operators=converted.operators,
        target_check=_target_check(target, converted.operators),
        processing={
            "applied": declaration,
            "not_implemented": missing if options.raw else [],
            "raw": options.raw,
            "image_params": image_params,
        },
        verification={
            "reference": reference,
            "samples": [{"file": s.path.name, "source": s.source} for s in samples],
            "rtol": 1e-4,
            "atol": 1e-5,
            "equal": True,
        },
        measured_on_build_machine=answers.measurement,
    )
    manifest.write(staging / "manifest.json")
    return manifest


def _target_check(target: Target, operators: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """Operators the target's runtime may lack.

    ONNX Runtime no longer ships the list of operators in its pre-built mobile package, so
    for ARM the check is what a standard (or minimal, reduced-by-config) build lacks: every
    operator outside ``ai.onnx`` / ``ai.onnx.ml`` is a contrib or layout-specific kernel that
    a custom or mobile build must include on purpose; ``com.microsoft.nchwc`` kernels exist
    only on x86-64.
    """
    foreign = {
        domain: sorted({op for ops in by_opset.values() for op in ops})
        for domain, by_opset in operators.items()
        if domain not in STANDARD_DOMAINS
    }
    lacking: dict[str, list[str]] = {}
    if target.name != "x86_64" and "com.microsoft.nchwc" in foreign:
        lacking["com.microsoft.nchwc"] = foreign["com.microsoft.nchwc"]
    return {
        "reference": "standard ONNX domains of a full ONNX Runtime CPU build "
        "(the mobile package operator list is not shipped with this onnxruntime)",
        "outside_standard_domains": foreign,
        "lacking_on_target": lacking,
        "note": (
            "a minimal build for the target must be made with --include_ops_by_config "
            "pointing at the .config file in this bundle"
        ),
    }


def _reference_engine(
    options: ExportOptions,
    config: ModelConfig,
    version: int,
    paths: list[Path],
    declaration: dict[str, Any] | None,
) -> list[dict[str, np.ndarray]]:
    """The engine's answer to each sample, as a client would get it."""
    from forwardpass.config import ServerConfig
    from forwardpass.engine import Engine
    from forwardpass.types import InferRequest, Tensor

    images = image_inputs(config, declaration)

    async def run() -> list[dict[str, np.ndarray]]:
        engine = Engine(
            ModelRepository(options.repository),
            ServerConfig(
                model_repository=options.repository,
                model_control_mode="explicit",
                load_models=(options.model,),
            ),
        )
        await engine.start()
        try:
            handle = engine.handle(options.model)
            specs = dict(handle.input_specs)
            results = []
            for path in paths:
                arrays = request_arrays(path, config, specs, images)
                request = InferRequest(
                    model_name=options.model,
                    model_version=str(version),
                    inputs=[Tensor(n, specs[n].datatype, a) for n, a in arrays.items()],
                )
                response = await engine.infer(request)
                results.append({t.name: t.data for t in response.outputs})
            return results
        finally:
            await engine.stop()

    return asyncio.run(run())


def _reference_raw(
    onnx_model: Path, config: ModelConfig, paths: list[Path], declaration: dict[str, Any] | None
) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    specs = {s.name: s for s in config.inputs}
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    names = [o.name for o in config.outputs]
    results = []
    for path in paths:
        arrays = request_arrays(path, config, specs, image_inputs(config, declaration))
        values = session.run(names, arrays)
        results.append(dict(zip(names, values, strict=True)))
    return results


def _archive(staging: Path, name: str, archive: Path) -> None:
    """``archive`` (a .tar.gz of the bundle under ``name/``), written beside then renamed."""
    partial = archive.with_name(f".{archive.name}.partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(staging, arcname=name)
    partial.replace(archive)


def _replace(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an old bundle there is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{staging.name.rsplit('-', 1)[-1]}")
        folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        if old is not None:
            old.rename(folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
