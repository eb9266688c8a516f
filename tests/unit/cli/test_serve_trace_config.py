"""``forwardpass serve --trace-config``: Triton's spelling of the trace settings, the
OpenTelemetry ones included (cli/serve.py, ServerConfig.otel_settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from forwardpass.cli.serve import _trace_config, serve
from forwardpass.config import ServerConfig
from forwardpass.errors import InvalidArgument
from forwardpass.monitor.otel import OtelSettings


def test_opentelemetry_settings_as_triton_spells_them() -> None:
    fields = _trace_config(
        (
            "mode=opentelemetry",
            "level=TIMESTAMPS",
            "rate=0",
            "opentelemetry,url=http://collector:4318/v1/traces",
            "opentelemetry,resource=service.name=x",
            "opentelemetry,resource=deployment.environment=prod",
            "opentelemetry,bsp_max_export_batch_size=64",
        )
    )
    assert fields == {
        "trace_mode": "opentelemetry",
        "trace_level": ("TIMESTAMPS",),
        "trace_rate": 0,
        "trace_opentelemetry": (
            ("url", "http://collector:4318/v1/traces"),
            ("resource", "service.name=x"),
            ("resource", "deployment.environment=prod"),
            ("bsp_max_export_batch_size", "64"),
        ),
    }
    config = ServerConfig(**fields)
    settings = config.trace_settings()
    assert settings.mode == "opentelemetry" and settings.rate == 0 and not settings.file
    assert config.otel_settings() == OtelSettings(
        url="http://collector:4318/v1/traces",
        resource=(("service.name", "x"), ("deployment.environment", "prod")),
        bsp_max_export_batch_size=64,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mode=jaeger", "unknown trace mode 'jaeger'"),
        ("opentelemetry,url", "expected <setting>=<value>"),
        ("zipkin,url=http://x", "unknown trace mode 'zipkin'"),
    ],
)
def test_bad_trace_config_is_rejected(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _trace_config((spec,))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["opentelemetry,url=collector:4318"], "url must be an http:// or https:// URL"),
        (["opentelemetry,color=blue"], "unknown setting 'color'"),
        (["opentelemetry,bsp_schedule_delay=soon"], "bsp_schedule_delay must be an integer"),
        (["mode=triton", "level=TIMESTAMPS"], "trace file name is not given"),
    ],
)
def test_serve_reports_a_bad_setting_as_a_usage_error(
    args: list[str], message: str, tmp_path: Path
) -> None:
    flags = [f for a in args for f in ("--trace-config", a)]
    result = CliRunner().invoke(serve, [*flags, "--model-repository", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output
