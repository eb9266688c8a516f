"""``sequence_batching`` and ``response_cache`` from a config dict, and back to Triton's JSON.

The schema is Triton's ``ModelSequenceBatching`` (``model_config.proto``): a ``direct`` or
``oldest`` strategy, ``max_sequence_idle_microseconds``, ``control_input`` (START, READY, END
and CORRID signals the batcher writes into model inputs) and ``state`` (tensors the server
keeps between a sequence's requests, Triton's implicit state).
"""

from __future__ import annotations

import math
from typing import Any

from forwardpass.datatypes import DataType
from forwardpass.model_config import (
    SEQUENCE_CONTROL_KINDS,
    ResponseCache,
    SequenceBatching,
    SequenceControl,
    SequenceControlInput,
    SequenceInitialState,
    SequenceOldest,
    SequenceState,
)
from forwardpass.repository.fields import (
    as_bool,
    as_datatype,
    as_enum,
    as_int,
    as_shape,
    as_str,
    config_error,
    join,
    message_fields,
    repeated,
    single,
)

__all__ = ["response_cache", "response_cache_to_dict", "sequence_batching", "sequence_to_dict"]

#: Datatypes a CORRID control may use (Triton's sequence batcher accepts these five).
CORRID_TYPES = (DataType.UINT64, DataType.INT64, DataType.UINT32, DataType.INT32, DataType.BYTES)
_FLAG_KINDS = ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_END")


def response_cache(value: Any) -> ResponseCache:
    path = "response_cache"
    msg = message_fields(single(value, path), path, ("enable",))
    return ResponseCache(enable=as_bool(msg.get("enable", False), join(path, "enable")))


def response_cache_to_dict(cache: ResponseCache) -> dict[str, Any]:
    return {"enable": cache.enable}


def _pair(value: Any, path: str, kind: type) -> tuple[Any, ...]:
    items = repeated(value)
    if len(items) != 2:
        raise config_error(path, f"expected two values (false, true), got {len(items)}")
    if kind is int:
        return tuple(as_int(v, f"{path}[{i}]") for i, v in enumerate(items))
    if kind is bool:
        return tuple(as_bool(v, f"{path}[{i}]") for i, v in enumerate(items))
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise config_error(f"{path}[{i}]", f"expected a number, got {v!r}")
        try:
            number = float(v)
        except ValueError:
            raise config_error(f"{path}[{i}]", f"expected a number, got {v!r}") from None
        if not math.isfinite(number):
            raise config_error(f"{path}[{i}]", f"expected a finite number, got {v!r}")
        out.append(number)
    return tuple(out)


def _control(value: Any, path: str) -> SequenceControl:
    msg = message_fields(
        value, path, ("kind", "int32_false_true", "fp32_false_true", "bool_false_true", "data_type")
    )
    kind = as_enum(msg.get("kind", 0), join(path, "kind"), SEQUENCE_CONTROL_KINDS)
    pairs = [k for k in ("int32_false_true", "fp32_false_true", "bool_false_true") if k in msg]
    if kind == "CONTROL_SEQUENCE_CORRID":
        if pairs:
            raise config_error(path, f"a CORRID control takes data_type, not {pairs[0]}")
        if "data_type" not in msg:
            raise config_error(path, "a CORRID control needs a data_type")
        datatype = as_datatype(msg["data_type"], join(path, "data_type"))
        if datatype not in CORRID_TYPES:
            raise config_error(
                join(path, "data_type"),
                "a CORRID control is TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or "
                f"TYPE_STRING, got {datatype.config_name}",
            )
        return SequenceControl(kind=kind, data_type=datatype)
    if "data_type" in msg:
        raise config_error(path, f"{kind} takes a false/true pair, not a data_type")
    if len(pairs) != 1:
        raise config_error(
            path, f"{kind} needs exactly one of int32_false_true, fp32_false_true, bool_false_true"
        )
    key = pairs[0]
    kind_of: dict[str, type] = {"int32": int, "fp32": float, "bool": bool}
    values = _pair(msg[key], join(path, key), kind_of[key.split("_")[0]])
    return SequenceControl(
        kind=kind,
        int32_false_true=values if key == "int32_false_true" else (),
        fp32_false_true=values if key == "fp32_false_true" else (),
        bool_false_true=values if key == "bool_false_true" else (),
    )


def _control_input(value: Any, path: str) -> SequenceControlInput:
    msg = message_fields(value, path, ("name", "control"))
    name = as_str(msg.get("name", ""), join(path, "name"))
    if not name:
        raise config_error(path, "a control_input needs a name")
    controls = tuple(
        _control(c, f"{path}.control[{i}]") for i, c in enumerate(repeated(msg.get("control")))
    )
    if len(controls) != 1:
        # Triton: a control input carries exactly one control.
        raise config_error(path, f"control_input {name!r} needs exactly one control")
    return SequenceControlInput(name=name, control=controls)


def _initial_state(value: Any, path: str) -> SequenceInitialState:
    msg = message_fields(value, path, ("data_type", "dims", "zero_data", "data_file", "name"))
    if "data_type" not in msg:
        raise config_error(path, "an initial_state needs a data_type")
    sources = [s for s in ("zero_data", "data_file") if s in msg]
    if len(sources) != 1:
        raise config_error(path, "set exactly one of zero_data, data_file")
    data_file = ""
    if "data_file" in msg:
        data_file = as_str(msg["data_file"], join(path, "data_file"))
        if not data_file or "/" in data_file or "\\" in data_file or data_file.startswith("."):
            raise config_error(
                join(path, "data_file"), "must name a file in the model's initial_state folder"
            )
    else:
        as_bool(msg["zero_data"], join(path, "zero_data"))
    return SequenceInitialState(
        data_type=as_datatype(msg["data_type"], join(path, "data_type")),
        dims=as_shape(msg.get("dims"), join(path, "dims"), concrete=True),
        name=as_str(msg.get("name", ""), join(path, "name")),
        zero_data="zero_data" in msg,
        data_file=data_file,
    )


def _state(value: Any, path: str) -> SequenceState:
    msg = message_fields(
        value,
        path,
        ("input_name", "output_name", "data_type", "dims", "initial_state"),
        ("use_same_buffer_for_input_output", "use_growable_memory"),
    )
    names = {}
    for key in ("input_name", "output_name"):
        names[key] = as_str(msg.get(key, ""), join(path, key))
        if not names[key]:
            raise config_error(path, f"a state needs an {key}")
    if "data_type" not in msg:
        raise config_error(path, "a state needs a data_type")
    datatype = as_datatype(msg["data_type"], join(path, "data_type"))
    if datatype is DataType.BYTES:
        raise config_error(join(path, "data_type"), "a TYPE_STRING state is not supported")
    initial = tuple(
        _initial_state(s, f"{path}.initial_state[{i}]")
        for i, s in enumerate(repeated(msg.get("initial_state")))
    )
    if len(initial) > 1:
        raise config_error(join(path, "initial_state"), "give at most one initial_state")
    for item in initial:
        if item.data_type is not datatype:
            raise config_error(
                join(path, "initial_state"),
                f"data_type {item.data_type.config_name} differs from the state's "
                f"{datatype.config_name}",
            )
    dims = as_shape(msg.get("dims"), join(path, "dims"))
    if not dims:
        raise config_error(join(path, "dims"), "a state needs dims")
    return SequenceState(
        input_name=names["input_name"],
        output_name=names["output_name"],
        data_type=datatype,
        dims=dims,
        initial_state=initial,
    )


def sequence_batching(value: Any) -> SequenceBatching:
    """The typed ``sequence_batching`` section; errors name the field's path."""
    path = "sequence_batching"
    msg = message_fields(
        single(value, path),
        path,
        ("direct", "oldest", "max_sequence_idle_microseconds", "control_input", "state"),
        ("iterative_sequence",),
    )
    if "direct" in msg and "oldest" in msg:
        raise config_error(path, "set only one strategy, direct or oldest")
    fields: dict[str, Any] = {}
    if "oldest" in msg:
        where = join(path, "oldest")
        oldest = message_fields(
            single(msg["oldest"], where),
            where,
            (
                "max_candidate_sequences",
                "preferred_batch_size",
                "max_queue_delay_microseconds",
                "preserve_ordering",
            ),
        )
        fields["strategy"] = "oldest"
        fields["oldest"] = SequenceOldest(
            max_candidate_sequences=as_int(
                oldest.get("max_candidate_sequences", 0), join(where, "max_candidate_sequences"), 0
            ),
            preferred_batch_size=tuple(
                sorted(
                    {
                        as_int(v, f"{where}.preferred_batch_size[{i}]", 1)
                        for i, v in enumerate(repeated(oldest.get("preferred_batch_size")))
                    }
                )
            ),
            max_queue_delay_microseconds=as_int(
                oldest.get("max_queue_delay_microseconds", 0),
                join(where, "max_queue_delay_microseconds"),
                0,
            ),
            preserve_ordering=as_bool(
                oldest.get("preserve_ordering", False), join(where, "preserve_ordering")
            ),
        )
    else:
        where = join(path, "direct")
        direct = message_fields(
            single(msg.get("direct"), where),
            where,
            ("max_queue_delay_microseconds", "minimum_slot_utilization"),
        )
        utilization = direct.get("minimum_slot_utilization", 0.0)
        if isinstance(utilization, str):
            try:
                utilization = float(utilization)
            except ValueError:
                pass
        if (
            isinstance(utilization, bool)
            or not isinstance(utilization, int | float)
            or not 0.0 <= utilization <= 1.0
        ):
            raise config_error(
                join(where, "minimum_slot_utilization"),
                f"expected a number in 0..1, got {utilization!r}",
            )
        fields["max_queue_delay_microseconds"] = as_int(
            direct.get("max_queue_delay_microseconds", 0),
            join(where, "max_queue_delay_microseconds"),
            0,
        )
        fields["minimum_slot_utilization"] = float(utilization)
    if "max_sequence_idle_microseconds" in msg:
        idle = as_int(
            msg["max_sequence_idle_microseconds"], join(path, "max_sequence_idle_microseconds"), 0
        )
        # Triton: 0 means "the default" (one second).
        fields["max_sequence_idle_microseconds"] = idle or 1_000_000
    controls = tuple(
        _control_input(c, f"{path}.control_input[{i}]")
        for i, c in enumerate(repeated(msg.get("control_input")))
    )
    kinds: dict[str, str] = {}
    for control_input in controls:
        for control in control_input.control:
            if control.kind in kinds:
                raise config_error(
                    join(path, "control_input"),
                    f"{control.kind} is given twice ({kinds[control.kind]!r} and "
                    f"{control_input.name!r})",
                )
            kinds[control.kind] = control_input.name
    states = tuple(
        _state(s, f"{path}.state[{i}]") for i, s in enumerate(repeated(msg.get("state")))
    )
    names = [c.name for c in controls] + [s.input_name for s in states]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise config_error(path, f"model input(s) {twice} are filled twice (control/state)")
    return SequenceBatching(control_input=controls, state=states, **fields)


def _control_to_dict(control: SequenceControl) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": control.kind}
    if control.data_type is not None:
        out["data_type"] = control.data_type.config_name
    for key in ("int32_false_true", "fp32_false_true", "bool_false_true"):
        values = getattr(control, key)
        if values:
            out[key] = list(values)
    return out


def sequence_to_dict(batching: SequenceBatching) -> dict[str, Any]:
    """The section as Triton's JSON writes it (read back unchanged by :func:`sequence_batching`)."""
    out: dict[str, Any] = {
        "max_sequence_idle_microseconds": batching.max_sequence_idle_microseconds,
        "control_input": [
            {"name": c.name, "control": [_control_to_dict(k) for k in c.control]}
            for c in batching.control_input
        ],
        "state": [
            {
                "input_name": s.input_name,
                "output_name": s.output_name,
                "data_type": s.data_type.config_name,
                "dims": list(s.dims),
                "initial_state": [
                    {
                        "data_type": i.data_type.config_name,
                        "dims": list(i.dims),
                        "name": i.name,
                        **({"data_file": i.data_file} if i.data_file else {"zero_data": True}),
                    }
                    for i in s.initial_state
                ],
            }
            for s in batching.state
        ],
    }
    if batching.strategy == "oldest":
        oldest = batching.oldest
        out["oldest"] = {
            "max_candidate_sequences": oldest.max_candidate_sequences,
            "preferred_batch_size": list(oldest.preferred_batch_size),
            "max_queue_delay_microseconds": oldest.max_queue_delay_microseconds,
            "preserve_ordering": oldest.preserve_ordering,
        }
    else:
        out["direct"] = {
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "minimum_slot_utilization": batching.minimum_slot_utilization,
        }
    return out
