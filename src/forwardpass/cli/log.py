"""``forwardpass log MODEL``: read the request log a server writes (``--request-log``):
MODEL's requests and what its monitors reported (drift alarms turning on or off)."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["log"]


@click.command()
@click.argument("model")
@click.option(
    "--request-log",
    "path",
    default=None,
    help="The log file (default: $FORWARDPASS_REQUEST_LOG, as 'serve --request-log' took it).",
)
@click.option(
    "--since",
    default=None,
    help="Rows from this long ago (30s, 15m, 2h, 7d), or since an ISO 8601 time.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, help="Newest rows at most.")
@click.option(
    "--kind",
    type=click.Choice(["all", "requests", "events"]),
    default="all",
    show_default=True,
    help="Requests, monitor events (drift alarms on and off), or both by time.",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON object a line.")
def log(
    model: str, path: str | None, since: str | None, limit: int, kind: str, as_json: bool
) -> None:
    """Show MODEL's requests and monitor events from the request log, oldest first."""
    import orjson

    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.monitor.monitoring import log_documents
    from forwardpass.monitor.requestlog import parse_since

    try:
        path = path or ServerConfig.from_env().request_log
        if not path:
            raise click.UsageError("name the log: --request-log PATH (or FORWARDPASS_REQUEST_LOG)")
        rows = log_documents(path, model, parse_since(since) if since else None, limit, kind)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    for row in rows:
        click.echo(orjson.dumps(row).decode() if as_json else _line(row))


def _line(row: dict[str, Any]) -> str:
    import datetime

    when = datetime.datetime.fromtimestamp(row["time"], datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    if "detail" in row:  # a monitor event
        detail = row["detail"]
        features = ",".join(detail.get("features", [])) or "-"
        return f"{when} {row['kind'].upper()} {row['model']} v{row['version']} features={features}"
    line = (
        f"{when} {row['id']} {row['model']} v{row['version']} {row['status']} "
        f"total={row['total_us']:.0f}us queue={row['queue_us']:.0f}us "
        f"compute={row['compute_us']:.0f}us batch={row['batch_size']}"
    )
    if row["cached"]:
        line += " [cached]"
    if row["error"]:
        line += f" error={row['error']!r}"
    if row["truth"] is not None:
        line += f" truth={_json_text(row['truth'])}"
    if row["payload"] is not None:
        line += " [payload]"
    return line


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
