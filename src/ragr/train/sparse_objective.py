"""The grouped-scores objective for sparse losses (``loss=splade-distill``): teacher scores of each query's
candidates, plus the term weights the student's scores came from (the FLOPS regulariser needs them).

:class:`SparseGroupedScores` is :class:`ragr.train.objectives.GroupedScores` (the same teacher labelling, cache,
datasets and agreement) with one step changed: the family encodes each query once and each candidate once
(``encode``), scores the pairs by dot product, and hands the loss the scores *and* the vectors. Registered in
:data:`ragr.train.objectives.OBJECTIVES` as ``grouped_sparse``.
"""

from __future__ import annotations

import torch

from ragr.train.objectives import GroupedScores


class SparseGroupedScores(GroupedScores):
    """Teacher-score distillation of a sparse (SPLADE) student, FLOPS-regularised."""

    name = "grouped_sparse"

    def compute_loss(self, fwd, loss_fn, batch):
        family = self.job.family
        q = family.encode(fwd, batch["queries"], is_query=True)   # [B, V]
        d = family.encode(fwd, batch["docs"], is_query=False)     # [M, V], the groups' candidates
        pair = family.pair_similarity(fwd.model, q, d, batch["pair_query_index"].to(fwd.device)).float()
        mask = batch["mask"].to(fwd.device)
        scores = torch.zeros(mask.numel(), device=fwd.device, dtype=pair.dtype)
        scores = scores.index_put((batch["flat"].to(fwd.device),), pair).view(mask.shape)
        teacher = batch["teacher_raw"].to(fwd.device)
        return loss_fn(scores, teacher, batch["labels"].to(fwd.device), mask, queries=q.float(), docs=d.float())
