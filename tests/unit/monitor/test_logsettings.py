"""Log settings: changed at run time, they take effect on the next message."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.monitor.logsettings import LogControl, LogSettings, parse_log_update


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LogControl, io.StringIO]]:
    """A LogControl on a private logger tree, writing to a captured stderr."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    ctl = LogControl(LogSettings(), logger="fptest")
    try:
        yield ctl, stream
    finally:
        ctl.close()


def test_debug_message_appears_and_disappears_at_run_time(
    control: tuple[LogControl, io.StringIO],
) -> None:
    ctl, stream = control
    log = logging.getLogger("fptest.engine")  # a child logger follows the tree's settings
    log.debug("hidden one")
    ctl.update(parse_log_update({"log_verbose_level": 1}))
    log.debug("shown")
    ctl.update(parse_log_update({"log_verbose_level": 0}))
    log.debug("hidden two")
    text = stream.getvalue()
    assert "shown" in text
    assert "hidden" not in text


def test_severities_switch_independently(control: tuple[LogControl, io.StringIO]) -> None:
    ctl, stream = control
    log = logging.getLogger("fptest")
    ctl.update(parse_log_update({"log_info": False, "log_warning": False}))
    log.info("info-off")
    log.warning("warning-off")
    log.error("error-on")
    ctl.update(parse_log_update({"log_error": False, "log_info": True}))
    log.error("error-off")
    log.info("info-on")
    text = stream.getvalue()
    assert "error-on" in text and "info-on" in text
    assert "off" not in text


def test_formats(control: tuple[LogControl, io.StringIO]) -> None:
    ctl, stream = control
    log = logging.getLogger("fptest.x")
    log.warning("plain")
    ctl.update(parse_log_update({"log_format": "ISO8601"}))
    log.error("iso")
    lines = stream.getvalue().splitlines()
    first, second = (line for line in lines if "logsettings" not in line)
    assert any("log settings: " in line for line in lines)  # the change itself is logged
    assert re.fullmatch(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ fptest\.x\] plain", first), first
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ E \d+ fptest\.x\] iso", second), second


def test_log_file(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    ctl = LogControl(LogSettings(log_file=str(path)), logger="fptest.file")
    try:
        logging.getLogger("fptest.file").warning("to the file")
        assert ctl.current.log_file == str(path)
    finally:
        ctl.close()
    assert "to the file" in path.read_text()
    with pytest.raises(InvalidArgument, match="cannot open log file"):
        LogControl(LogSettings(log_file=str(tmp_path / "no" / "x.log")), logger="fptest.bad")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"log_file": "/tmp/x.log"}, "log file location can not be updated through network"),
        ({"log_info": "yes"}, "'log_info' must be a boolean"),
        ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer >= 0"),
        ({"log_verbose_level": True}, "'log_verbose_level' must be an integer >= 0"),
        ({"log_format": "json"}, "invalid argument for --log_format, got: json"),
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
    ],
)
def test_parse_rejects(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_log_update(settings)
    assert message in info.value.message


def test_parse_plural_names_and_null() -> None:
    assert parse_log_update({"log_warnings": False, "log_errors": True, "log_info": None}) == {
        "log_warning": False,
        "log_error": True,
    }


def test_from_level() -> None:
    assert LogSettings.from_level("DEBUG").log_verbose_level == 1
    assert not LogSettings.from_level("WARNING").log_info
    error = LogSettings.from_level("error")
    assert (error.log_info, error.log_warning, error.log_error) == (False, False, True)
    with pytest.raises(InvalidArgument, match="unknown log level 'LOUD'"):
        LogSettings.from_level("LOUD")
