"""The protobuf text format parser: grammar, values and error positions."""

from __future__ import annotations

import math

import pytest

from forwardpass.errors import InvalidModelConfig
from forwardpass.repository import parse_pbtxt


def test_scalars_messages_and_comments() -> None:
    text = """
    # a comment
    name: "resnet"   # trailing comment
    max_batch_size: 8
    input {
      name: "x"
      data_type: TYPE_FP32
      dims: [ 3, -1, 224 ]
    }
    """
    assert parse_pbtxt(text) == {
        "name": "resnet",
        "max_batch_size": 8,
        "input": {"name": "x", "data_type": "TYPE_FP32", "dims": [3, -1, 224]},
    }


def test_message_forms_colon_brackets_angles() -> None:
    assert parse_pbtxt("a { b: 1 } c: { d: 2 } e < f: 3 > g: < >") == {
        "a": {"b": 1},
        "c": {"d": 2},
        "e": {"f": 3},
        "g": {},
    }


def test_lists_of_scalars_and_messages() -> None:
    assert parse_pbtxt('dims [1, 2] names: ["a", "b"] empty: [] m: [{x: 1}, {x: 2}]') == {
        "dims": [1, 2],
        "names": ["a", "b"],
        "empty": [],
        "m": [{"x": 1}, {"x": 2}],
    }


def test_repeated_fields_accumulate() -> None:
    parsed = parse_pbtxt("dims: 1 dims: [2, 3] dims: 4 input { name: 'a' } input { name: 'b' }")
    assert parsed["dims"] == [1, 2, 3, 4]
    assert parsed["input"] == [{"name": "a"}, {"name": "b"}]


def test_single_occurrence_keeps_its_form() -> None:
    assert parse_pbtxt("dims: 4")["dims"] == 4
    assert parse_pbtxt("dims: [4]")["dims"] == [4]


def test_separators() -> None:
    assert parse_pbtxt("a: 1, b: 2; c { d: 3, e: 4; }") == {"a": 1, "b": 2, "c": {"d": 3, "e": 4}}


def test_numbers() -> None:
    parsed = parse_pbtxt(
        "a: -3 b: 0x1F c: 1.5 d: -2.5e3 e: 1e-3 f: .5 g: 2f h: 017 i: -inf j: nan k: 0"
    )
    assert parsed["a"] == -3 and isinstance(parsed["a"], int)
    assert parsed["b"] == 31
    assert parsed["c"] == 1.5
    assert parsed["d"] == -2500.0
    assert parsed["e"] == 0.001
    assert parsed["f"] == 0.5
    assert parsed["g"] == 2.0
    assert parsed["h"] == 15
    assert parsed["i"] == -math.inf
    assert math.isnan(parsed["j"])
    assert parsed["k"] == 0


def test_bools_and_enums() -> None:
    parsed = parse_pbtxt("a: true b: false c: True d: False e: KIND_GPU f: TYPE_STRING")
    assert parsed == {
        "a": True,
        "b": False,
        "c": True,
        "d": False,
        "e": "KIND_GPU",
        "f": "TYPE_STRING",
    }


def test_strings_quotes_escapes_and_concatenation() -> None:
    parsed = parse_pbtxt(
        r"""
        a: 'single "quoted"'
        b: "tab\there\nnewline \\ \" \' \x41\101 \u00e9"
        c: "con" 'cat' "enated"
        d: "caf\303\251"
        e: "héllo"
        """
    )
    assert parsed["a"] == 'single "quoted"'
    assert parsed["b"] == "tab\there\nnewline \\ \" ' AA é"
    assert parsed["c"] == "concatenated"
    assert parsed["d"] == "café"
    assert parsed["e"] == "héllo"


def test_triton_map_entries() -> None:
    parsed = parse_pbtxt(
        """
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        parameters: { key: "execution_mode" value { string_value: "0" } }
        """
    )
    assert parsed["parameters"] == [
        {"key": "intra_op_thread_count", "value": {"string_value": "1"}},
        {"key": "execution_mode", "value": {"string_value": "0"}},
    ]


def test_empty_text_and_bom() -> None:
    assert parse_pbtxt("") == {}
    assert parse_pbtxt("  # only a comment\n") == {}
    assert parse_pbtxt('\ufeffname: "x"') == {"name": "x"}


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ('name: "x"\ninput { name: }', "config.pbtxt:2:15", "expected a value"),
        ("name 'x'", "config.pbtxt:1:6", "expected ':' or '{' after field name 'name'"),
        ("input { name: 'x' ", "config.pbtxt:1:19", "expected a field name or '}'"),
        ("}", "config.pbtxt:1:1", "expected a field name, found '}'"),
        ("dims: [1, 2", "config.pbtxt:1:12", "expected ',' or ']' in a list"),
        ("dims: [1 2]", "config.pbtxt:1:10", "expected ',' or ']'"),
        ("dims: [1, 2,]", "config.pbtxt:1:13", "expected a value"),
        ('a: "unterminated\n', "config.pbtxt:1:4", "unterminated string"),
        ("a: 12abc", "config.pbtxt:1:4", "malformed number"),
        ("a: - x", "config.pbtxt:1:6", "expected a number after '-'"),
        ("a: 09", "config.pbtxt:1:4", "not a valid octal number"),
        ("a: @", "config.pbtxt:1:4", "unexpected character '@'"),
        (r'a: "bad \q escape"', "config.pbtxt:1:9", "invalid escape sequence \\q"),
        (r'a: "\377"', "config.pbtxt:1:4", "not valid UTF-8"),
        ("[ext.field]: 1", "config.pbtxt:1:1", "extension and Any fields"),
        ("a: [[1]]", "config.pbtxt:1:5", "expected a value"),
    ],
)
def test_errors_name_line_column_and_expectation(text: str, where: str, fragment: str) -> None:
    with pytest.raises(InvalidModelConfig) as info:
        parse_pbtxt(text)
    assert str(info.value).startswith(where + ": "), str(info.value)
    assert fragment in str(info.value)


def test_error_names_the_source() -> None:
    with pytest.raises(InvalidModelConfig, match=r"^override:1:3: "):
        parse_pbtxt("a b", source="override")


def test_deep_nesting_is_refused() -> None:
    text = "a { " * 100 + "}" * 100
    with pytest.raises(InvalidModelConfig, match="nested deeper"):
        parse_pbtxt(text)
