"""``ragr train``: compose the config, then train through the chosen launcher."""

from __future__ import annotations

from typing import Optional

import typer

from ragr.cli.common import EXTRA, OVERRIDES_HELP, handle_errors, print_metrics_table


def register(app: typer.Typer) -> None:
    @app.command(context_settings=EXTRA)
    @handle_errors
    def train(
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
        print_config: bool = typer.Option(False, "--print-config", help="Print the composed, resolved config and exit."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    ) -> None:
        """Fine-tune a model. With no overrides: the bundled MiniLM on the bundled demo data.

        Examples: ragr train | ragr train loss=mrl trainer.epochs=2 |
        ragr train recipe=minilm-mrl data.train=my.jsonl output_dir=runs/mine
        """
        from ragr.config import compose_config, to_yaml
        from ragr.registry import launchers
        from ragr.ui import Console

        cfg = compose_config("train", overrides or [])
        if print_config:
            typer.echo(to_yaml(cfg), nl=False)
            return
        console = Console(quiet=quiet)
        results = launchers.get(cfg["launcher"]["name"])(cfg, quiet=quiet)
        if results:
            print_metrics_table(console, "dev metrics", {"before": results.get("before"), "after": results.get("after")})
            from ragr.train.health import summary_lines

            for line in summary_lines(results):  # collapse warnings; better / worse on dev, in words
                console.print(line)
            console.print(f"model saved to [bold]{results['model_dir']}[/] ({results['steps']} steps)")
