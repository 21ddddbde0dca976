"""How fleetpin prints: the one place that decides colour, width and tables, so every command
behaves the same on a terminal, in a pipe and under NO_COLOR.

- Colour (and any other ANSI styling) only on a terminal, never when NO_COLOR is set to anything
  (https://no-color.org) or TERM is "dumb". `secho` is click.secho with that decision made.
- Tables never cut a value: every column folds (wraps) what does not fit, on a narrow terminal;
  piped or redirected, nothing wraps at all (a log or `grep` gets whole lines). Cells are plain
  text, never rich markup, so a value such as "[Errno 5]" or "[::1]:8443" is printed as it is.

rich is imported only when a console or a table is made: `fleetpin --help` and `pin` stay fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

PIPE_WIDTH = 10_000  # "no limit" for rich when the output is not a terminal: lines are never wrapped


def _stream(err: bool) -> IO[Any]:
    return sys.stderr if err else sys.stdout


def is_terminal(err: bool = False) -> bool:
    try:
        return bool(_stream(err).isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def colour_enabled(err: bool = False) -> bool:
    """Whether what goes to stdout (or stderr) may carry ANSI styles."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(err)


def secho(message: str = "", err: bool = False, nl: bool = True, **styles: Any) -> None:
    """click.secho, styled only where colour_enabled says so."""
    click.secho(message, err=err, nl=nl, color=colour_enabled(err), **styles)


def error(message: str, hint: str | None = None) -> None:
    """An error on stderr as every command reports one: `error: ...` and what to do next."""
    secho(f"error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"  next: {hint}", err=True)


def console(err: bool = False) -> Console:
    """A rich console for stdout (or stderr): colour as colour_enabled says, the terminal's width
    on a terminal, and no wrapping at all otherwise."""
    from rich.console import Console

    terminal = is_terminal(err)
    return Console(
        stderr=err,
        highlight=False,
        emoji=False,
        color_system="auto" if colour_enabled(err) else None,
        force_terminal=terminal,
        width=None if terminal else PIPE_WIDTH,
        soft_wrap=not terminal,
    )


class Table:
    """Rows of values printed whole. On a terminal: a table whose columns wrap at spaces what
    does not fit; if even the longest word of each column cannot fit side by side (a narrow
    terminal), one block of `column: value` lines per row instead, so no value is ever cut in
    the middle. In a pipe: the table on lines as long as they need to be."""

    def __init__(self, *columns: str, title: str | None = None, right: Iterable[str] = ()) -> None:
        self.columns = list(columns)
        self.title = title
        self.right = set(right)
        self.rows: list[list[Text]] = []

    def add(self, *cells: str | Text | None) -> None:
        """A row of plain text (never markup; None prints as "-"); a Text keeps its style."""
        from rich.text import Text

        self.rows.append([c if isinstance(c, Text) else Text("-" if c is None else c) for c in cells])

    def rich_table(self) -> RichTable:
        from rich.table import Table as RichTable

        t = RichTable(title=self.title, title_justify="left", title_style="bold" if self.title else "")
        for name in self.columns:
            t.add_column(name, overflow="fold", no_wrap=False, justify="right" if name in self.right else "left")
        for row in self.rows:
            t.add_row(*row)
        return t

    def print(self, out: Console) -> None:
        from rich.measure import Measurement

        t = self.rich_table()
        if not out.is_terminal or Measurement.get(out, out.options.update_width(PIPE_WIDTH), t).minimum <= out.width:
            out.print(t)
            return
        if self.title:
            out.print(styled(self.title, "bold"))
        from rich.text import Text

        width = max(len(c) for c in self.columns)
        for row in self.rows:
            out.print()
            for name, cell in zip(self.columns, row):
                # one line whatever its length: the terminal wraps it, nothing splits the value
                out.print(Text.assemble((f"{name:>{width}}: ", "bold"), cell), soft_wrap=True)


def styled(text: str, style: str) -> Text:
    """A cell or line in a style (shown only where colour is enabled: the console decides)."""
    from rich.text import Text

    return Text(text, style=style)


def assemble(*parts: str | Text | tuple[str, str]) -> Text:
    """One line from plain parts and (text, style) parts: only the styled parts are styled."""
    from rich.text import Text

    return Text.assemble(*parts)


def heading(out: Console, text: str) -> None:
    """A section heading: a rule across the terminal, a plain line in a pipe."""
    if out.is_terminal:
        out.rule(styled(text, "bold"))
    else:
        out.print(f"== {text} ==", markup=False)
