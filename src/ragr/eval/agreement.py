"""Agreement of a student's scores with its teacher's: per-query Spearman and top-1 agreement."""

from __future__ import annotations

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (None when either side is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(student: list[list[float]], teacher: list[list[float]]) -> dict[str, float]:
    """Mean per-query Spearman and top-1 agreement of student vs teacher scores (queries with >= 2 candidates)."""
    rhos, top1 = [], []
    for s, t in zip(student, teacher):
        if len(s) < 2:
            continue
        rho = spearman(s, t)
        if rho is not None:
            rhos.append(rho)
        top1.append(float(np.argmax(s) == np.argmax(t)))
    out = {"agreement_queries": float(len(top1))}
    if rhos:
        out["teacher_spearman"] = float(np.mean(rhos))
    if top1:
        out["teacher_top1"] = float(np.mean(top1))
    return out
