"""``ragr mine``: hard negatives for pair/triplet data, retrieved by an embedder (optionally rescored by a reranker)."""

from __future__ import annotations

from typing import Optional

import typer

from ragr.cli.common import handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def mine(
        model: str = typer.Option(..., "--model", "-m", help="Embedder: folder, alias (minilm, bge-base-zh ...) or hub id."),
        input: str = typer.Option(..., "--input", "-i", help='Pairs or triplets ({"query", "pos": [...]}): JSONL, .jsonl.gz, parquet, a save_to_disk folder or hf:NAME[:CONFIG][@SPLIT].'),
        columns: Optional[list[str]] = typer.Option(None, "--columns", help="FIELD=COLUMN[,...]: the input's columns holding ragr's fields (query=question,pos=answer); sentence-transformers' anchor/positive/negative_N are read as they are."),
        output: str = typer.Option(..., "--output", "-o", help='Triplets JSONL to write ({"query", "pos", "neg"}).'),
        corpus: Optional[str] = typer.Option(None, "--corpus", help='Candidate documents: {"text"[, "title"]} per record (BEIR corpus.jsonl works; any format --input takes).'),
        corpus_from_data: bool = typer.Option(False, "--corpus-from-data", help="Use the distinct positives (and negatives) of --input as the corpus."),
        n: int = typer.Option(8, "--n", min=1, help="Negatives per query."),
        rank_range: str = typer.Option("10:100", "--rank-range", help="LO:HI, 1-based inclusive ranks to draw from, counted after removing the query's positives."),
        margin: float = typer.Option(0.05, "--margin", help="Skip candidates scoring >= best positive score - MARGIN (false-negative guard); negative: off."),
        sample: str = typer.Option("random", "--sample", help="random (uniform from the window) | top (hardest first)."),
        reranker: Optional[str] = typer.Option(None, "--reranker", help="Rescore the window with this reranker (ranks and margin then use its [0, 1] scores)."),
        reranker_family: Optional[str] = typer.Option(None, "--reranker-family", help="Reranker family; default: read from its files."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per encoder batch (pairs per reranker batch)."),
        seed: int = typer.Option(42, "--seed", help="Sampling seed."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Mine hard negatives: retrieve candidates for every query, keep N from a rank window.

        Example: ragr mine --model minilm --input pairs.jsonl --corpus-from-data --output triplets.jsonl --n 8 --rank-range 10:100 --margin 0.05
        """
        import torch

        from ragr.data.mine import mine_file, parse_rank_range
        from ragr.data.sources import parse_columns_option
        from ragr.errors import UserError
        from ragr.ui import Console

        if bool(corpus) == corpus_from_data:
            raise UserError("pass exactly one of --corpus FILE and --corpus-from-data")
        if sample not in ("random", "top"):
            raise UserError(f"--sample must be random or top, got {sample!r}")
        lo_hi = parse_rank_range(rank_range)
        mapping = parse_columns_option(columns)
        console = Console(quiet=quiet)
        from ragr.device import default_device

        device = str(default_device())
        embedder = load_embedder(model, device)
        rr = None
        if reranker:
            from ragr.infer import Reranker

            rr = Reranker(reranker, family=reranker_family, batch_size=batch_size)
        stats = mine_file(embedder, input, output, corpus_path=corpus, n=n, rank_range=lo_hi,
                          margin=margin if margin >= 0 else None, reranker=rr, batch_size=batch_size, seed=seed,
                          sample=sample, console=console, columns=mapping)
        s = stats.as_dict()
        console.print(f"{s['written']} of {s['queries']} queries written to [bold]{output}[/] with {s['negatives']} negatives "
                      f"(corpus {s['corpus_size']}; {s['short_rows']} rows short of {n}; {s['skipped_no_negative']} queries "
                      f"without any negative skipped; {s['rejected_by_margin']} candidates within the margin skipped)")


def load_embedder(name_or_path: str, device: str = "cpu"):
    """A ragr Embedder from a folder, alias or hub id; a folder holding another kind of model is a UserError."""
    from pathlib import Path

    from ragr.errors import UserError
    from ragr.infer.detect import detect_family
    from ragr.models.embedder import Embedder
    from ragr.models.hub import resolve_model_path

    path = resolve_model_path(name_or_path, key="--model")
    try:
        family = detect_family(path)
    except UserError:
        family = "embedder"  # a bare encoder backbone: pooled as an embedder
    if family != "embedder" and Path(path).is_dir():
        raise UserError(f"--model {name_or_path} is a {family} model; mining retrieves with an embedder "
                        "(pass a reranker as --reranker)")
    return Embedder.from_pretrained(path, key="--model").to(device).eval()
