"""Sparse (SPLADE) term weights for an inverted index: ``ragr embed --sparse`` writes one JSONL line per text.

Each line is ``{"id": ..., "terms": {token: weight}}`` with the text's nonzero terms, heaviest first: the
shape Elasticsearch's ``sparse_vector`` / ``rank_features``, OpenSearch's neural sparse fields and Qdrant's
sparse vectors take (ids as tokens; ``--term-ids`` writes vocabulary ids instead). ``id`` is the input
record's ``id`` (or ``_id``), else its 0-based position. Input records are those of ``ragr embed``
(``{"text": ...}``, optional ``"prompt"``; any :mod:`ragr.data.sources` source, ``columns`` mapping its
column names); documents by default, ``--query`` for the query side (an inference-free model weights
queries by its token table, without the encoder).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ragr.errors import UserError

BLOCK = 1024  # texts per encoding block


def _record_id(rec: dict[str, Any], i: int) -> Any:
    for key in ("id", "_id"):
        if key in rec and isinstance(rec[key], (str, int)) and not isinstance(rec[key], bool):
            return rec[key]
    return i


def load_sparse_scorer(model: str, dtype: str = "auto", max_length: int | None = None, key: str = "--model"):
    """A :class:`ragr.families.splade.SpladeScorer` for ``model`` (a folder, alias or hub id), refusing other families."""
    from ragr.device import default_device
    from ragr.families.splade import SpladeScorer
    from ragr.infer.detect import detect_family
    from ragr.infer.vectors import _auto_dtype
    from ragr.models.hub import resolve_model_path

    path = resolve_model_path(model, key=key)
    try:
        family = detect_family(path)
    except UserError:
        family = "splade"  # a plain MLM folder (naver/splade-*): read as SPLADE
    if family != "splade":
        raise UserError(f"{key} {model}: --sparse needs a SPLADE model, and this folder holds a {family} model")
    return SpladeScorer.load(path, device=str(default_device()), dtype=_auto_dtype(dtype), max_length=max_length)


def embed_sparse_file(model: str, input_path: str, output_path: str, batch_size: int = 32, dtype: str = "auto",
                      max_length: int | None = None, is_query: bool = False, term_ids: bool = False, console=None,
                      columns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the term weights of every record of ``input_path`` to ``output_path`` (JSONL, written atomically).

    Returns ``{"rows", "mean_terms", "vocab", "seconds"}`` (mean_terms: active dimensions per text).
    """
    from ragr.infer.vectors import teacher_text, text_checker

    from ragr.data.sources import index_records

    index = index_records(input_path, text_checker(str(input_path)), columns=columns)
    scorer = load_sparse_scorer(model, dtype, max_length)
    scorer.batch_size = batch_size
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    n, total_terms, t0 = len(index), 0, time.perf_counter()
    progress = console.progress("embed (sparse)", n) if console is not None else None
    try:
        with open(tmp, "w", encoding="utf-8") as f, (progress if progress is not None else _Null()) as advance:
            for a in range(0, n, BLOCK):
                recs = [index[i] for i in range(a, min(n, a + BLOCK))]
                texts = [teacher_text(r) for r in recs]
                terms = scorer.sparse_terms(texts, is_query=is_query, by="id" if term_ids else "token")
                for k, (rec, t) in enumerate(zip(recs, terms)):
                    total_terms += len(t)
                    f.write(json.dumps({"id": _record_id(rec, a + k), "terms": t}, ensure_ascii=False) + "\n")
                if advance is not None:
                    advance(len(texts))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"rows": n, "mean_terms": total_terms / n if n else 0.0, "vocab": scorer.model.vocab_size,
            "seconds": round(time.perf_counter() - t0, 3)}


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None
