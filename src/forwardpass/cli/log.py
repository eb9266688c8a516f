"""``forwardpass log MODEL``: read the request log a server writes (``--request-log``)."""

from __future__ import annotations

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
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON object a line.")
def log(model: str, path: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Show MODEL's requests from the request log, oldest first."""
    import datetime

    import orjson

    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.monitor.requestlog import parse_since, read_rows

    try:
        path = path or ServerConfig.from_env().request_log
        if not path:
            raise click.UsageError("name the log: --request-log PATH (or FORWARDPASS_REQUEST_LOG)")
        rows = read_rows(path, model, parse_since(since) if since else None, limit)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    for row in rows:
        if as_json:
            click.echo(orjson.dumps(row.document()).decode())
            continue
        when = datetime.datetime.fromtimestamp(row.time, datetime.UTC).isoformat(
            timespec="milliseconds"
        )
        line = (
            f"{when} {row.id} {row.model} v{row.version} {row.status} "
            f"total={row.total_us:.0f}us queue={row.queue_us:.0f}us "
            f"compute={row.compute_us:.0f}us batch={row.batch_size}"
        )
        if row.error:
            line += f" error={row.error!r}"
        if row.truth is not None:
            line += f" truth={row.truth}"
        if row.payload is not None:
            line += " [payload]"
        click.echo(line)
