"""Pure-numpy ranking metrics for reranking evaluation.

Every function here scores one *candidate list* per query: the reranker assigns
a score to each candidate and each candidate carries a graded relevance label
(``label > 0`` means relevant). Metrics follow the ``trec_eval`` conventions for
a run that ranks every candidate of the list, so the values agree with
``pytrec_eval`` (``map``, ``recip_rank``, ``ndcg_cut_k``, ``recall_k``,
``P_k``) whenever the scores contain no ties.

Conventions:

* **Scores** may be fp32 or wider; they are upcast to float64 before sorting so
  that the ordering does not depend on the input dtype. NaN scores are rejected.
* **Tie policy (pessimistic).** Candidates are sorted by score, descending.
  Among candidates with *equal* scores, the less relevant ones (lower label)
  are ranked first, so ties can never inflate a metric (a model that outputs a
  constant score gets the worst possible value). Candidates that tie on both
  score and label keep their input order. Note that ``trec_eval`` instead
  breaks ties by document id, so the two only agree on tie-free runs.
* **Relevance.** Binary metrics (MAP, MRR, recall, precision) treat
  ``label > 0`` as relevant. nDCG uses the label itself as a linear gain
  (``trec_eval`` convention, not ``2**label - 1``). Negative labels are
  treated as 0 (non-relevant, zero gain).
* **Queries without relevant candidates** are skipped: :func:`query_metrics`
  returns ``None`` for them and :func:`aggregate` counts them in
  ``num_skipped`` instead of averaging them in.
* **Cutoffs.** ``p@k`` divides by ``k`` even when the list has fewer than ``k``
  candidates (``trec_eval`` convention); ``recall@k`` divides by the number of
  relevant candidates in the list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["DEFAULT_KS", "aggregate", "query_metrics", "rank_order", "rerank_metrics"]

#: Default metric cutoffs.
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)

ArrayLike1D = Sequence[float] | np.ndarray


def _as_arrays(scores: ArrayLike1D, labels: ArrayLike1D) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts one query's scores and labels to float64 arrays.

    Args:
        scores: Candidate scores (fp32 or wider).
        labels: Graded relevance labels, one per candidate.

    Returns:
        ``(scores, labels)`` as 1-D float64 arrays; negative labels clipped to 0.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, or contain NaN.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} != {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if np.isnan(y).any():
        raise ValueError("labels contain NaN")
    return s, np.maximum(y, 0.0)


def rank_order(scores: ArrayLike1D, labels: ArrayLike1D) -> np.ndarray:
    """Returns candidate indices sorted by score, descending, ties pessimistic.

    Scores are upcast to float64 first (inputs may be fp32 or wider). Among
    equal scores, candidates with a lower label come first; candidates tied on
    both score and label keep their input order.

    Args:
        scores: Candidate scores, shape ``(n,)``.
        labels: Graded relevance labels, shape ``(n,)``.

    Returns:
        Integer array of shape ``(n,)``: ``order[r]`` is the index of the
        candidate at rank ``r + 1``.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, or contain NaN.
    """
    s, y = _as_arrays(scores, labels)
    # np.lexsort is stable and sorts by the last key first: score descending,
    # then label ascending, then input position.
    return np.lexsort((y, -s))


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validates metric cutoffs.

    Args:
        ks: Cutoffs to validate.

    Returns:
        The cutoffs as a tuple of Python ints.

    Raises:
        ValueError: If a cutoff is not a positive integer.
    """
    out = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"cutoffs must be positive integers, got {k!r}")
        out.append(int(k))
    return tuple(out)


def query_metrics(
    scores: ArrayLike1D,
    labels: ArrayLike1D,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float] | None:
    """Computes ranking metrics for one query's candidate list.

    Args:
        scores: Candidate scores, shape ``(n,)`` (fp32 or wider).
        labels: Graded relevance labels, shape ``(n,)``; ``> 0`` is relevant.
        ks: Cutoffs for the ``@k`` metrics.

    Returns:
        ``None`` if no candidate is relevant (the query is skipped). Otherwise a
        dict with ``"map"`` (average precision over all relevant candidates),
        ``"mrr"`` (reciprocal rank of the first relevant, no cutoff) and, for
        each ``k`` in ``ks``, ``"mrr@k"``, ``"ndcg@k"``, ``"recall@k"`` and
        ``"p@k"``.

    Raises:
        ValueError: On malformed inputs or non-positive cutoffs.
    """
    ks = _check_ks(ks)
    s, y = _as_arrays(scores, labels)
    rel = y > 0
    num_rel = int(rel.sum())
    if num_rel == 0:
        return None

    order = np.lexsort((y, -s))
    gains = y[order]
    hits = rel[order]
    n = hits.shape[0]
    ranks = np.arange(1, n + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits)

    hit_ranks = ranks[hits]
    out: dict[str, float] = {
        "map": float(np.sum(cum_hits[hits] / hit_ranks) / num_rel),
        "mrr": float(1.0 / hit_ranks[0]),
    }
    first_rank = int(hit_ranks[0])
    discounts = 1.0 / np.log2(ranks + 1.0)
    ideal = np.sort(y)[::-1]
    for k in ks:
        m = min(k, n)
        hits_k = int(cum_hits[m - 1])
        dcg = float(np.sum(gains[:m] * discounts[:m]))
        idcg = float(np.sum(ideal[:m] * discounts[:m]))
        out[f"mrr@{k}"] = 1.0 / first_rank if first_rank <= k else 0.0
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"recall@{k}"] = hits_k / num_rel
        out[f"p@{k}"] = hits_k / k
    return out


def aggregate(per_query: Iterable[dict[str, float] | None]) -> dict[str, float | int]:
    """Averages per-query metrics, skipping queries without relevant candidates.

    Args:
        per_query: Outputs of :func:`query_metrics`; ``None`` entries mark
            queries with no relevant candidate.

    Returns:
        The mean of every metric over the non-``None`` queries, plus
        ``"num_queries"`` (number of queries averaged over, i.e. excluding
        skipped ones) and ``"num_skipped"`` (number of ``None`` entries). If
        every query was skipped, only the two counts are returned.

    Raises:
        ValueError: If the per-query dicts do not all have the same keys.
    """
    rows: list[dict[str, float]] = []
    skipped = 0
    for m in per_query:
        if m is None:
            skipped += 1
        else:
            rows.append(m)
    out: dict[str, float | int] = {}
    if rows:
        keys = list(rows[0])
        for i, m in enumerate(rows):
            if set(m) != set(keys):
                raise ValueError(f"query {i} has metric keys {sorted(m)}, expected {sorted(keys)}")
        for key in keys:
            out[key] = float(np.mean(np.fromiter((m[key] for m in rows), dtype=np.float64, count=len(rows))))
    out["num_queries"] = len(rows)
    out["num_skipped"] = skipped
    return out


def rerank_metrics(
    scores_per_query: Sequence[ArrayLike1D],
    labels_per_query: Sequence[ArrayLike1D],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float | int]:
    """Computes mean metrics over many queries' candidate lists.

    Args:
        scores_per_query: One score sequence per query.
        labels_per_query: One label sequence per query, aligned with
            ``scores_per_query``.
        ks: Cutoffs for the ``@k`` metrics.

    Returns:
        ``aggregate(query_metrics(s, y, ks) for each query)``.

    Raises:
        ValueError: If the number of score and label lists differ, or on any
            per-query error.
    """
    if len(scores_per_query) != len(labels_per_query):
        raise ValueError(
            f"got {len(scores_per_query)} score lists but {len(labels_per_query)} label lists"
        )
    return aggregate(query_metrics(s, y, ks) for s, y in zip(scores_per_query, labels_per_query))
