"""Reranker training data: pointwise, grouped and triplet records (any :mod:`ragr.data.sources` source), validated one by one.

* pointwise ``{"query": str, "content": str, "label": number}`` (label key: ``data.label_key``);
* grouped ``{"query": str, "hits": [{"content": str, "label": number}, ...]}``;
* triplet ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` (labels 1 / 0).

The kind is declared (``data.format``) or read from the keys of every line (``hits`` -> grouped,
``content`` -> pointwise, ``pos`` -> triplet); a file mixing kinds is an error naming the line.
Each item is a group of ``1 + num_negatives`` candidates (pointwise: one), re-sampled every epoch
with an RNG seeded by ``(seed, epoch, index)``.
"""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

import torch

from ragr.data.dataset import EpochDataset
from ragr.data.formats import _norm, make_checker, training_source
from ragr.data.jsonl import require_str
from ragr.data.sources import Row, Source
from ragr.errors import DataError

RERANK_FORMATS = ("pointwise", "grouped", "triplet")


def _kind(obj: dict[str, Any]) -> str | None:
    if "hits" in obj:
        return "grouped"
    if "content" in obj:
        return "pointwise"
    if "pos" in obj:
        return "triplet"
    return None


def detect_rerank_format(path: Source | str, columns=None) -> str:
    """The kind shared by every line of ``path`` (one streaming pass)."""
    src = training_source(path, columns)
    path = src.label
    first: tuple[str, int] | None = None
    for lineno, obj in src.records():
        kind = _kind(obj)
        if kind is None:
            raise DataError(path, lineno, "cannot tell the data kind: a reranker line needs 'hits' (grouped), "
                                          "'content' (pointwise) or 'pos' and 'neg' (triplet)")
        if first is None:
            first = (kind, lineno)
        elif kind != first[0]:
            this = "row" if isinstance(lineno, Row) else "line"
            where = f"{first[1]}" if isinstance(first[1], Row) else f"line {first[1]}"
            raise DataError(path, lineno, f"this {this} is {kind} data but {where} is {first[0]}; "
                                          "use one kind per file (or set data.format)")
    if first is None:
        raise DataError(path, 0, "no records")
    return first[0]


def _require_label(obj: dict, key: str, path: str, lineno: int, field: str) -> float:
    if key not in obj:
        raise DataError(path, lineno, "missing", field=field)
    value = obj[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise DataError(path, lineno, f"must be a number, got {json.dumps(value)[:60]}", field=field)
    return float(value)


def make_rerank_checker(path: str, fmt: str, label_key: str = "label", num_negatives: int = 3):
    """A function validating one record of kind ``fmt`` (raises DataError naming file:line:field)."""
    if fmt == "triplet":
        return make_checker(path, "triplet")

    def check(obj: dict[str, Any], lineno: int) -> None:
        require_str(obj, "query", path, lineno)
        require_str(obj, "prompt", path, lineno, optional=True)
        if fmt == "pointwise":
            require_str(obj, "content", path, lineno)
            _require_label(obj, label_key, path, lineno, label_key)
            return
        hits = obj.get("hits")
        if not isinstance(hits, list) or not hits:
            raise DataError(path, lineno, f"must be a non-empty list of {{\"content\", \"{label_key}\"}} objects, "
                                          f"got {json.dumps(hits)[:60]}", field="hits")
        for i, hit in enumerate(hits):
            if not isinstance(hit, dict):
                raise DataError(path, lineno, f"must be an object, got {json.dumps(hit)[:60]}", field=f"hits[{i}]")
            content = hit.get("content")
            if not isinstance(content, str) or not content.strip():
                raise DataError(path, lineno, f"must be a non-empty string, got {json.dumps(content)[:60]}",
                                field=f"hits[{i}].content")
            _require_label(hit, label_key, path, lineno, f"hits[{i}].{label_key}")
        if num_negatives > 0 and len(hits) < 2:
            raise DataError(path, lineno, "a group needs at least 2 hits", field="hits")

    return check


def load_rerank_training_file(path: Source | str, fmt: str = "auto", label_key: str = "label",
                              num_negatives: int = 3, columns=None):
    """Validate every record of ``path`` as reranker data; return its random-access index and its kind."""
    src = training_source(path, columns)
    if fmt == "auto":
        fmt = detect_rerank_format(src)
    if fmt not in RERANK_FORMATS:
        raise DataError(src.label, 0, f"data.format '{fmt}' is not reranker data (choices: {', '.join(RERANK_FORMATS)})")
    return src.build_index(make_rerank_checker(src.label, fmt, label_key, num_negatives)), fmt


def _pick(rng: random.Random, pool: list, k: int) -> list:
    return rng.sample(pool, k) if len(pool) >= k else rng.choices(pool, k=k)


class RerankDataset(EpochDataset):
    """Map-style dataset of scored groups over a validated reranker JSONL index.

    Item ``i`` is ``{"query", "docs", "labels"}`` with ``1 + num_negatives`` candidates (one for
    pointwise data). Triplet: one positive (label 1) + sampled negatives (label 0), never a text
    that is also a positive. Grouped: a hit with the group's highest label first, then other hits
    (sampled without replacement when there are enough). Sampling is seeded by ``(seed, epoch, i)``.
    """

    def __init__(self, index: JsonlIndex, fmt: str, num_negatives: int = 3, seed: int = 0,
                 label_key: str = "label") -> None:
        super().__init__(index, seed)
        self.fmt, self.num_negatives, self.label_key = fmt, num_negatives, label_key

    @property
    def group_size(self) -> int:
        return 1 if self.fmt == "pointwise" else 1 + self.num_negatives

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.index[i]
        rng = self.rng(i)
        query = (rec.get("prompt") or "") + rec["query"]
        n = self.num_negatives
        if self.fmt == "pointwise":
            return {"query": query, "docs": [rec["content"]], "labels": [float(rec[self.label_key])]}
        if self.fmt == "triplet":
            pos_set = {_norm(p) for p in rec["pos"]}
            negs = [x for x in rec["neg"] if _norm(x) not in pos_set]
            docs = [rng.choice(rec["pos"])] + (_pick(rng, negs, n) if n > 0 else [])
            return {"query": query, "docs": docs, "labels": [1.0] + [0.0] * n}
        hits = [(h["content"], float(h[self.label_key])) for h in rec["hits"]]
        top = max(label for _, label in hits)
        first = rng.choice([k for k, (_, label) in enumerate(hits) if label == top])
        rest = [h for k, h in enumerate(hits) if k != first]
        group = [hits[first]] + (_pick(rng, rest, n) if n > 0 else [])
        return {"query": query, "docs": [d for d, _ in group], "labels": [label for _, label in group]}


def add_in_batch_negatives(examples: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """Each group plus ``k`` documents drawn from the other groups of the batch, label 0 (ST's MNRL negatives).

    A document whose text is one of the query's own candidates is never drawn. Every group gets the same
    number: ``k``, or fewer when the batch has fewer eligible documents for some query (one group alone: none).
    The draw is seeded by ``seed`` and the batch's queries, so a resumed run draws the same documents.
    """
    if k <= 0 or len(examples) < 2:
        return examples
    rng = random.Random(zlib.crc32(("\x1f".join(e["query"] for e in examples)).encode()) ^ seed)
    pool = [(i, d, _norm(d)) for i, e in enumerate(examples) for d in e["docs"]]  # each text normalized once
    own = [{key for j, _, key in pool if j == i} for i in range(len(examples))]
    choices = [[d for j, d, key in pool if j != i and key not in own[i]] for i in range(len(examples))]
    n = min(k, *(len(c) for c in choices))
    out = []
    for e, c in zip(examples, choices):
        extra = rng.sample(c, n)
        out.append({**e, "docs": list(e["docs"]) + extra, "labels": list(e["labels"]) + [0.0] * n})
    return out


def collate_rerank(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: ``queries [B]``, the flat pairs ``pair_queries`` / ``docs [B * G]`` and ``labels [B, G]``."""
    g = len(examples[0]["docs"])
    if any(len(e["docs"]) != g for e in examples):
        raise ValueError("all groups of a batch must have the same size")
    return {
        "queries": [e["query"] for e in examples],
        "pair_queries": [e["query"] for e in examples for _ in e["docs"]],
        "docs": [d for e in examples for d in e["docs"]],
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.float32),
    }
