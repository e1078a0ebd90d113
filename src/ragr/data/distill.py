"""Distillation data: each record's candidates with their teacher scores, grouped per query.

Records are pair / triplet / scored (embedder keys) or pointwise / grouped (reranker keys); the
teacher's scores of every candidate live in a flat :class:`TeacherScores` (from a teacher model,
see :mod:`ragr.train.teacher`, or from the data itself).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

def prompted(rec: dict[str, Any]) -> str:
    return (rec.get("prompt") or rec.get("prompt_for_query") or "") + rec["query"]


def detect_distill_format(path, columns=None) -> str:
    """``grouped`` / ``pointwise`` when the file has ``hits`` / ``content`` lines, else pair / triplet / scored."""
    from ragr.data.formats import detect_format, training_source
    from ragr.data.rerank import detect_rerank_format

    src = training_source(path, columns)
    for _, obj in src.records():
        if "hits" in obj or "content" in obj:
            return detect_rerank_format(src)
    return detect_format(src)


def load_distill_file(path, fmt: str, label_key: str, num_negatives: int, columns=None):
    """Validate every record (any :mod:`ragr.data.sources` source); return ``(index, format)``."""
    from ragr.data.formats import load_training_file, training_source
    from ragr.data.rerank import load_rerank_training_file

    src = training_source(path, columns)
    if fmt == "auto":
        fmt = detect_distill_format(src)
    if fmt in ("pointwise", "grouped"):
        return load_rerank_training_file(src, fmt, label_key, num_negatives)
    return load_training_file(src, fmt)


def candidates(rec: dict[str, Any], fmt: str, label_key: str) -> tuple[list[str], list[float], list[float] | None]:
    """A record's candidate texts (in its own order), hard labels, and the scores it carries (or None)."""
    if fmt == "pointwise":
        return [rec["content"]], [float(rec[label_key])], [float(rec[label_key])]
    if fmt == "grouped":
        labels = [float(h[label_key]) for h in rec["hits"]]
        return [h["content"] for h in rec["hits"]], labels, labels
    pos, neg = rec["pos"], rec.get("neg") or []
    scores = None
    if "pos_scores" in rec:
        scores = [float(s) for s in rec["pos_scores"]] + [float(s) for s in rec.get("neg_scores") or []]
    elif "scores" in rec:
        scores = [float(s) for s in rec["scores"]]
    if scores is not None and len(scores) != len(pos) + len(neg):
        scores = None  # "scores" cover the positives only: not a score for every candidate
    return pos + neg, [1.0] * len(pos) + [0.0] * len(neg), scores


class TeacherScores:
    """Flat per-candidate teacher scores of a file: record ``i`` owns ``raw[offsets[i]:offsets[i + 1]]``.

    ``raw`` are the teacher's raw scores (logit, yes-minus-no logit, cosine, MaxSim, or the data's
    values); ``prob`` their [0, 1] form (the scorer's normalization: sigmoid of a logit — for an LLM
    "yes" teacher, P(yes) over {yes, no} — or (cosine + 1) / 2; the data's values as they are).
    """

    def __init__(self, raw: np.ndarray, prob: np.ndarray, offsets: np.ndarray) -> None:
        self.raw, self.prob, self.offsets = raw, prob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.raw[a:b], self.prob[a:b]


class DistillDataset:
    """Groups of a query's candidates with their teacher scores, re-sampled every epoch.

    Item ``i`` of epoch ``e`` (RNG seeded by ``(seed, e, i)``): one candidate with the record's
    highest hard label (a positive) first, then up to ``group_size - 1`` of its other candidates drawn
    without replacement (queries with fewer keep all; the collator masks the rest). Pointwise data:
    the one candidate.
    """

    def __init__(self, index, fmt: str, label_key: str, scores: TeacherScores, group_size: int, seed: int = 0) -> None:
        self.index, self.fmt, self.label_key, self.scores = index, fmt, label_key, scores
        self.group_size, self.seed, self.epoch = max(1, group_size), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.index[i]
        texts, labels, _ = candidates(rec, self.fmt, self.label_key)
        raw, prob = self.scores.of(i)
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        top = max(labels)
        first = rng.choice([k for k, y in enumerate(labels) if y == top])
        rest = [k for k in range(len(texts)) if k != first]
        pick = [first] + rng.sample(rest, min(len(rest), self.group_size - 1))
        return {"query": prompted(rec), "docs": [texts[k] for k in pick], "labels": [labels[k] for k in pick],
                "teacher_raw": [float(raw[k]) for k in pick], "teacher_prob": [float(prob[k]) for k in pick]}


def collate_groups(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Ragged groups -> flat pairs plus ``[B, G]`` tensors (``mask`` marks real candidates; ``flat`` maps pairs into ``B * G``)."""
    b, g = len(examples), max(len(e["docs"]) for e in examples)
    mask = torch.zeros(b, g, dtype=torch.bool)
    out = {k: torch.zeros(b, g) for k in ("labels", "teacher_raw", "teacher_prob")}
    pair_queries, docs, flat, pair_query_index = [], [], [], []
    for i, e in enumerate(examples):
        n = len(e["docs"])
        mask[i, :n] = True
        for k in out:
            out[k][i, :n] = torch.tensor(e[k], dtype=torch.float32)
        pair_queries += [e["query"]] * n
        pair_query_index += [i] * n
        docs += e["docs"]
        flat += [i * g + k for k in range(n)]
    return {"queries": [e["query"] for e in examples], "pair_queries": pair_queries, "docs": docs,
            "pair_query_index": torch.tensor(pair_query_index), "flat": torch.tensor(flat), "mask": mask, **out}
