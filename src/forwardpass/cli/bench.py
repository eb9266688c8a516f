"""``forwardpass bench``: closed-loop load against a running V2 server, like perf_analyzer."""

from __future__ import annotations

import math
from pathlib import Path

import click

from forwardpass.cli.options import DataclassOption, given

__all__ = ["bench"]


def _levels(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        levels = ()
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter("expected a comma-separated list of integers >= 1, e.g. 1,8,32")
    return levels


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


_CONFIG = "forwardpass.loadgen:LoadConfig"


@click.command("bench")
@click.argument("model")
@click.option("--url", cls=DataclassOption, default_from=f"{_CONFIG}.url", help="Server URL.")
@click.option(
    "--concurrency",
    "-c",
    cls=DataclassOption,
    default_from=f"{_CONFIG}.concurrency",
    help="Comma-separated numbers of concurrent clients, measured one after another.",
)
@click.option(
    "--duration",
    "-d",
    cls=DataclassOption,
    default_from=f"{_CONFIG}.duration",
    type=float,
    help="Seconds per level.",
)
@click.option(
    "--warmup",
    cls=DataclassOption,
    default_from=f"{_CONFIG}.warmup",
    type=float,
    help="Unmeasured seconds per level.",
)
@click.option("--binary", is_flag=True, help="Use the binary tensor extension instead of JSON.")
@click.option(
    "--batch-size",
    "-b",
    cls=DataclassOption,
    default_from=f"{_CONFIG}.batch_size",
    type=int,
    help="Samples per request.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:D1,D2",
    help="Shape (without the batch dim) for an input with variable dims; repeatable.",
)
@click.option(
    "--input-data",
    "input_data",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Real inputs instead of synthesized ones: a perf_analyzer JSON file "
    '({"data": [{"INPUT": [...] | {"content": [...], "shape": [...]} | {"b64": "..."}}]}), '
    "a folder with one raw file per input named after it, or image/text files (a folder of "
    "them) for a model with one BYTES input. Repeatable; requests take the samples in turn.",
)
@click.option("--model-version", default="", help="Model version (default: the server's choice).")
@click.option(
    "--timeout",
    cls=DataclassOption,
    default_from=f"{_CONFIG}.timeout",
    type=float,
    help="Give up on a request after this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(
    model: str,
    url: str | None,
    concurrency: str | None,
    duration: float | None,
    warmup: float | None,
    binary: bool,
    batch_size: int | None,
    shapes: tuple[str, ...],
    input_data: tuple[Path, ...],
    model_version: str,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Measure throughput and latency of MODEL on a running server.

    Each of C workers sends a request, waits for the answer and sends the next, for
    --duration seconds after --warmup, at each concurrency level. Inputs come from
    --input-data, else are synthesized from the model's metadata (a real PNG, sentence or WAV
    for inputs its processing reads as images, text or audio). Exits with status 1 if any
    request failed.
    """
    import orjson

    from forwardpass import loadgen
    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import show
    from forwardpass.errors import ForwardpassError

    try:
        config = loadgen.LoadConfig(
            model=model,
            version=model_version,
            binary=binary,
            shapes=loadgen.parse_shape_overrides(shapes),
            input_data=input_data,
            **given(
                url=url,
                concurrency=_levels(concurrency) if concurrency is not None else None,
                duration=duration,
                warmup=warmup,
                batch_size=batch_size,
                timeout=timeout,
            ),
        )
        loadgen.Endpoint.parse(config.url)  # a bad URL is a usage error, reported before any work
    except ForwardpassError as exc:
        raise click.UsageError(exc.message) from exc

    console = make_console(stderr=as_json)
    if not as_json:
        console.print(
            f"[bold]{model}[/] at {config.url}: {len(config.concurrency)} level(s), "
            f"{config.warmup:g} s warm-up + {config.duration:g} s each, "
            f"{'binary' if binary else 'JSON'}"
        )

    def progress(result: loadgen.LevelResult) -> None:
        if not as_json:
            console.print(
                f"  concurrency {result.concurrency}: {result.throughput:,.0f} infer/s, "
                f"p50 {_ms(result.p50_ms)} ms",
                style="dim",
            )

    try:
        report = loadgen.run(config, progress)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from exc

    if as_json:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.table import Table

        table = Table(
            title_justify="left",
            title=(
                f"{model} · {report.encoding} · batch {report.batch_size} · "
                f"{report.request_bytes} B/request · {report.event_loop}"
            ),
        )
        table.add_column("conc.", justify="right")
        table.add_column("infer/s", justify="right")
        table.add_column("p50 ms", justify="right")
        table.add_column("p90 ms", justify="right")
        table.add_column("p99 ms", justify="right")
        table.add_column("max ms", justify="right")
        table.add_column("requests", justify="right")
        table.add_column("errors", justify="right")
        for r in report.results:
            table.add_row(
                str(r.concurrency),
                f"{r.throughput:,.1f}" if r.throughput < 100 else f"{r.throughput:,.0f}",
                _ms(r.p50_ms),
                _ms(r.p90_ms),
                _ms(r.p99_ms),
                _ms(r.max_ms),
                f"{r.requests:,}",
                f"[red]{r.errors}[/]" if r.errors else "0",
            )
        show(console, table)
    for r in report.results:
        if r.first_error:
            click.echo(f"concurrency {r.concurrency}: first error: {r.first_error}", err=True)
            break
    if report.errors:
        raise SystemExit(1)
