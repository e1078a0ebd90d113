"""Errors that reach the user as one clear line (exit code 2), never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A usage, configuration or data error: the CLI prints the message and exits with code 2."""


class DataError(UserError):
    """A malformed input record; the message names the file, line and field."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None) -> None:
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice, or "" when nothing is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not close:
        # Compare the last dotted component too: trainer.lrr -> trainer.lr
        tail = name.rsplit(".", 1)[-1]
        tails = {c.rsplit(".", 1)[-1]: c for c in choices}
        hit = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.5)
        close = [tails[hit[0]]] if hit else []
    return f" (did you mean '{close[0]}'?)" if close else ""
