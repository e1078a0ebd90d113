"""``ragr embed``: teacher vectors for Stella/Jasper stage 3 — a text JSONL into a float32 .npy."""

from __future__ import annotations

from typing import Optional

import typer

from ragr.cli.common import handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def embed(
        model: list[str] = typer.Option(..., "--model", "-m", help="Embedder (folder, alias or hub id); repeat for several teachers."),
        input: str = typer.Option(..., "--input", "-i", help='Texts: one {"text": ...} per record (optional "prompt" / "teacher_prompt"); JSONL, .jsonl.gz, parquet, a save_to_disk folder or hf:NAME[:CONFIG][@SPLIT].'),
        columns: Optional[list[str]] = typer.Option(None, "--columns", help="FIELD=COLUMN[,...]: the input's columns holding ragr's fields (text=sentence)."),
        output: str = typer.Option(..., "--output", "-o", help="The .npy to write: float32, one row per line, as wide as the models together (--sparse: a .jsonl)."),
        batch_size: int = typer.Option(64, "--batch-size", help="Texts per forward pass."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate texts to this many tokens (default: the model's)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
        sparse: bool = typer.Option(False, "--sparse", help='A SPLADE model\'s term weights instead: OUTPUT is a JSONL of '
                                    '{"id", "terms": {token: weight}} per record, for an inverted index.'),
        query: bool = typer.Option(False, "--query", help="--sparse: weight the texts as queries (default: documents)."),
        term_ids: bool = typer.Option(False, "--term-ids", help="--sparse: vocabulary ids as the terms' keys instead of tokens."),
    ) -> None:
        """Embed every record of a text file or dataset with one or more embedders into a float32 .npy
        (or, with --sparse, a SPLADE model's term weights into a JSONL for an inverted index).

        Each model's vectors are L2-normalized, then concatenated in the order of --model (row i <-> line i).
        Provenance goes to OUTPUT with a .json suffix. Example:
        ragr embed --model TencentBAC/Conan-embedding-v1 --model lier007/xiaobu-embedding-v2 --input texts.jsonl --output teacher.npy |
        ragr embed --sparse --model runs/splade/model --input corpus.jsonl --output terms.jsonl
        """
        from ragr.data.sources import parse_columns_option
        from ragr.infer.vectors import embed_file
        from ragr.ui import Console

        console = Console(quiet=quiet)
        if sparse:
            _embed_sparse(model, input, output, columns, batch_size, dtype, max_length, query, term_ids, console)
            return
        meta = embed_file(model, input, output, batch_size=batch_size, dtype=dtype, max_length=max_length, console=console,
                          columns=parse_columns_option(columns))
        console.print(f"wrote {meta['rows']} x {meta['dim']} float32 vectors ({' + '.join(map(str, meta['dims']))}) to [bold]{output}[/]")


def _embed_sparse(model, input, output, columns, batch_size, dtype, max_length, query, term_ids, console) -> None:
    """``ragr embed --sparse``: one SPLADE model's term weights, a JSONL line per record (ragr.infer.sparse)."""
    from ragr.errors import UserError
    from ragr.infer.sparse import embed_sparse_file

    if len(model) != 1:
        raise UserError(f"--sparse takes one --model (got {len(model)}): term weights of two models do not concatenate")
    if not output.endswith(".jsonl"):
        raise UserError(f"--output {output}: --sparse writes a JSONL file; give a name ending in .jsonl")
    cols = None
    if columns:
        from ragr.data.sources import parse_columns_option

        cols = parse_columns_option(columns)
    meta = embed_sparse_file(model[0], input, output, batch_size=batch_size, dtype=dtype, max_length=max_length,
                             is_query=query, term_ids=term_ids, console=console, columns=cols)
    console.print(f"wrote the term weights of {meta['rows']} {'queries' if query else 'documents'} "
                  f"({meta['mean_terms']:.1f} terms each on average, of {meta['vocab']}) to [bold]{output}[/]")
