"""Reranker losses over groups of scored candidates: pointwise, pairwise (RankNet), listwise.

Every loss takes ``scores [B, G]`` (raw logits of the reranker for ``B`` queries with ``G``
candidates each) and ``labels [B, G]`` (graded relevance; triplet data gives 1 for the positive and
0 for negatives) and returns ``{"loss": scalar}``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class RerankLoss(nn.Module):
    """Base class of the reranker losses: scores ``[B, G]`` of each query's group against hard labels."""

    #: the training objective that feeds this loss, what it consumes, and where its targets come from
    objective = "grouped"
    consumes = ("pair_scores",)
    targets = "labels"

    def __call__(self, *args, **kwargs):
        if len(args) + len(kwargs) != 2:  # called by another family's task (embeddings, masks ...)
            from ragr.errors import UserError

            raise UserError(f"loss '{type(self).__name__}' scores reranker groups; train a reranker with it "
                            "(task=reranker, or model=cross-encoder / minilm-reranker / llm-reranker ...)")
        return super().__call__(*args, **kwargs)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class PointwiseLoss(RerankLoss):
    """Each (query, document) scored on its own against its label scaled to [0, 1].

    Args:
        label_max: labels are divided by this and clipped to [0, 1] (graded labels 0..4: 4).
        mode: ``bce`` — binary cross-entropy with logits on the scaled label (RAG-Retrieval's
            ``point_ce``); ``mse_sigmoid`` — mean squared error between sigmoid(score) and the
            scaled label (``point_mse``).

    Inputs:
        scores: ``[B, G]`` logits.
        labels: ``[B, G]`` labels.

    Returns:
        ``{"loss": mean over all B * G pairs}``.

    References:
        RAG-Retrieval (NLPJCL), ``rag_retrieval/train/reranker/modeling.py`` (point_ce / point_mse).
    """

    def __init__(self, label_max: float = 1.0, mode: Literal["bce", "mse_sigmoid"] = "bce") -> None:
        super().__init__()
        if label_max <= 0:
            raise ValueError("label_max must be > 0")
        if mode not in ("bce", "mse_sigmoid"):
            raise ValueError(f"mode must be 'bce' or 'mse_sigmoid', got {mode!r}")
        self.label_max, self.mode = float(label_max), mode

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = scores.float()
        target = (labels.float() / self.label_max).clamp(0.0, 1.0)
        if self.mode == "bce":
            return {"loss": F.binary_cross_entropy_with_logits(scores, target)}
        return {"loss": F.mse_loss(torch.sigmoid(scores), target)}


class PairwiseLoss(RerankLoss):
    """RankNet: for every pair (i, j) of one group with ``label_i > label_j``, the logistic loss
    ``log(1 + exp(-sigma * (s_i - s_j)))``, weighted by the label gap.

    Args:
        sigma: scale of the score difference.
        weighting: ``gap`` weighs a pair by ``label_i - label_j``; ``none`` weighs every pair 1.

    Inputs:
        scores: ``[B, G]`` logits.
        labels: ``[B, G]`` graded labels; pairs with equal labels are ignored.

    Returns:
        ``{"loss": sum(w_ij * l_ij) / sum(w_ij)}`` over all ordered pairs of the batch (0 when no
        group has two different labels).

    References:
        Burges et al., "Learning to Rank using Gradient Descent", ICML 2005.
    """

    def __init__(self, sigma: float = 1.0, weighting: Literal["gap", "none"] = "gap") -> None:
        super().__init__()
        if weighting not in ("gap", "none"):
            raise ValueError(f"weighting must be 'gap' or 'none', got {weighting!r}")
        self.sigma, self.weighting = float(sigma), weighting

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        scores, labels = scores.float(), labels.float()
        diff = scores.unsqueeze(2) - scores.unsqueeze(1)           # [B, G, G]: s_i - s_j
        gap = labels.unsqueeze(2) - labels.unsqueeze(1)            # y_i - y_j
        weight = gap.clamp(min=0.0) if self.weighting == "gap" else (gap > 0).float()
        pair_loss = F.softplus(-self.sigma * diff)
        total = weight.sum()
        if total <= 0:
            return {"loss": scores.sum() * 0.0}
        return {"loss": (weight * pair_loss).sum() / total}


class ListwiseLoss(RerankLoss):
    """Cross-entropy between the softmax of a group's scores and a target distribution.

    The target is the labels normalized to sum 1 (one positive + n negatives: a one-hot target,
    plain softmax cross-entropy), or, with ``label_temperature``, ``softmax(labels / label_temperature)``
    for graded labels. Groups whose labels are all zero (normalized target) are skipped.

    Args:
        temperature: scores are divided by this before the softmax.
        label_temperature: None: target = labels / sum(labels); a float: target = softmax(labels / t).
        activation: ``none`` — the softmax takes the raw logits; ``sigmoid`` — it takes ``sigmoid(logit)``
            (with ``temperature=0.1``: sentence-transformers' cross-encoder ``MultipleNegativesRankingLoss``,
            ``sigmoid(logit) * 10``), a bounded score whose gradient fades once a candidate is clearly placed.
        in_batch_negatives: besides its own group, each query's softmax also covers this many documents drawn
            from the other groups of the batch (label 0), as sentence-transformers' MNRL does (its default: 4).
            The objective adds them when it forms the pairs (:mod:`ragr.train.objectives`).

    Inputs:
        scores: ``[B, G]`` logits.
        labels: ``[B, G]`` labels (negative labels count as 0 in the normalized target).

    Returns:
        ``{"loss": mean over groups of -sum(target * log_softmax(scores / temperature))}``.

    References:
        Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet), ICML 2007.
    """

    def __init__(self, temperature: float = 1.0, label_temperature: float | None = None,
                 activation: Literal["none", "sigmoid"] = "none", in_batch_negatives: int = 0) -> None:
        super().__init__()
        if temperature <= 0 or (label_temperature is not None and label_temperature <= 0):
            raise ValueError("temperatures must be > 0")
        if activation not in ("none", "sigmoid"):
            raise ValueError(f"activation must be 'none' or 'sigmoid', got {activation!r}")
        if in_batch_negatives < 0:
            raise ValueError("in_batch_negatives must be >= 0")
        self.temperature, self.label_temperature = float(temperature), label_temperature
        self.activation, self.in_batch_negatives = activation, int(in_batch_negatives)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = scores.float()
        if self.activation == "sigmoid":
            scores = torch.sigmoid(scores)
        logp = F.log_softmax(scores / self.temperature, dim=-1)
        labels = labels.float()
        if self.label_temperature is not None:
            target = F.softmax(labels / self.label_temperature, dim=-1)
            keep = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        else:
            pos = labels.clamp(min=0.0)
            total = pos.sum(-1, keepdim=True)
            keep = total.squeeze(-1) > 0
            target = pos / total.clamp(min=1e-12)
        if not keep.any():
            return {"loss": scores.sum() * 0.0}
        per_group = -(target * logp).sum(-1)
        return {"loss": per_group[keep].mean()}
