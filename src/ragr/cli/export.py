"""``ragr export``: a cross-encoder or embedder as ONNX (fp32, int8 or fp16) for fast CPU inference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ragr.cli.common import handle_errors

FORMATS = ("onnx",)


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def export(
        model: str = typer.Option(..., "--model", "-m", help="Model folder (a cross-encoder or embedder; ragr's or sentence-transformers'), alias or hub id."),
        output: Path = typer.Option(..., "--output", "-o", help="New folder to write: a copy of the model plus onnx/ (sentence-transformers' layout)."),
        format: str = typer.Option("onnx", "--format", "-f", help="Export format: onnx."),
        quantize: Optional[str] = typer.Option(None, "--quantize", help="Also write a lower-precision model and score with it: int8 (dynamic, for CPUs) or fp16 (for GPUs)."),
        int8_target: str = typer.Option("auto", "--int8-target", help="int8 preset (optimum's names): auto (this CPU), avx2, avx512, avx512_vnni, arm64."),
        family: Optional[str] = typer.Option(None, "--family", help="cross_encoder or embedder; default: read from the model's files."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --output folder that already holds files."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    ) -> None:
        """Export a cross-encoder or embedder to ONNX through PyTorch's exporter and ONNX Runtime.

        OUTPUT holds the model's files plus onnx/model.onnx (fp32) and, with --quantize int8,
        onnx/model_<q>int8_<target>.onnx (ONNX Runtime dynamic quantization), which ragr then scores with.

        `ragr rerank --model OUTPUT` and `ragr serve` pick the ONNX backend by themselves (or --backend onnx);
        sentence-transformers: CrossEncoder(OUTPUT, backend="onnx", model_kwargs={"file_name": "onnx/..."}).

        Needs the onnx extra: pip install 'ragr\\[onnx]'.

        Example: ragr export --model runs/x/model --format onnx --quantize int8 --output runs/x/model-onnx
        """
        from ragr.errors import UserError, did_you_mean
        from ragr.ui import Console

        if format not in FORMATS:
            raise UserError(f"--format {format}: unknown{did_you_mean(format, FORMATS)}; choices: {', '.join(FORMATS)}")
        console = Console(quiet=quiet)
        from ragr.infer.onnx import export_onnx

        info = export_onnx(model, output, quantize=quantize, int8_target=int8_target, family=family,
                           overwrite=overwrite, console=console)
        files = ", ".join(info["files"].values())
        console.print(f"wrote [bold]{output}[/] ({files}); ragr scores with {info['file_name']} ({info['precision']})")
        console.print(f"  ragr rerank --model {output} --input pairs.jsonl")
