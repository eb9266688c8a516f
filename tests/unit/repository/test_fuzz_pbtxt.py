"""Property-based fuzzing of config parsing: random and mutated ``config.pbtxt`` texts, and
random Triton-JSON dicts (what the repository load API's ``config`` parameter carries).

Parsing either succeeds or raises :class:`InvalidModelConfig`, quickly, at any nesting depth.
Plain regression tests for what the fuzzing found sit at the end of the module.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config_io import FULL_PBTXT

from forwardpass.errors import InvalidModelConfig
from forwardpass.repository import config_from_dict, parse_pbtxt

FUZZ = settings(
    max_examples=300,
    deadline=None,  # wall clock on a shared machine; check_parse bounds CPU time instead
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: CPU seconds one parse may take; the texts here are at most some tens of kilobytes. CPU
#: time, not wall time: the bound catches super-linear parsing, not a busy machine.
TIME_BOUND_S = 1.0


def check_parse(text: str) -> None:
    start = time.process_time()
    try:
        config_from_dict(parse_pbtxt(text), name="m")
    except InvalidModelConfig as exc:
        assert exc.message
    # Anything else (RecursionError, ValueError ...) propagates and fails the example.
    elapsed = time.process_time() - start
    assert elapsed < TIME_BOUND_S, f"parsing took {elapsed:.2f}s"


TOKENS = st.sampled_from(
    [
        "{",
        "}",
        "<",
        ">",
        "[",
        "]",
        ":",
        ",",
        ";",
        "-",
        ".",
        "name",
        "dims",
        "input",
        "data_type",
        "TYPE_FP32",
        "max_batch_size",
        '"x"',
        "'y'",
        '"\\777"',
        '"\\x"',
        '"\\U0011ffff"',
        '"\\ud800"',
        "0x",
        "0x1F",
        "08",
        "1e",
        "1.5f",
        "inf",
        "-nan",
        "9" * 5000,
        "0x" + "f" * 5000,
        "0" + "7" * 5000,
        "#c\n",
        "\n",
        " ",
        "\ufeff",
        "é",
        "\x00",
        "true",
    ]
)
#: Depths past the parser's limit of 64 and past Python's recursion limit.
RUNS = st.sampled_from([1, 1, 1, 2, 65, 1100, 10_000])


@FUZZ
@given(st.lists(st.tuples(TOKENS, RUNS), max_size=12))
def test_fuzz_token_soup(runs: list[tuple[str, int]]) -> None:
    check_parse("".join(token * count for token, count in runs))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["max_batch_size", "dims", "x"]), TOKENS), max_size=6))
def test_fuzz_field_values(fields: list[tuple[str, str]]) -> None:
    check_parse(" ".join(f"{name}: {value}" for name, value in fields))


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_random_text(text: str) -> None:
    check_parse(text)


@FUZZ
@given(st.data())
def test_fuzz_mutated_valid_config(data: st.DataObject) -> None:
    text = FULL_PBTXT
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(at, min(len(text), at + 20)))
        insert = data.draw(st.one_of(st.text(max_size=6), TOKENS))
        text = text[:at] + insert + text[end:]
    check_parse(text)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=6),
        st.sampled_from(["TYPE_FP32", "FP32", "-1", "9" * 5000, "KIND_CPU"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "name",
                        "data_type",
                        "dims",
                        "key",
                        "value",
                        "string_value",
                        "count",
                        "shape",
                        "reshape",
                        "kind",
                        "max_queue_size",
                        "batch_size",
                        "zero_data",
                    ]
                ),
                st.text(max_size=4),
            ),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=15,
)
TOP_FIELDS = st.sampled_from(
    [
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "instance_group",
        "version_policy",
        "default_model_filename",
        "parameters",
        "optimization",
        "model_warmup",
        "response_cache",
        "sequence_batching",
        "bogus",
    ]
)


@FUZZ
@given(st.dictionaries(TOP_FIELDS, JSON_VALUES, max_size=5))
def test_fuzz_config_dicts(document: dict[str, Any]) -> None:
    start = time.process_time()
    try:
        config_from_dict(document, name="m")
    except InvalidModelConfig as exc:
        assert exc.message
    assert time.process_time() - start < TIME_BOUND_S


# -- regressions found by the fuzzing above -----------------------------------------------------


@pytest.mark.parametrize("literal", ["9" * 5000, "0x" + "f" * 5000, "1" * 101])
def test_integer_literal_past_python_digit_limit_is_invalid_config(literal: str) -> None:
    # Was ValueError ("Exceeds the limit (4300 digits) for integer string conversion").
    with pytest.raises(InvalidModelConfig, match=r"config.pbtxt:1:17: integer of \d+ digits"):
        parse_pbtxt(f"max_batch_size: {literal}")


def test_longest_integers_still_parse() -> None:
    assert parse_pbtxt("a: 18446744073709551615 b: 0xFFFFFFFFFFFFFFFF c: -9223372036854775808") == {
        "a": 2**64 - 1,
        "b": 2**64 - 1,
        "c": -(2**63),
    }


@pytest.mark.parametrize("opening", ["a {", "a: [", "a <", "a: [{"])
def test_deep_nesting_is_invalid_config_not_recursion_error(opening: str) -> None:
    text = opening * 10_000
    assert len(text) > sys.getrecursionlimit()
    with pytest.raises(InvalidModelConfig):
        parse_pbtxt(text)
