"""Reranking evaluation on the MTEB layout: score each query's candidates, then rank metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragr.eval.metrics import rerank_metrics

HEADLINE = ("map", "mrr@10", "ndcg@10")


def evaluate_embedder(model, rows: list[dict[str, Any]], batch_size: int = 64, ks: Sequence[int] = (1, 3, 5, 10),
                      progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Cosine-score every (query, candidate) of ``rows`` with an embedder and compute the metrics.

    Each distinct text is encoded once; scores are computed in fp32.
    """
    queries = sorted({(r.get("prompt") or "") + r["query"] for r in rows})
    docs = sorted({d for r in rows for d in r["positive"] + r["negative"]})
    q_emb = model.encode(queries, is_query=True, batch_size=batch_size, progress=progress)
    d_emb = model.encode(docs, is_query=False, batch_size=batch_size, progress=progress)
    q_at = {t: i for i, t in enumerate(queries)}
    d_at = {t: i for i, t in enumerate(docs)}
    scores, labels = [], []
    for r in rows:
        cands = r["positive"] + r["negative"]
        q = q_emb[q_at[(r.get("prompt") or "") + r["query"]]]
        d = d_emb[[d_at[c] for c in cands]]
        scores.append((d.float() @ q.float()).tolist())
        labels.append([1] * len(r["positive"]) + [0] * len(r["negative"]))
    return rerank_metrics(scores, labels, ks=ks)


def count_texts(rows: list[dict[str, Any]]) -> int:
    """How many texts :func:`evaluate_embedder` encodes (for progress bars)."""
    return len({(r.get("prompt") or "") + r["query"] for r in rows}) + len(
        {d for r in rows for d in r["positive"] + r["negative"]}
    )


def evaluate_reranker(reranker, rows: list[dict[str, Any]], batch_size: int = 64, ks: Sequence[int] = (1, 3, 5, 10),
                      progress: Callable[[float], None] | None = None) -> dict[str, float]:
    """Score every (query, candidate) of ``rows`` with a reranker and compute the metrics.

    Args:
        reranker: a :class:`ragr.infer.Reranker`, or a bare scorer (a model being trained), which is
            wrapped with ``batch_size``.
        rows: MTEB reranking rows ``{"query", "positive", "negative"[, "prompt"]}``.
        batch_size: pairs per forward pass when ``reranker`` is a bare scorer.
        ks: metric cutoffs.
        progress: called with the number of pairs scored.
    """
    from ragr.infer.reranker import Reranker

    if not isinstance(reranker, Reranker):
        reranker = Reranker.from_scorer(reranker, batch_size=batch_size)
    pairs, labels = [], []
    for r in rows:
        q = (r.get("prompt") or "") + r["query"]
        cands = r["positive"] + r["negative"]
        pairs.extend((q, c) for c in cands)
        labels.append([1] * len(r["positive"]) + [0] * len(r["negative"]))
    flat = reranker.score(pairs, progress=progress)
    scores, at = [], 0
    for lab in labels:
        scores.append(flat[at : at + len(lab)])
        at += len(lab)
    return rerank_metrics(scores, labels, ks=ks)


def count_pairs(rows: list[dict[str, Any]]) -> int:
    """How many (query, candidate) pairs :func:`evaluate_reranker` scores (for progress bars)."""
    return sum(len(r["positive"]) + len(r["negative"]) for r in rows)
