"""Terminal output: rich progress bars and tables on stderr, silenced by --quiet (and on non-main ranks)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Console:
    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console as RichConsole

        self.quiet = quiet
        self._rich = RichConsole(stderr=True, quiet=quiet)
        self._task = None
        self._bar = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._rich.print(*args, **kwargs)

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0) -> Iterator[Callable[[int], None]]:
        """A progress bar; yields ``advance(n)``. A no-op when quiet."""
        if self.quiet:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                       console=self._rich, transient=False)
        task = bar.add_task(description, total=total, completed=completed, note="")
        self._bar, self._task = bar, task
        with bar:
            yield lambda n=1: bar.advance(task, n)
        self._bar = self._task = None

    def progress_note(self, note: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, note=note)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right" if c != columns[0] else "left")
        for r in rows:
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
        self._rich.print(table)


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)
