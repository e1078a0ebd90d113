"""Reranking evaluation on the MTEB layout: one path for every family.

:func:`evaluate` takes a :class:`ragr.infer.Scorer` (a family's ``scorer(model)`` for a live model, a
loaded one, or a :class:`ragr.infer.Reranker`) and the rows ``{"query", "positive", "negative"[, "prompt"]}``.
Scorers that encode texts separately (embedder, ColBERT) implement ``score_groups`` and encode each
distinct text once; the others score (query, candidate) pairs through the Reranker API. Training-time
evaluation, ``ragr eval``, distillation agreement and ColBERT all come through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragr.eval.metrics import rerank_metrics

HEADLINE = ("map", "mrr@10", "ndcg@10")


def _groups(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[list[int]]]:
    queries = [(r.get("prompt") or "") + r["query"] for r in rows]
    cands = [r["positive"] + r["negative"] for r in rows]
    labels = [[1] * len(r["positive"]) + [0] * len(r["negative"]) for r in rows]
    return queries, cands, labels


def _encodes_texts(scorer) -> bool:
    """Whether ``scorer`` (or the scorer inside a Reranker) scores groups by encoding each distinct text once."""
    inner = getattr(scorer, "scorer", scorer)  # a Reranker wraps a scorer
    return callable(getattr(inner, "score_groups", None)) and getattr(scorer, "long_doc", "truncate") == "truncate"


def score_groups(scorer, queries: list[str], candidates: list[list[str]], batch_size: int = 64,
                 progress: Callable[[float], None] | None = None) -> list[list[float]]:
    """Raw scores of each query's candidates, through the scorer's own ``score_groups`` when it has one."""
    if _encodes_texts(scorer):
        return getattr(scorer, "scorer", scorer).score_groups(queries, candidates, batch_size=batch_size, progress=progress)
    from ragr.infer.reranker import Reranker

    rr = scorer if isinstance(scorer, Reranker) else Reranker.from_scorer(scorer, batch_size=batch_size)
    flat = rr.score([(q, c) for q, cs in zip(queries, candidates) for c in cs], progress=progress)
    out, at = [], 0
    for cs in candidates:
        out.append(list(flat[at : at + len(cs)]))
        at += len(cs)
    return out


def evaluate(scorer, rows: list[dict[str, Any]], batch_size: int = 64, ks: Sequence[int] = (1, 3, 5, 10),
             progress: Callable[[float], None] | None = None) -> dict[str, float]:
    """Score every (query, candidate) of ``rows`` with ``scorer`` and compute the rank metrics."""
    return evaluate_scores(scorer, rows, batch_size, ks, progress)[0]


def evaluate_scores(scorer, rows: list[dict[str, Any]], batch_size: int = 64, ks: Sequence[int] = (1, 3, 5, 10),
                    progress: Callable[[float], None] | None = None) -> tuple[dict[str, float], list[list[float]]]:
    """:func:`evaluate`, and the raw scores of each row's candidates (positives first)."""
    queries, cands, labels = _groups(rows)
    scores = score_groups(scorer, queries, cands, batch_size, progress)
    metrics = rerank_metrics(scores, labels, ks=ks)
    stats = getattr(getattr(scorer, "scorer", scorer), "encode_stats", None)  # e.g. a sparse model's active dims
    if callable(stats):
        metrics.update(stats())
    return metrics, scores


def count_items(scorer, rows: list[dict[str, Any]]) -> int:
    """Progress-bar total of :func:`evaluate`: distinct texts for encoding scorers, pairs otherwise."""
    if _encodes_texts(scorer):
        return len({(r.get("prompt") or "") + r["query"] for r in rows}) + len(
            {d for r in rows for d in r["positive"] + r["negative"]})
    return sum(len(r["positive"]) + len(r["negative"]) for r in rows)
