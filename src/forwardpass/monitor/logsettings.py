"""Triton's logging extension: the ``forwardpass`` loggers' settings, changed at run time.

:class:`LogControl` owns the one handler of the ``forwardpass`` logger tree and applies
:class:`LogSettings` to it: ``log_info``, ``log_warning`` and ``log_error`` switch each
severity on or off independently (as Triton's do), ``log_verbose_level`` N lets through
messages down to level ``DEBUG + 1 - N`` (so 1 is ``DEBUG``, 0 none), ``log_format`` is
Triton's ``default`` or ``ISO8601`` line layout, and ``log_file`` is a file to append to
("" writes to stderr). Protocols parse a client's update with :func:`parse_log_update` and
render :class:`LogSettings` themselves (HTTP: ``protocol.documents.log_settings_document``);
nothing here knows a wire.

Like Triton, ``log_file`` cannot be changed over the network (it would let a client create
files on the server's disk); it is set at start-up (``--log-file``) or by calling
:meth:`LogControl.apply` in-process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from forwardpass.errors import InvalidArgument

__all__ = ["FORMATS", "LogControl", "LogSettings", "parse_log_update"]

#: Triton's names for its two line layouts.
FORMATS = ("default", "ISO8601")
_LETTERS = {logging.ERROR: "E", logging.WARNING: "W", logging.INFO: "I"}


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What the logging extension shows and changes; field names are Triton's."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    @classmethod
    def from_level(cls, level: str, **values: Any) -> LogSettings:
        """From a Python level name (the ``--log-level`` flag): DEBUG turns verbose 1 on."""
        name = level.upper()
        if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise InvalidArgument(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
        return cls(
            log_info=name in ("DEBUG", "INFO"),
            log_warning=name != "ERROR",
            log_verbose_level=1 if name == "DEBUG" else 0,
            **values,
        )


def parse_log_update(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A client's update → ``{LogSettings field: value}``; ``null`` values change nothing.

    Also accepts the plural ``log_warnings``/``log_errors`` that Triton's protocol document
    spells (its server reads the singular names, which tritonclient's examples send).
    """
    if not isinstance(settings, Mapping):
        raise InvalidArgument("log settings must be a JSON object")
    update: dict[str, Any] = {}
    for name, value in settings.items():
        key = {"log_warnings": "log_warning", "log_errors": "log_error"}.get(name, name)
        if value is None:
            continue
        if key == "log_file":
            raise InvalidArgument("log file location can not be updated through network protocol")
        if key in ("log_info", "log_warning", "log_error"):
            if not isinstance(value, bool):
                raise InvalidArgument(f"'{name}' must be a boolean, got: {value!r}")
        elif key == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(
                    f"'log_verbose_level' must be an integer >= 0, got: {value!r}"
                )
        elif key == "log_format":
            if value not in FORMATS:
                raise InvalidArgument(f"invalid argument for --log_format, got: {value}")
        else:
            raise InvalidArgument(
                f"unknown log setting {name!r} (expected log_info, log_warning, log_error, "
                "log_verbose_level or log_format)"
            )
        update[key] = value
    return update


class _Formatter(logging.Formatter):
    """Triton's line layouts: ``I0503 17:26:13.106234 1234 name] msg`` and
    ``2024-05-03T17:26:13Z I 1234 name] msg``."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout

    def format(self, record: logging.LogRecord) -> str:
        letter = _LETTERS.get(record.levelno) or ("E" if record.levelno > logging.ERROR else "V")
        if self.layout == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            head = f"{stamp} {letter} {record.process} {record.name}]"
        else:
            local = time.localtime(record.created)
            micros = int((record.created % 1) * 1_000_000)
            head = (
                f"{letter}{time.strftime('%m%d %H:%M:%S', local)}.{micros:06d} "
                f"{record.process} {record.name}]"
            )
        text = f"{head} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _SeverityFilter(logging.Filter):
    """Triton's independent switches: INFO may be off while ERROR stays on."""

    def __init__(self, control: LogControl) -> None:
        super().__init__()
        self.control = control

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.control.current
        level = record.levelno
        if level >= logging.ERROR:
            return s.log_error
        if level >= logging.WARNING:
            return s.log_warning
        if level >= logging.INFO:
            return s.log_info
        return level >= logging.DEBUG + 1 - s.log_verbose_level


class LogControl:
    """Applies :class:`LogSettings` to a logger tree (``forwardpass`` unless told otherwise).

    The tree gets one handler of its own and stops propagating to the root logger, so the
    settings decide alone what is written and where.
    """

    def __init__(self, settings: LogSettings | None = None, logger: str = "forwardpass") -> None:
        self.logger = logging.getLogger(logger)
        self.current = LogSettings()
        self._handler: logging.Handler | None = None
        self._lock = threading.Lock()
        self._filter = _SeverityFilter(self)
        self.apply(settings or LogSettings())

    def apply(self, settings: LogSettings) -> LogSettings:
        """Make ``settings`` take effect now; a log file that cannot be opened is a 400."""
        with self._lock:
            previous = self.current
            handler = self._handler
            if handler is None or settings.log_file != previous.log_file:
                handler = self._open(settings.log_file)
            handler.setFormatter(_Formatter(settings.log_format))
            if handler is not self._handler:
                if self._handler is not None:
                    self.logger.removeHandler(self._handler)
                    self._handler.close()
                handler.addFilter(self._filter)
                self.logger.addHandler(handler)
                self._handler = handler
            self.current = settings
            # The logger's own level lets isEnabledFor() skip disabled debug calls cheaply.
            if settings.log_verbose_level:
                self.logger.setLevel(max(1, logging.DEBUG + 1 - settings.log_verbose_level))
            else:
                self.logger.setLevel(logging.INFO)
            self.logger.propagate = False
            return settings

    def update(self, update: Mapping[str, Any]) -> LogSettings:
        """Apply a parsed update (see :func:`parse_log_update`)."""
        settings = self.apply(replace(self.current, **update))
        self.logger.getChild("logsettings").info("log settings: %s", settings)
        return settings

    def close(self) -> None:
        with self._lock:
            if self._handler is not None:
                self.logger.removeHandler(self._handler)
                self._handler.close()
                self._handler = None
            self.logger.propagate = True

    @staticmethod
    def _open(path: str) -> logging.Handler:
        if not path:
            return logging.StreamHandler(sys.stderr)
        try:
            return logging.FileHandler(os.fspath(path), mode="a", encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"cannot open log file {path!r}: {exc.strerror}") from None
