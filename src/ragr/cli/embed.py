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
        output: str = typer.Option(..., "--output", "-o", help="The .npy to write: float32, one row per line, as wide as the models together."),
        batch_size: int = typer.Option(64, "--batch-size", help="Texts per forward pass."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate texts to this many tokens (default: the model's)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Embed every line of a text JSONL with one or more embedders into a float32 .npy.

        Each model's vectors are L2-normalized, then concatenated in the order of --model (row i <-> line i).
        Provenance goes to OUTPUT with a .json suffix. Example:
        ragr embed --model TencentBAC/Conan-embedding-v1 --model lier007/xiaobu-embedding-v2 --input texts.jsonl --output teacher.npy
        """
        from ragr.data.sources import parse_columns_option
        from ragr.infer.vectors import embed_file
        from ragr.ui import Console

        console = Console(quiet=quiet)
        meta = embed_file(model, input, output, batch_size=batch_size, dtype=dtype, max_length=max_length, console=console,
                          columns=parse_columns_option(columns))
        console.print(f"wrote {meta['rows']} x {meta['dim']} float32 vectors ({' + '.join(map(str, meta['dims']))}) to [bold]{output}[/]")
