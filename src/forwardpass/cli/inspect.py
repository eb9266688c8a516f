"""``forwardpass inspect``: what an ONNX file holds, read with ``onnx`` (no session)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

__all__ = ["describe", "inspect"]

# ONNX element types → Open Inference Protocol datatypes; anything else keeps its ONNX name.
_PROTOCOL_TYPES = {
    "FLOAT": "FP32",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "DOUBLE": "FP64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "BOOL": "BOOL",
    "STRING": "BYTES",
}


def _datatype(elem_type: int) -> str:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    return _PROTOCOL_TYPES.get(name, name)


def _tensor(value: Any) -> dict[str, Any]:
    """Name, protocol datatype and shape (int, symbolic name, or None when unknown)."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "datatype": kind or "unknown", "shape": None}
    tensor_type = value.type.tensor_type
    shape: list[int | str | None] | None = None
    if tensor_type.HasField("shape"):
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    return {"name": value.name, "datatype": _datatype(tensor_type.elem_type), "shape": shape}


def _walk_nodes(graph: Any) -> Any:
    """Every node, including those inside If/Loop/Scan subgraphs."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk_nodes(sub)


def _dynamic(dim: int | str | None) -> bool:
    return dim is None or isinstance(dim, str) or dim < 0


def describe(path: Path) -> dict[str, Any]:
    """A JSON-ready description of the ONNX model at ``path``.

    Raises :class:`click.ClickException` when the file is missing or is not an ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise click.ClickException(f"{path}: no such file")
    try:
        # Dims are enough to count parameters: external weight files are never read.
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{path}: not a readable ONNX model ({exc})") from exc
    if not model.HasField("graph"):
        raise click.ClickException(f"{path}: not a readable ONNX model (no graph)")
    graph = model.graph

    initializer_names = {t.name for t in graph.initializer}
    inputs = [_tensor(v) for v in graph.input if v.name not in initializer_names]
    outputs = [_tensor(v) for v in graph.output]
    parameters = 0
    parameter_bytes = 0
    for init in graph.initializer:
        count = 1
        for d in init.dims:
            count *= int(d)
        parameters += count
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 0  # strings and exotic types: counted, not sized
        parameter_bytes += count * itemsize
    for sparse in graph.sparse_initializer:
        count = 1
        for d in sparse.values.dims:
            count *= int(d)
        parameters += count
    ops = Counter(
        f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in _walk_nodes(graph)
    )
    batches = bool(inputs) and all(t["shape"] and _dynamic(t["shape"][0]) for t in inputs)
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "ir_version": int(model.ir_version),
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "domain": model.domain,
        "model_version": int(model.model_version),
        "doc_string": model.doc_string,
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "batches": batches,
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _shape_text(shape: list[int | str | None] | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description.")
def inspect(file: Path, as_json: bool) -> None:
    """Show the inputs, outputs, opsets, size and operators of an ONNX FILE."""
    info = describe(file)
    if as_json:
        import orjson

        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return

    from rich.markup import escape

    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import show, table

    console = make_console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    console.print(f"[bold]{escape(info['file'])}[/]  {_size_text(info['file_bytes'])}")
    console.print(
        f"IR version {info['ir_version']} · opsets {opsets} · "
        f"producer {escape(info['producer'] or '-')}"
    )
    console.print(
        f"{info['parameters']:,} parameters ({_size_text(info['parameter_bytes'])}) · "
        f"{info['nodes']} nodes · "
        + ("batches (dynamic leading dimension)" if info["batches"] else "fixed batch")
    )
    if info["doc_string"]:
        console.print(escape(info["doc_string"]), style="dim")
    io = table("", "name", "datatype", "shape", title="Tensors")
    for role in ("inputs", "outputs"):
        for t in info[role]:
            io.add_row(role[:-1], escape(t["name"]), t["datatype"], escape(_shape_text(t["shape"])))
    show(console, io)
    ops = table("op type", title="Operators")
    ops.add_column("count", justify="right")
    for op, count in info["op_types"].items():
        ops.add_row(escape(op), str(count))
    show(console, ops)
