"""The training-data kinds (pair, triplet, scored) and their validation.

The kind is declared (``data.format``) or detected from the keys used anywhere in the file — never
from the first line alone: a file is ``scored`` if any line carries scores, ``triplet`` if any line
has ``neg``, otherwise ``pair``. Every line is then checked against that kind.
"""

from __future__ import annotations

from typing import Any

from ragr.data.jsonl import JsonlIndex, iter_jsonl, require_numbers, require_str, require_str_list
from ragr.errors import DataError

FORMATS = ("pair", "triplet", "scored")


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def detect_format(path: str) -> str:
    """Detect the kind from the keys present across the whole file (one streaming pass)."""
    seen: set[str] = set()
    for _, _, obj in iter_jsonl(path):
        seen.update(k for k in ("neg", "scores", "pos_scores") if k in obj)
        if "scores" in seen or "pos_scores" in seen:
            return "scored"
    return "triplet" if "neg" in seen else "pair"


def make_checker(path: str, fmt: str):
    """A function that validates one record of kind ``fmt`` (raises DataError naming file:line:field)."""

    def check(obj: dict[str, Any], lineno: int) -> None:
        require_str(obj, "query", path, lineno)
        require_str(obj, "prompt", path, lineno, optional=True)
        pos = require_str_list(obj, "pos", path, lineno)
        neg = require_str_list(obj, "neg", path, lineno, optional=fmt != "triplet")
        if fmt == "scored":
            if "scores" in obj:
                require_numbers(obj, "scores", path, lineno, len(pos))
            else:
                require_numbers(obj, "pos_scores", path, lineno, len(pos))
                if neg is not None:
                    require_numbers(obj, "neg_scores", path, lineno, len(neg))
        if neg is not None:
            positives = {_norm(p) for p in pos}
            if all(_norm(n) in positives for n in neg):
                raise DataError(path, lineno, "every negative is also a positive of this query", field="neg")

    return check


def load_training_file(path: str, fmt: str = "auto") -> tuple[JsonlIndex, str]:
    """Validate every line of ``path`` and return its offset index and the (detected) kind."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(path, 0, f"unknown data format '{fmt}' (choices: {', '.join(FORMATS)})")
    return JsonlIndex.build(path, make_checker(path, fmt)), fmt


def load_rerank_file(path: str) -> list[dict[str, Any]]:
    """Read MTEB-style reranking data ``{"query", "positive": [...], "negative": [...]}`` (validated)."""
    rows = []
    for lineno, _, obj in iter_jsonl(path):
        query = require_str(obj, "query", path, lineno)
        pos = require_str_list(obj, "positive", path, lineno, empty_ok=True)
        neg = require_str_list(obj, "negative", path, lineno, empty_ok=True)
        rows.append({"query": query, "positive": pos, "negative": neg, "prompt": obj.get("prompt")})
    if not rows:
        raise DataError(path, 0, "no records")
    return rows
