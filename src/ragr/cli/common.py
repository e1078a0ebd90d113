"""Shared CLI plumbing: error handling (exit 2 for user errors) and the overrides argument."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from ragr.errors import UserError

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
#: command parameters that name a file the command reads (``ragr rerank/mine/embed --input``, ``ragr mine
#: --corpus``): :func:`handle_errors` checks each given one is a readable file before the command body runs,
#: so a wrong path is one line naming the option, before any model loads
INPUT_FILE_OPTIONS = {"input": "--input", "corpus": "--corpus"}
OVERRIDES_HELP = "Hydra overrides: group=option (model=bert) or key=value (trainer.lr=1e-5)."


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; a UserError becomes one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            check_input_options(kwargs)
            return fn(*args, **kwargs)
        except UserError as exc:
            from rich.console import Console

            from rich.markup import escape

            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def check_input_options(params: dict[str, Any]) -> None:
    """Each given :data:`INPUT_FILE_OPTIONS` parameter must name a readable source (a file, a `datasets` folder or
    an ``hf:`` name, :func:`ragr.data.sources.require_source`); else a UserError naming the option."""
    from ragr.data.sources import require_source

    for name, option in INPUT_FILE_OPTIONS.items():
        value = params.get(name)
        if value is not None:
            require_source(value, option)


def print_metrics_table(console, title: str, columns: dict[str, dict[str, float] | None]) -> None:
    """A metrics table with one column per named result (for example before / after)."""
    from ragr.eval.rerank import HEADLINE

    present = {k: v for k, v in columns.items() if v}
    if not present:
        return
    names = list(present)
    rows = []
    for metric in HEADLINE + ("recall@10", "active_dims_query", "active_dims_doc"):  # active dims: sparse models
        if all(metric in present[n] for n in names):
            row = [metric] + [present[n][metric] for n in names]
            if len(names) == 2:
                row.append(f"{present[names[1]][metric] - present[names[0]][metric]:+.4f}")
            rows.append(row)
    cols = ["metric"] + names + (["change"] if len(names) == 2 else [])
    first = present[names[0]]
    console.table(f"{title} ({first.get('num_queries', '?')} queries)", cols, rows)
