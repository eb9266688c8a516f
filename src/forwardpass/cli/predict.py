"""``forwardpass predict``: local inference through the same engine the server uses."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import click

__all__ = ["predict"]


def _request_for(path: Path, handle: Any) -> Any:
    """Turn one input file into an InferRequest for the model in ``handle``."""
    import numpy as np

    from forwardpass.datatypes import DataType
    from forwardpass.errors import InvalidArgument
    from forwardpass.processing.image import IMAGE_SUFFIXES, load_image
    from forwardpass.protocol.codec import decode_infer_request
    from forwardpass.types import InferRequest, Tensor

    config = handle.config
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InvalidArgument(f"input file {path} does not exist")
    # What a client sends: the model's inputs, or the raw ones its processing declares.
    specs = list(handle.input_specs.values())
    first = specs[0]

    def batched(array: np.ndarray, spec: Any) -> np.ndarray:
        # One sample given loosely (a scalar for a [1] column, a flat list for [2,2]): shape
        # it as the input's dims, then add the batch dimension where the model batches.
        dims = spec.dims
        if all(d > 0 for d in dims) and array.size == math.prod(dims):
            array = array.reshape(dims)
        if config.batching and array.ndim == len(dims):
            return array[np.newaxis]
        return array

    if suffix == ".json":
        payload = path.read_bytes()
        try:
            document = json.loads(payload)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise InvalidArgument(f"{path}: not valid JSON: {exc}") from None
        if isinstance(document, dict) and "inputs" in document:
            return decode_infer_request(payload, model_name=config.name)
        if not isinstance(document, dict):
            raise InvalidArgument(f"{path}: expected a V2 request or an object of input → data")
        tensors = []
        for name, data in document.items():
            spec = handle.input_specs.get(name)
            if spec is None:
                raise InvalidArgument(f"{path}: model {config.name} has no input {name!r}")
            try:
                array = np.asarray(data, dtype=spec.datatype.numpy)
            except (ValueError, TypeError) as exc:
                raise InvalidArgument(
                    f"{path}: input {name!r} is not {spec.datatype.value} data: {exc}"
                ) from None
            tensors.append(Tensor(name, spec.datatype, batched(array, spec)))
        return InferRequest(model_name=config.name, inputs=tensors)
    if len(specs) != 1:
        raise InvalidArgument(
            f"model {config.name} has {len(specs)} inputs; give a JSON file naming them"
        )
    if first.datatype is DataType.BYTES and suffix in (*IMAGE_SUFFIXES, ".txt", ".wav"):
        # Raw input declared by the model's processing: send the file's bytes (an image, a WAV) or
        # one string per line (text), exactly as a client would.
        items = (
            [path.read_bytes()]
            if suffix != ".txt"
            else [line.encode() for line in path.read_text().splitlines() if line.strip()]
        )
        if config.batching:
            shape: tuple[int, ...] = (len(items), 1)
        else:  # the declared dims, the variable one holding the items
            shape = tuple(len(items) if d < 0 else d for d in first.dims) or (len(items),)
        if math.prod(shape) != len(items):
            raise InvalidArgument(
                f"{path}: {len(items)} item(s) do not fit input {first.name!r} of dims "
                f"{list(first.dims)}"
            )
        array = np.empty(shape, dtype=object)
        array.reshape(-1)[:] = items
        return InferRequest(
            model_name=config.name, inputs=[Tensor(first.name, first.datatype, array)]
        )
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
            if first.datatype is not DataType.BYTES:
                array = array.astype(first.datatype.numpy)
        except (ValueError, TypeError, OSError) as exc:
            raise InvalidArgument(
                f"{path}: cannot read a {first.datatype.value} array: {exc}"
            ) from None
    elif suffix in IMAGE_SUFFIXES:
        array = load_image(path, first, config.parameters)
    else:
        raise InvalidArgument(f"{path}: unsupported input type {suffix!r} (image, .npy or .json)")
    return InferRequest(
        model_name=config.name, inputs=[Tensor(first.name, first.datatype, batched(array, first))]
    )


_RANKED = re.compile(rb"^-?[\d.]+(e[-+]?\d+)?:\d+(:.*)?$|^(nan|inf|-inf):\d+(:.*)?$", re.S)


def _ranked(data: Any) -> bool:
    """Whether a BYTES output holds ``score:index[:label]`` strings (classification, top-k)."""
    return (
        data.dtype == object
        and data.size > 0
        and all(isinstance(x, bytes) and _RANKED.match(x) for x in data.reshape(-1)[:4])
    )


def _summarise(response: Any, top_k: int, labelled: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tensor in response.outputs:
        data = tensor.data
        if tensor.name in labelled or _ranked(data):
            rows = []
            for entry in data.reshape(-1, data.shape[-1]) if data.ndim > 1 else [data]:
                ranked = []
                for item in entry:
                    value, index, *label = item.decode().split(":", 2)
                    ranked.append(
                        {
                            "label": label[0] if label else index,
                            "index": int(index),
                            "score": float(value),
                        }
                    )
                rows.append(ranked[:top_k])
            out[tensor.name] = rows if len(rows) > 1 else rows[0]
        else:
            values = data.tolist()
            if data.dtype == object:
                values = [v.decode("utf-8", "replace") for v in data.reshape(-1).tolist()]
            out[tensor.name] = {"shape": list(data.shape), "data": values}
    return out


@click.command()
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository holding MODEL (default: the embedded one).",
)
@click.option("--top-k", type=int, default=5, show_default=True, help="Labels shown per input.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def predict(
    model: str, inputs: tuple[Path, ...], model_repository: Path | None, top_k: int, as_json: bool
) -> None:
    """Run MODEL on INPUTS (images, text files, .npy arrays or JSON) without a server."""
    from rich.markup import escape

    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import show, table
    from forwardpass.config import ServerConfig
    from forwardpass.engine import Engine
    from forwardpass.errors import ForwardpassError
    from forwardpass.repository import ModelRepository
    from forwardpass.types import RequestedOutput

    # Explicit model control: only MODEL loads, through the same call as the repository API.
    config = ServerConfig.from_env(
        model_repository=model_repository, model_control_mode="explicit", load_models=()
    )

    async def run() -> list[tuple[Path, dict[str, Any]]]:
        engine = Engine(ModelRepository(config.model_repository), config)
        await engine.load(model)
        try:
            handle = engine.handle(model)
            assert handle.entry is not None  # a loaded model always has its entry
            labelled = {
                name
                for name, labels in handle.entry.labels.items()
                if labels
                and name in handle.output_specs
                and handle.output_specs[name].datatype.value != "BYTES"
            }
            results = []
            for path in inputs:
                request = _request_for(path, handle)
                if request.outputs is None:
                    request.outputs = [
                        RequestedOutput(
                            o.name, {"classification": top_k} if o.name in labelled else {}
                        )
                        for o in handle.output_specs.values()
                    ]
                response = await engine.infer(request)
                results.append((path, _summarise(response, top_k, labelled)))
            return results
        finally:
            await engine.stop()

    try:
        results = asyncio.run(run())
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps({str(p): r for p, r in results}, indent=2))
        return
    console = make_console()
    for path, result in results:
        for name, value in result.items():
            if isinstance(value, list):
                grid = table("label", title=f"{path.name} → {name}")
                grid.add_column("score", justify="right")
                rows = value if value and isinstance(value[0], dict) else value[0]
                for item in rows:
                    grid.add_row(escape(str(item["label"])), f"{item['score']:.4f}")
                show(console, grid)
            elif math.prod(value["shape"]) > 32:
                # A long vector (1000 probabilities, an embedding) says little in a terminal.
                console.print(
                    f"{path.name} → {name} shape={value['shape']} "
                    f"({math.prod(value['shape'])} values; --json prints them)"
                )
            else:
                console.print(f"{path.name} → {name} shape={value['shape']}: {value['data']}")
