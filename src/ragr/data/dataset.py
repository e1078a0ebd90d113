"""Per-epoch sampling of training examples and their collation into a batch."""

from __future__ import annotations

import random
from typing import Any

import torch

from ragr.data.formats import _norm
from ragr.data.jsonl import JsonlIndex
from ragr.losses.gather import text_key


class EpochDataset:
    """A map-style dataset over a JSONL index whose items are re-sampled per epoch by ``rng(i)``.

    ``rng(i)`` is seeded by ``(seed, epoch, i)``: identical on every rank and after a resume.
    """

    def __init__(self, index: JsonlIndex, seed: int = 0) -> None:
        self.index, self.seed = index, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{i}")


class ContrastiveDataset(EpochDataset):
    """Map-style dataset over a validated JSONL index.

    Item ``i`` in epoch ``e`` draws one positive and ``num_negatives`` hard negatives with an RNG
    seeded by ``(seed, e, i)``: negatives are re-sampled every epoch, identically on every rank and
    after a resume. A query's positives are never drawn as its negatives.
    """

    def __init__(self, index: JsonlIndex, num_negatives: int, seed: int = 0, use_negatives: bool = True) -> None:
        super().__init__(index, seed)
        self.num_negatives, self.use_negatives = num_negatives, use_negatives

    @property
    def group_size(self) -> int:
        return 1 + (self.num_negatives if self.use_negatives else 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.index[i]
        rng = self.rng(i)
        query = (rec.get("prompt") or "") + rec["query"]
        positives = rec["pos"]
        pos_set = {_norm(p) for p in positives}
        docs = [rng.choice(positives)]
        if self.use_negatives and self.num_negatives > 0:
            negs = [n for n in rec.get("neg") or [] if _norm(n) not in pos_set]
            if not negs:
                raise ValueError(f"{self.index.path}:{self.index.linenos[i]}: no usable negative")
            if len(negs) >= self.num_negatives:
                docs += rng.sample(negs, self.num_negatives)
            else:
                docs += rng.choices(negs, k=self.num_negatives)
        return {"query": query, "docs": docs, "pos_set": pos_set}


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Texts of a batch plus the false-negative mask.

    ``false_negatives[i, j]`` is True when document ``j`` (flattened over groups) has the same text
    as one of query ``i``'s positives but is not query ``i``'s target: it is removed from the softmax
    rather than pushed away.
    ``doc_keys [B*G]`` and ``pos_keys [B, P]`` (-1 padded) are 63-bit keys of the same normalized texts,
    so a loss that gathers documents from other ranks can build the same mask there.
    """
    queries = [e["query"] for e in examples]
    docs = [d for e in examples for d in e["docs"]]
    g = len(examples[0]["docs"])
    normed = [_norm(d) for d in docs]
    mask = torch.zeros(len(examples), len(docs), dtype=torch.bool)
    for i, e in enumerate(examples):
        for j, t in enumerate(normed):
            if j != i * g and t in e["pos_set"]:
                mask[i, j] = True
    # text keys: the same mask across ranks when in-batch negatives are gathered (ragr.losses.gather)
    doc_keys = torch.tensor([text_key(t) for t in normed], dtype=torch.long)
    width = max(len(e["pos_set"]) for e in examples)
    pos_keys = torch.full((len(examples), width), -1, dtype=torch.long)
    for i, e in enumerate(examples):
        for k, t in enumerate(sorted(e["pos_set"])):
            pos_keys[i, k] = text_key(t)
    return {"queries": queries, "docs": docs, "false_negatives": mask, "doc_keys": doc_keys, "pos_keys": pos_keys}
