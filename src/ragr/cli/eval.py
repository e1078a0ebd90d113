"""``ragr eval``: score reranking data with a model and report MAP / MRR@10 / nDCG@10."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ragr.cli.common import EXTRA, OVERRIDES_HELP, handle_errors, print_metrics_table


def register(app: typer.Typer) -> None:
    @app.command(name="eval", context_settings=EXTRA)
    @handle_errors
    def eval_(
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
        print_config: bool = typer.Option(False, "--print-config", help="Print the composed, resolved config and exit."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    ) -> None:
        """Evaluate a model on reranking data ({"query", "positive": [...], "negative": [...]}).

        Example: ragr eval model.name_or_path=runs/x/model data.eval=dev.jsonl
        """
        from ragr.config import compose_config, to_yaml
        from ragr.data.formats import load_rerank_file
        from ragr.errors import UserError
        from ragr.eval.rerank import count_texts, evaluate_embedder
        from ragr.models import build_model
        from ragr.train.rundir import atomic_write_text
        from ragr.ui import Console

        cfg = compose_config("eval", overrides or [])
        if print_config:
            typer.echo(to_yaml(cfg), nl=False)
            return
        if not cfg["data"].get("eval"):
            raise UserError("data.eval is not set (pass data.eval=path/to/dev.jsonl)")
        console = Console(quiet=quiet)
        rows = load_rerank_file(cfg["data"]["eval"])
        family = eval_family(cfg["model"])
        bs, ks = cfg["eval"]["batch_size"], cfg["eval"]["ks"]
        if family == "embedder":
            if cfg["model"]["family"] == "embedder":
                model = build_model(cfg["model"])
            else:
                from ragr.models.embedder import Embedder

                model = Embedder.from_pretrained(cfg["model"]["name_or_path"])
            with console.progress("eval", count_texts(rows)) as advance:
                metrics = evaluate_embedder(model, rows, batch_size=bs, ks=ks, progress=advance)
        else:  # every other family scores (query, candidate) pairs through the Reranker API
            from ragr.eval.rerank import count_pairs, evaluate_reranker
            from ragr.infer.reranker import Reranker

            reranker = None
            if family == cfg["model"]["family"]:
                model = build_model(cfg["model"])
                if callable(getattr(model, "score_pairs", None)):
                    import torch

                    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
                    reranker = Reranker.from_scorer(model, batch_size=bs)
            if reranker is None:
                reranker = Reranker(cfg["model"]["name_or_path"], family=family, batch_size=bs)
            with console.progress("eval", count_pairs(rows)) as advance:
                metrics = evaluate_reranker(reranker, rows, ks=ks, progress=advance)
        out = Path(cfg["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        report = {"model": cfg["model"]["name_or_path"], "data": cfg["data"]["eval"], "metrics": metrics}
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        print_metrics_table(console, Path(cfg["data"]["eval"]).name, {"score": metrics})
        console.print(f"written to [bold]{out / 'eval.json'}[/]")


def eval_family(model_cfg: dict) -> str:
    """The family to evaluate: read from the model's files when name_or_path is a saved model, else the config's."""
    from ragr.errors import UserError
    from ragr.infer.detect import detect_family

    path = Path(str(model_cfg["name_or_path"])).expanduser()
    if path.is_dir():
        try:
            return detect_family(path)
        except UserError:
            pass
    return model_cfg["family"]
