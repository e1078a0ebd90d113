"""``ragr distill``: compose the distill config, score the data with the teacher (cached), train the student."""

from __future__ import annotations

from typing import Optional

import typer

from ragr.cli.common import EXTRA, OVERRIDES_HELP, handle_errors, print_metrics_table

AGREEMENT = ("teacher_spearman", "teacher_top1", "teacher_cosine", "teacher_sim_spearman")


def register(app: typer.Typer) -> None:
    @app.command(context_settings=EXTRA)
    @handle_errors
    def distill(
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
        print_config: bool = typer.Option(False, "--print-config", help="Print the composed, resolved config and exit."),
        rescore: bool = typer.Option(False, "--rescore", help="Score the data with the teacher again, even when cached."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    ) -> None:
        """Distill a teacher into a student: teacher=RERANKER|data|vectors student=MODEL loss=distill-kl|....

        The teacher scores every (query, candidate) of data.train once; the scores are cached in the run
        directory (keyed by teacher + data hash) and reused on a re-run. Examples:
        ragr distill teacher=qwen-reranker student=bert data.train=my.jsonl |
        ragr distill teacher=data student=bge-base-zh loss=llm-preference data.train=scored.jsonl |
        ragr distill recipe=stella-jasper-stage3 teacher.name_or_path=vectors.npy data.train=texts.jsonl
        """
        from ragr.config import compose_config, to_yaml
        from ragr.train.distill import run_distill
        from ragr.ui import Console

        cfg = compose_config("distill", overrides or [])
        if rescore:
            cfg["distill"]["rescore"] = True
        if print_config:
            typer.echo(to_yaml(cfg), nl=False)
            return
        console = Console(quiet=quiet)
        results = run_distill(cfg, quiet=quiet)
        if not results:  # a machine other than machine 0 of a multi-node run
            return
        before, after = results.get("before") or {}, results.get("after") or {}
        print_metrics_table(console, "dev metrics", {"before": before, "after": after})
        rows = []
        for key in AGREEMENT:
            if key in before or key in after:
                b, a = before.get(key), after.get(key)
                change = f"{a - b:+.4f}" if a is not None and b is not None else ""
                rows.append([key, "" if b is None else b, "" if a is None else a, change])
        if rows:
            console.table(f"agreement with the teacher ({results.get('agreement_on')})", ["metric", "before", "after", "change"], rows)
        from ragr.train.health import summary_lines

        for line in summary_lines(results):  # collapse warnings; better / worse on dev, in words
            console.print(line)
        console.print(f"student saved to [bold]{results['model_dir']}[/] ({results['steps']} steps)")
