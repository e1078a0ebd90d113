"""``ragr ls``: what can be composed — registries, config groups and recipes."""

from __future__ import annotations

import typer

from ragr.cli.common import handle_errors

KINDS = ("models", "losses", "launchers", "rerankers", "recipes", "groups")


def recipe_command(path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# Run:"):
            return line.removeprefix("# Run:").strip()
    return ""


def register(app: typer.Typer) -> None:
    @app.command(name="ls")
    @handle_errors
    def ls(what: str = typer.Argument("all", help=f"One of: all, {', '.join(KINDS)}.")) -> None:
        """List what the registries and config groups hold (models, losses, launchers, recipes ...)."""
        from rich.console import Console
        from rich.table import Table

        from ragr.config.compose import CONF_DIR, group_options
        from ragr.errors import UserError, did_you_mean
        from ragr.registry import ALL

        if what != "all" and what not in KINDS:
            raise UserError(f"unknown listing '{what}'{did_you_mean(what, KINDS)}; choices: all, {', '.join(KINDS)}")
        console = Console()
        for kind, reg in ALL.items():
            if what in ("all", kind):
                table = Table(title=f"{kind} (registry)")
                table.add_column("name")
                table.add_column("target")
                table.add_column("what it is")
                for e in reg.entries():
                    table.add_row(e.name, e.target, e.help)
                console.print(table)
        if what in ("all", "groups", "models"):
            table = Table(title="config groups (conf/)")
            table.add_column("group")
            table.add_column("options")
            for group in sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "recipe"):
                table.add_row(group, ", ".join(group_options(group)))
            console.print(table)
        if what in ("all", "recipes"):
            table = Table(title="recipes (ragr train|distill recipe=NAME; see each command)")
            table.add_column("name")
            table.add_column("command")
            for p in sorted((CONF_DIR / "recipe").glob("*.yaml")):
                table.add_row(p.stem, recipe_command(p))
            console.print(table)
