"""``forwardpass models``: what a repository holds and whether each model can load."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["models"]


def _execution(item: dict[str, object]) -> str:
    """``runs on CPUExecutionProvider (model)`` for an index row of a loaded version: the
    providers and precision of each instance as the server reports them (the same for all
    instances is said once)."""
    instances = item.get("execution")
    if not isinstance(instances, list) or not instances:
        return ""
    said = []
    for x in instances:
        text = f"{', '.join(x.get('providers', []))} ({x.get('precision', '?')})"
        if x.get("fallback"):
            text += " after a provider fallback"
        said.append(text)
    if len(set(said)) == 1:
        count = f"{len(said)} instances " if len(said) > 1 else ""
        return f"{count}runs on {said[0]}"
    return "; ".join(f"instance {i} runs on {t}" for i, t in enumerate(said))


@click.command()
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository to list (default: the embedded one).",
)
@click.option("--url", default=None, help="Ask a running server instead (its repository index).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models(model_repository: Path | None, url: str | None, as_json: bool) -> None:
    """List the models of a repository with their versions and state."""
    from rich.markup import escape

    from forwardpass.cli.console import console, show, table

    rows: list[dict[str, str]] = []
    if url:
        import urllib.error
        import urllib.request

        try:
            req = urllib.request.Request(
                url.rstrip("/") + "/v2/repository/index", data=b"{}", method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                for item in json.loads(resp.read()):
                    detail = "; ".join(x for x in (item.get("reason", ""), _execution(item)) if x)
                    rows.append(
                        {
                            "name": item.get("name", ""),
                            "versions": item.get("version", ""),
                            "state": item.get("state", ""),
                            "detail": detail,
                        }
                    )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
    else:
        from forwardpass.config import ServerConfig
        from forwardpass.errors import ForwardpassError
        from forwardpass.optimize.provenance import read_provenance
        from forwardpass.repository import ModelRepository

        config = ServerConfig.from_env(model_repository=model_repository)
        # Listing never runs model code: a Python model's auto_complete_config (or native
        # class) is only run, and known to import, when the server loads it.
        repo = ModelRepository(config.model_repository, run_model_code=False)
        try:
            names = repo.list_models()
        except ForwardpassError as exc:
            raise click.ClickException(exc.message) from None
        for name in names:
            try:
                entry = repo.read(name)
            except ForwardpassError as exc:
                rows.append(
                    {"name": name, "versions": "", "state": "UNAVAILABLE", "detail": exc.message}
                )
                continue
            cfg = entry.config
            io = (
                ", ".join(
                    f"{s.name}:{s.datatype.value}{list(((-1,) if cfg.batching else ()) + s.dims)}"
                    for s in cfg.inputs
                )
                + " → "
                + ", ".join(
                    f"{s.name}:{s.datatype.value}{list(((-1,) if cfg.batching else ()) + s.dims)}"
                    for s in cfg.outputs
                )
            )
            # Versions written by `forwardpass optimize` say what they were made from.
            derived = "".join(
                f"; v{v} {p.describe()}"
                for v in entry.versions
                if (p := read_provenance(entry.path / str(v))) is not None
            )
            if cfg.backend == "python":
                target = cfg.parameters.get("class")
                code = f"class {target}" if target else f"{cfg.default_model_filename} present"
                derived += (
                    f"; {code}, decoupled {str(cfg.decoupled).lower()}; whether its code "
                    "imports and what auto_complete_config adds are known only at load"
                )
            rows.append(
                {
                    "name": name,
                    "versions": ",".join(str(v) for v in entry.versions),
                    "state": "OK",
                    "detail": f"{cfg.backend or cfg.platform}, "
                    f"max_batch_size {cfg.max_batch_size}; {io}{derived}",
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    grid = table("name", "versions", "state", "detail")
    grid.columns[0].no_wrap = True
    for row in rows:
        grid.add_row(*(escape(row[k]) for k in ("name", "versions", "state", "detail")))
    show(console(), grid)
