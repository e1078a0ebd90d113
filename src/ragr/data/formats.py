"""The training-data kinds (pair, triplet, scored) and their validation.

The kind is declared (``data.format``) or detected from the keys used anywhere in the file — never
from the first line alone: a file is ``scored`` if any line carries scores, ``triplet`` if any line
has ``neg``, otherwise ``pair``. Every line is then checked against that kind.

Any source of :mod:`ragr.data.sources` works (JSONL, .jsonl.gz, parquet, ``datasets`` folders, ``hf:``
names); ``columns`` maps its column names (``data.columns``), and sentence-transformers' layout
(``anchor`` / ``positive`` / ``negative`` or ``negative_1..n``) is read as ``query`` / ``pos`` / ``neg``.
"""

from __future__ import annotations

from typing import Any

from ragr.data.jsonl import require_numbers, require_str, require_str_list
from ragr.data.sources import Source, as_source
from ragr.errors import DataError

FORMATS = ("pair", "triplet", "scored")


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def training_source(path: Source | str, columns=None) -> Source:
    """The source of training data ``path``: ``columns`` mapped, sentence-transformers' names read."""
    return as_source(path, columns, st_names=True)


def detect_format(path: Source | str, columns=None) -> str:
    """Detect the kind from the keys present across the whole file (one streaming pass)."""
    seen: set[str] = set()
    for _, obj in training_source(path, columns).records():
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


def load_training_file(path: Source | str, fmt: str = "auto", columns=None):
    """Validate every record of ``path`` and return its random-access index and the (detected) kind."""
    src = training_source(path, columns)
    if fmt == "auto":
        fmt = detect_format(src)
    if fmt not in FORMATS:
        raise DataError(src.label, 0, f"unknown data format '{fmt}' (choices: {', '.join(FORMATS)})")
    return src.build_index(make_checker(src.label, fmt)), fmt


def load_rerank_file(path: Source | str, columns=None) -> list[dict[str, Any]]:
    """Read MTEB-style reranking data ``{"query", "positive": [...], "negative": [...]}`` (validated).

    Training keys are read too: ``pos`` / ``neg`` (so triplet data, or sentence-transformers' ``anchor`` /
    ``positive`` / ``negative_1..n`` columns, evaluate as they are) when ``positive`` / ``negative`` are absent.
    """
    src = training_source(path, columns)
    label = src.label
    rows = []
    for lineno, obj in src.records():
        query = require_str(obj, "query", label, lineno)
        pkey = "positive" if "positive" in obj or "pos" not in obj else "pos"
        nkey = "negative" if "negative" in obj or "neg" not in obj else "neg"
        pos = require_str_list(obj, pkey, label, lineno, empty_ok=True)
        neg = require_str_list(obj, nkey, label, lineno, empty_ok=True)
        rows.append({"query": query, "positive": pos, "negative": neg, "prompt": obj.get("prompt")})
    if not rows:
        raise DataError(label, 0, "no records")
    return rows
