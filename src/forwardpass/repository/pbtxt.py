"""A schema-light reader for protobuf text format, the language of Triton's ``config.pbtxt``.

The parser knows the grammar, not the schema: it turns a text into plain dicts, lists and
scalars, and leaves the meaning of each field to :mod:`forwardpass.repository.config_io`.

    field: value            scalar: "string" 'string' 12 -3 0x1F 1.5 1e-3 inf true IDENT
    field { ... }           message (also ``field: { ... }`` and ``field < ... >``)
    field: [ a, b ]         list of scalars or of messages (the colon is optional)
    field: 1 field: 2       a field written several times becomes a list: [1, 2]

A field written once is its value; one written several times (or in brackets) is a list, so
``dims: 4`` gives ``4`` and ``dims: [4]`` gives ``[4]``. The schema layer accepts both for a
repeated field. ``true``/``false`` (and ``True``/``False``) become bools; other identifiers
(enum values such as ``TYPE_FP32``) stay strings. Map fields are read as Triton writes them,
as repeated ``{ key: ... value: ... }`` messages. Adjacent strings concatenate; ``,`` or ``;``
may follow any field. Errors raise :class:`InvalidModelConfig` naming ``source:line:column``.

Being schema-light, the parser is slightly more lenient than protobuf: it accepts a list of
scalars without a colon (``dims [4]``) and cannot tell a quoted enum from a string; the schema
layer still rejects every unknown field and value.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Any

from forwardpass.errors import InvalidModelConfig

__all__ = ["parse_pbtxt"]

#: Deeper nesting than this is an attack or a mistake; Triton configs nest 4 or 5 levels.
_MAX_DEPTH = 64
#: Longer integer literals are far out of any field's range (a uint64 has 20 digits).
_MAX_DIGITS = 100

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<float>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?(?![\w.])
             |\d+[eE][+-]?\d+[fF]?(?![\w.])
             |\d+[fF](?![\w.]))
  | (?P<int>(?:0[xX][0-9a-fA-F]+|\d+)(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<symbol>[{}\[\]<>:,;\-./])
    """,
    re.VERBOSE,
)

_SIMPLE_ESCAPES = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}
_ESCAPE = re.compile(
    r"\\(?:(?P<oct>[0-7]{1,3})|x(?P<hex>[0-9a-fA-F]{1,2})|u(?P<u4>[0-9a-fA-F]{4})"
    r"|U(?P<u8>[0-9a-fA-F]{8})|(?P<simple>.))",
    re.DOTALL,
)
_BOOLS = {"true": True, "True": True, "false": False, "False": False}
_SPECIAL_FLOATS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}
_CLOSING = {"{": "}", "<": ">"}


class _Token:
    __slots__ = ("kind", "pos", "text")

    def __init__(self, kind: str, text: str, pos: int) -> None:
        self.kind = kind
        self.text = text
        self.pos = pos

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of file"
        return repr(self.text) if self.kind != "string" else "a string"


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.lines = [m.end() for m in re.finditer("\n", text)]
        self.tokens = self._tokenize()
        self.index = 0

    # -- positions and errors ---------------------------------------------------------------

    def where(self, pos: int) -> str:
        line = bisect.bisect_right(self.lines, pos)
        start = self.lines[line - 1] if line else 0
        return f"{self.source}:{line + 1}:{pos - start + 1}"

    def error(self, token: _Token, expected: str) -> InvalidModelConfig:
        return InvalidModelConfig(
            f"{self.where(token.pos)}: expected {expected}, found {token.describe()}"
        )

    # -- lexer -------------------------------------------------------------------------------

    def _tokenize(self) -> list[_Token]:
        tokens: list[_Token] = []
        pos, end, text = 0, len(self.text), self.text
        while pos < end:
            match = _TOKEN.match(text, pos)
            if match is None:
                char = text[pos]
                if char in "\"'":
                    problem = "unterminated string (strings end on the line they start)"
                elif char.isdigit():
                    problem = "malformed number"
                else:
                    problem = f"unexpected character {char!r}"
                raise InvalidModelConfig(f"{self.where(pos)}: {problem}")
            kind = match.lastgroup
            assert kind is not None
            if kind not in ("space", "comment"):
                tokens.append(_Token(kind, match.group(), pos))
            pos = match.end()
        tokens.append(_Token("eof", "", end))
        return tokens

    # -- token stream ------------------------------------------------------------------------

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def accept(self, symbol: str) -> bool:
        token = self.peek()
        if token.kind == "symbol" and token.text == symbol:
            self.index += 1
            return True
        return False

    def is_symbol(self, *symbols: str) -> bool:
        token = self.peek()
        return token.kind == "symbol" and token.text in symbols

    # -- grammar -----------------------------------------------------------------------------

    def parse(self) -> dict[str, Any]:
        result = self.fields(closing=None, depth=0)
        return result

    def fields(self, closing: str | None, depth: int) -> dict[str, Any]:
        """Fields up to ``closing`` (or end of file at top level)."""
        result: dict[str, Any] = {}
        while True:
            token = self.peek()
            if closing is None and token.kind == "eof":
                return result
            if closing is not None and token.kind == "symbol" and token.text == closing:
                self.next()
                return result
            if token.kind != "ident":
                if token.kind == "symbol" and token.text == "[":
                    raise InvalidModelConfig(
                        f"{self.where(token.pos)}: extension and Any fields ([...] names) "
                        "are not supported in a model config"
                    )
                expected = "a field name" + (f" or {closing!r}" if closing else "")
                raise self.error(token, expected)
            self.next()
            name = token.text
            value = self.field_value(name, depth)
            if name in result:
                old = result[name]
                result[name] = (old if isinstance(old, list) else [old]) + (
                    value if isinstance(value, list) else [value]
                )
            else:
                result[name] = value
            if not self.accept(","):
                self.accept(";")

    def field_value(self, name: str, depth: int) -> Any:
        if self.accept(":"):
            if self.is_symbol("{", "<"):
                return self.message(depth)
            if self.is_symbol("["):
                return self.list(depth)
            return self.scalar()
        if self.is_symbol("{", "<"):
            return self.message(depth)
        if self.is_symbol("["):
            return self.list(depth)
        raise self.error(self.peek(), f"':' or '{{' after field name {name!r}")

    def message(self, depth: int) -> dict[str, Any]:
        opening = self.next()
        if depth + 1 > _MAX_DEPTH:
            raise InvalidModelConfig(
                f"{self.where(opening.pos)}: messages nested deeper than {_MAX_DEPTH} levels"
            )
        return self.fields(closing=_CLOSING[opening.text], depth=depth + 1)

    def list(self, depth: int) -> list[Any]:
        self.next()  # "["
        items: list[Any] = []
        if self.accept("]"):
            return items
        while True:
            if self.is_symbol("{", "<"):
                items.append(self.message(depth))
            else:
                items.append(self.scalar())
            if self.accept("]"):
                return items
            if not self.accept(","):
                raise self.error(self.peek(), "',' or ']' in a list")

    def scalar(self) -> Any:
        token = self.next()
        if token.kind == "string":
            parts = [self.string(token)]
            while self.peek().kind == "string":
                parts.append(self.string(self.next()))
            data = b"".join(parts)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidModelConfig(
                    f"{self.where(token.pos)}: string is not valid UTF-8"
                ) from None
        negative = False
        if token.kind == "symbol" and token.text == "-":
            negative = True
            token = self.next()
            if token.kind == "ident" and token.text.lower() in _SPECIAL_FLOATS:
                return -_SPECIAL_FLOATS[token.text.lower()]
            if token.kind not in ("int", "float"):
                raise self.error(token, "a number after '-'")
        if token.kind == "int":
            value = self.integer(token)
            return -value if negative else value
        if token.kind == "float":
            number = float(token.text.rstrip("fF"))
            return -number if negative else number
        if token.kind == "ident":
            if token.text in _BOOLS:
                return _BOOLS[token.text]
            if token.text.lower() in _SPECIAL_FLOATS:
                return _SPECIAL_FLOATS[token.text.lower()]
            return token.text
        raise self.error(token, "a value (string, number, identifier, '{' or '[')")

    def integer(self, token: _Token) -> int:
        text = token.text
        if len(text) > _MAX_DIGITS:
            # Beyond any 64-bit field, and past Python's limit on converting digits to int.
            raise InvalidModelConfig(
                f"{self.where(token.pos)}: integer of {len(text)} digits is out of range"
            )
        if text[:2] in ("0x", "0X"):
            return int(text, 16)
        if len(text) > 1 and text[0] == "0":
            try:
                return int(text, 8)
            except ValueError:
                raise InvalidModelConfig(
                    f"{self.where(token.pos)}: {text!r} is not a valid octal number"
                ) from None
        return int(text)

    def string(self, token: _Token) -> bytes:
        body = token.text[1:-1]
        out = bytearray()
        pos = 0
        for match in _ESCAPE.finditer(body):
            out += body[pos : match.start()].encode("utf-8")
            pos = match.end()
            if match.group("oct") is not None:
                code = int(match.group("oct"), 8)
                if code > 0xFF:
                    raise InvalidModelConfig(
                        f"{self.where(token.pos)}: octal escape \\{match.group('oct')} "
                        "is out of range"
                    )
                out.append(code)
            elif match.group("hex") is not None:
                out.append(int(match.group("hex"), 16))
            elif (code_point := match.group("u4") or match.group("u8")) is not None:
                try:
                    out += chr(int(code_point, 16)).encode("utf-8")
                except (ValueError, UnicodeEncodeError):
                    raise InvalidModelConfig(
                        f"{self.where(token.pos)}: invalid unicode escape in string"
                    ) from None
            else:
                char = match.group("simple")
                if char not in _SIMPLE_ESCAPES:
                    raise InvalidModelConfig(
                        f"{self.where(token.pos + 1 + match.start())}: "
                        f"invalid escape sequence \\{char}"
                    )
                out += _SIMPLE_ESCAPES[char]
        out += body[pos:].encode("utf-8")
        return bytes(out)


def parse_pbtxt(text: str, *, source: str = "config.pbtxt") -> dict[str, Any]:
    """Parse protobuf text format into dicts, lists and scalars (see the module docstring).

    ``source`` names the text in error messages, which read ``source:line:column: expected
    ..., found ...``.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    return _Parser(text, source).parse()
