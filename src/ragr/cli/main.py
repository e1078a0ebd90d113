"""Entry point of the ``ragr`` command."""

from __future__ import annotations

import typer

from ragr import __version__
from ragr.cli import eval as eval_cmd
from ragr.cli import ls, train
from ragr.cli import mine as mine_cmd
from ragr.cli import distill as distill_cmd
from ragr.cli import embed as embed_cmd
from ragr.cli import export as export_cmd
from ragr.cli import rerank as rerank_cmd
from ragr.cli import serve as serve_cmd

app = typer.Typer(
    name="ragr",
    help="Fine-tune, distill, evaluate and serve retrieval models for RAG. Run `ragr train` for the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ragr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    pass


for module in (train, eval_cmd, ls, rerank_cmd, serve_cmd, mine_cmd, distill_cmd, embed_cmd, export_cmd):
    module.register(app)


def main() -> None:
    app()
