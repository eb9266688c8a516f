"""The commands' terminal output: one console, tables that survive 80 columns and a pipe.

On a terminal a table is drawn with rich's boxes and colours; when stdout is not a terminal
(``forwardpass models | grep``, a CI log) it is plain text: no box-drawing, no ANSI codes,
columns separated by spaces. Either way it is laid out for the console's width (80 unless the
terminal or ``$COLUMNS`` says otherwise). Commands print through :func:`console` and
:func:`show`; text that must stay copyable (an install command, a path) goes through
:func:`say`, which never breaks a line inside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["console", "say", "show", "table"]


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); rich decides from the stream whether it is a terminal."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def table(*columns: str, title: str | None = None, **options: Any) -> Table:
    """A table with ``columns`` (left-justified; pass ``justify`` per column via add_column)."""
    from rich.table import Table

    result = Table(title=title, title_justify="left", **options)
    for column in columns:
        result.add_column(column)
    return result


def show(out: Console, grid: Table) -> None:
    """Print ``grid``: boxed on a terminal, plain space-separated text otherwise."""
    from rich import box

    if not out.is_terminal:
        grid.box = None
        grid.show_edge = False
        grid.title_style = ""
        grid.header_style = ""
        grid.pad_edge = False
    elif grid.box is box.HEAVY_HEAD:
        # rich's default; SIMPLE_HEAD costs no border columns, which 80 columns cannot spare.
        grid.box = box.SIMPLE_HEAD
    out.print(grid)


def say(out: Console, text: str, **options: Any) -> None:
    """Print ``text`` without breaking it inside a line (commands and paths stay whole)."""
    out.print(text, soft_wrap=True, **options)
