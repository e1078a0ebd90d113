"""``ragr rerank``: score JSONL pairs or groups with any reranker, streaming stdin to stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ragr.cli.common import handle_errors


def _check_text(value: str, lineno: int, source: str, field: str, what: str = "") -> None:
    from ragr.data.jsonl import valid_unicode
    from ragr.errors import DataError

    if not valid_unicode(value):
        raise DataError(source, lineno, f"{what}not valid Unicode (a lone surrogate escape such as \\ud800)", field=field)


def parse_line(raw: str | bytes | dict, lineno: int, source: str) -> tuple[str, dict[str, Any]]:
    """Validate one input line (bytes: UTF-8; a dict: a table's row): ``("pair", obj)`` or ``("group", obj)``;
    raises DataError naming the line (or row)."""
    from ragr.data.jsonl import decode_line
    from ragr.errors import DataError

    if isinstance(raw, bytes):
        raw = decode_line(raw, source, lineno)
    try:
        obj = raw if isinstance(raw, dict) else json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(source, lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(source, lineno, f"expected a JSON object, got {type(obj).__name__}")
    if "query" not in obj:
        raise DataError(source, lineno, "missing", field="query")
    if not isinstance(obj["query"], str):
        raise DataError(source, lineno, f"must be a string, got {json.dumps(obj['query'])[:60]}", field="query")
    _check_text(obj["query"], lineno, source, "query")
    if "document" in obj:
        if not isinstance(obj["document"], str):
            raise DataError(source, lineno, f"must be a string, got {json.dumps(obj['document'])[:60]}", field="document")
        _check_text(obj["document"], lineno, source, "document")
        return "pair", obj
    if "documents" in obj:
        docs = obj["documents"]
        if not isinstance(docs, list):
            raise DataError(source, lineno, f"must be a list of strings, got {json.dumps(docs)[:60]}", field="documents")
        for i, d in enumerate(docs):
            if not isinstance(d, str):
                raise DataError(source, lineno, f"item {i} must be a string, got {json.dumps(d)[:60]}", field="documents")
            _check_text(d, lineno, source, "documents", f"item {i} is ")
        return "group", obj
    raise DataError(source, lineno, "missing (a line needs 'document' (a pair) or 'documents' (a group))",
                    field="document")


def score_chunk(reranker, chunk: list[tuple[str, dict[str, Any]]], normalize: bool, top_k: int | None) -> list[dict]:
    """Score every pair of a chunk of parsed lines in one call (length-sorted batches across lines)."""
    pairs = []
    for kind, obj in chunk:
        docs = [obj["document"]] if kind == "pair" else obj["documents"]
        pairs.extend((obj["query"], d) for d in docs)
    scores = reranker.score(pairs, normalize=normalize)
    out, at = [], 0
    for kind, obj in chunk:
        if kind == "pair":
            obj["score"] = scores[at]
            at += 1
        else:
            n = len(obj["documents"])
            s = scores[at : at + n]
            at += n
            order = sorted(range(n), key=lambda i: -s[i])
            if top_k is not None:
                order = order[:top_k]
            obj["results"] = [{"index": i, "score": s[i], "document": obj["documents"][i]} for i in order]
        out.append(obj)
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def rerank(
        model: str = typer.Option(..., "--model", "-m", help="Model folder, alias (bge-reranker-base, qwen-reranker ...) or hub id."),
        family: Optional[str] = typer.Option(None, "--family", help="Reranker family; default: read from the model's files."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="At most this many pairs per forward pass (default: as many as fit --max-tokens; 32 for LLM families)."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Padded tokens per forward pass (default: 8192 on CPU, 32768 on GPU; cross-encoders sort pairs by token length)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 (default), bf16 or fp16."),
        backend: Optional[str] = typer.Option(None, "--backend", help="torch or onnx (ONNX Runtime, a folder from `ragr export`); default: read from the folder."),
        max_length: Optional[int] = typer.Option(None, "--max-length", min=8, help="Input length in tokens (default: the model's)."),
        long_doc: str = typer.Option("truncate", "--long-doc", help="truncate | max-chunk (max over overlapping windows)."),
        overlap: int = typer.Option(32, "--overlap", min=0, help="Tokens shared by consecutive max-chunk windows."),
        top_k: Optional[int] = typer.Option(None, "--top-k", min=0, help="Keep the K best results of each group."),
        normalize: bool = typer.Option(False, "--normalize", help="Scores in [0, 1] (sigmoid of the logit)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad lines on stderr and go on (default: stop, exit 2)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)."),
        input: Optional[str] = typer.Option(None, "--input", "-i", help="Read this instead of stdin JSONL: JSONL, .jsonl.gz, parquet, a save_to_disk folder or hf:NAME[:CONFIG][@SPLIT]."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write this file instead of stdout."),
        chunk_lines: int = typer.Option(256, "--chunk-lines", min=1, help="Lines scored together (memory bound)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary on stderr."),
    ) -> None:
        """Score query/document pairs or rank groups, JSONL in, JSONL out (order kept, extra keys kept).

        A line is a pair {"query", "document"} -> "score" added, or a group {"query", "documents": [...]}
        -> "results": [{"index", "score", "document"}, ...] best first.

        Example: ragr rerank --model runs/x/model < pairs.jsonl > scored.jsonl
        """
        import sys

        from ragr.errors import DataError, UserError
        from ragr.infer.reranker import LONG_DOC, Reranker

        if long_doc not in LONG_DOC:
            raise UserError(f"--long-doc must be one of {', '.join(LONG_DOC)}, got '{long_doc}'")
        if quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        reranker = Reranker(model, family=family, device=device, dtype=dtype, max_length=max_length,
                            long_doc=long_doc, overlap=overlap, batch_size=batch_size, max_tokens=max_tokens,
                            backend=backend)
        source = str(input) if input is not None else "<stdin>"
        from ragr.data.sources import open_source

        # bytes in, decoded line by line: a line that is not UTF-8 is a bad line like any other (see parse_line);
        # a table's rows come as dicts
        fin = open_source(input).raw() if input is not None else enumerate(sys.stdin.buffer, start=1)
        fout = open(output, "w", encoding="utf-8") if output is not None else sys.stdout
        n_lines = n_pairs = n_bad = 0
        try:
            chunk: list[tuple[str, dict[str, Any]]] = []

            def flush() -> None:
                nonlocal n_pairs
                for obj in score_chunk(reranker, chunk, normalize, top_k):
                    fout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")  # default: a table's dates
                    n_pairs += 1 if "score" in obj else len(obj["documents"])
                fout.flush()
                chunk.clear()

            for lineno, raw in fin:
                if isinstance(raw, bytes) and not raw.strip():
                    continue
                try:
                    chunk.append(parse_line(raw, lineno, source))
                except DataError as exc:
                    if not skip_bad:
                        flush()  # lines before the bad one are complete; say where it stopped
                        raise
                    n_bad += 1
                    print(f"skipped {exc}", file=sys.stderr)
                    continue
                n_lines += 1
                if len(chunk) >= chunk_lines:
                    flush()
            flush()
        finally:
            if input is not None:
                fin.close()
            if output is not None:
                fout.close()
        if not quiet:
            extra = f", {n_bad} bad lines skipped" if n_bad else ""
            print(f"reranked {n_lines} lines ({n_pairs} pairs) with {reranker.family} model {model} ({reranker.backend}){extra}", file=sys.stderr)
