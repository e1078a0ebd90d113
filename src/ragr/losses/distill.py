"""Score distillation: a student learns a teacher's scores over each query's candidates.

Every loss takes ``scores [B, G]`` (the student's raw scores: reranker logits, or cosine / MaxSim for
a bi-encoder or ColBERT student), ``teacher [B, G]`` (the teacher's scores, see ``teacher_space``),
optional ``labels [B, G]`` (hard labels, for the mix with the hard-label loss) and an optional bool
``mask [B, G]`` (True = a real candidate; queries may have fewer candidates than ``G``), and returns
``{"loss", "distill"[, "hard"]}``.

The student's scores are divided by ``temperature`` first. ``None`` means the student's natural
scale, which the distillation task fills in: 1 for a reranker (logits), 0.02 for an embedder or
ColBERT student (cosine / MaxSim in [-1, 1]; RAG-Retrieval's embedding temperature). The KL losses'
``teacher_temperature: None`` is the teacher's natural scale in the same way (1 for scores from the data).

With ``hard_weight = w > 0`` the loss is ``(1 - w) * distill + w * hard``, where ``hard`` is the
listwise cross-entropy of the student's (tempered) scores against the hard labels normalized to sum 1
(one positive among negatives: plain softmax cross-entropy), or, for groups of one candidate,
binary cross-entropy on the label.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

#: the natural temperature of a model family's scores (see the module docstring); other families: 1
NATURAL_TEMPERATURE = {"embedder": 0.02, "colbert": 0.02}


def _full_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()


def _zero(scores: torch.Tensor) -> torch.Tensor:
    return scores.sum() * 0.0


def masked_log_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the True entries of each row (masked entries come out as 0)."""
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    return F.log_softmax(x, dim=-1).masked_fill(~mask, 0.0)


def per_query_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over queries (with at least 2 candidates) of ``KL(softmax(teacher) || softmax(student))``.

    Each softmax runs over one query's own candidates (its row, real entries only), never across
    the batch.
    """
    log_p = masked_log_softmax(teacher_logits, mask)
    log_q = masked_log_softmax(student_logits, mask)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~mask, 0.0).sum(-1)
    keep = mask.sum(-1) >= 2
    if not keep.any():
        return _zero(student_logits)
    return kl[keep].mean()


def hard_label_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Listwise cross-entropy against ``labels / sum(labels)`` per query (queries with no positive
    label skipped); binary cross-entropy on the label clipped to [0, 1] when every group has one candidate."""
    labels = labels.float()
    if scores.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(scores[:, 0], labels[:, 0].clamp(0.0, 1.0))
    pos = labels.clamp(min=0.0).masked_fill(~mask, 0.0)
    total = pos.sum(-1, keepdim=True)
    keep = total.squeeze(-1) > 0
    if not keep.any():
        return _zero(scores)
    target = pos / total.clamp(min=1e-12)
    per_query = -(target * masked_log_softmax(scores, mask)).sum(-1)
    return per_query[keep].mean()


class ScoreDistillLoss(nn.Module):
    """Base class of the score-distillation losses (``ragr distill`` accepts only these and ``stella``).

    Args:
        temperature: the student's scores are divided by this (None: the student's natural scale).
        hard_weight: weight ``w`` of the hard-label loss in ``(1 - w) * distill + w * hard``.
    """

    #: which teacher scores the task passes: ``raw`` (logits, cosines) or ``prob`` (in [0, 1])
    teacher_space: ClassVar[str] = "raw"
    objective: ClassVar[str] = "grouped"
    consumes: ClassVar[tuple[str, ...]] = ("pair_scores",)
    targets: ClassVar[str] = "teacher"

    def __init__(self, temperature: float | None = None, hard_weight: float = 0.0) -> None:
        super().__init__()
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0.0 <= hard_weight <= 1.0:
            raise ValueError("hard_weight must be in [0, 1]")
        self.temperature, self.hard_weight = temperature, float(hard_weight)

    def distill(self, scores: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, scores: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mask = _full_mask(scores, mask)
        s = scores.float() / self.temperature
        distill = self.distill(s, teacher.float().to(s.device), mask)
        if self.hard_weight == 0.0:
            return {"loss": distill, "distill": distill.detach()}
        if labels is None:
            raise ValueError("hard_weight > 0 needs hard labels")
        hard = hard_label_loss(s, labels.to(s.device), mask)
        loss = (1.0 - self.hard_weight) * distill + self.hard_weight * hard
        return {"loss": loss, "distill": distill.detach(), "hard": hard.detach()}


class KLDistillLoss(ScoreDistillLoss):
    """KL divergence between the teacher's and the student's softmax over each query's candidates.

    ``KL(softmax(t / teacher_temperature) || softmax(s / temperature))``, computed per query over
    that query's own candidates (never across the batch), averaged over queries with at least two
    candidates.

    Args:
        temperature: student temperature (None: the student's natural scale, see the module docstring).
        teacher_temperature: teacher temperature (None: the teacher's natural scale).
        hard_weight: weight of the hard-label loss.

    Inputs:
        scores: ``[B, G]`` student scores; teacher: ``[B, G]`` raw teacher scores (logits);
        labels: optional ``[B, G]``; mask: optional bool ``[B, G]``.

    Returns:
        ``{"loss", "distill"[, "hard"]}``.

    References:
        Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """

    def __init__(self, temperature: float | None = None, teacher_temperature: float | None = None,
                 hard_weight: float = 0.0) -> None:
        super().__init__(temperature, hard_weight)
        teacher_temperature = 1.0 if teacher_temperature is None else teacher_temperature
        if teacher_temperature <= 0:
            raise ValueError("teacher_temperature must be > 0")
        self.teacher_temperature = float(teacher_temperature)

    def distill(self, scores, teacher, mask):
        return per_query_kl(scores, teacher / self.teacher_temperature, mask)


class MSEDistillLoss(ScoreDistillLoss):
    """Mean squared error between student and teacher scores, over every real (query, candidate).

    Args:
        temperature: student temperature (None: the student's natural scale).
        space: ``raw`` — ``(s / temperature - t)^2`` on raw teacher scores (logit matching);
            ``prob`` — ``(sigmoid(s / temperature) - p)^2`` with the teacher's probability ``p``
            (RAG-Retrieval's ``point_mse`` on soft labels).
        hard_weight: weight of the hard-label loss.

    Inputs:
        scores: ``[B, G]``; teacher: ``[B, G]`` raw scores (``space=raw``) or probabilities
        (``space=prob``); labels, mask: optional ``[B, G]``.

    Returns:
        ``{"loss", "distill"[, "hard"]}``.
    """

    def __init__(self, temperature: float | None = None, space: Literal["raw", "prob"] = "raw",
                 hard_weight: float = 0.0) -> None:
        super().__init__(temperature, hard_weight)
        if space not in ("raw", "prob"):
            raise ValueError(f"space must be 'raw' or 'prob', got {space!r}")
        self.space = space

    @property
    def teacher_space(self) -> str:  # type: ignore[override]
        return self.space

    def distill(self, scores, teacher, mask):
        pred = torch.sigmoid(scores) if self.space == "prob" else scores
        return ((pred - teacher) ** 2)[mask].mean()


class BCEDistillLoss(ScoreDistillLoss):
    """Binary cross-entropy of the student's logit against the teacher's probability (a soft label).

    ``-(p log sigmoid(s / temperature) + (1 - p) log(1 - sigmoid(s / temperature)))`` averaged over
    every real (query, candidate); ``p`` in [0, 1] (for an LLM teacher, the probability of "yes").

    Args:
        temperature: student temperature (None: the student's natural scale).
        hard_weight: weight of the hard-label loss.

    Inputs:
        scores: ``[B, G]``; teacher: ``[B, G]`` probabilities; labels, mask: optional ``[B, G]``.

    Returns:
        ``{"loss", "distill"[, "hard"]}``.

    References:
        RAG-Retrieval (NLPJCL), ``rag_retrieval/train/reranker`` ``point_ce`` on LLM-scored data.
    """

    teacher_space = "prob"

    def distill(self, scores, teacher, mask):
        return F.binary_cross_entropy_with_logits(scores[mask], teacher[mask])


class LLMPreferenceLoss(KLDistillLoss):
    """LLM-preference tuning of a retriever: KL between the softmax of given scores (an LLM's
    preference for each passage) and the retriever's softmax over the same passages, per query.

    ``KL(softmax(scores / teacher_temperature) || softmax(sim(q, p) / temperature))`` over one
    query's passages, averaged over queries. RAG-Retrieval's ``pair_kl_loss`` takes both softmaxes
    over the flattened batch of (query, passage) pairs, which mixes queries; here each query is its
    own distribution.

    Args:
        temperature: retriever temperature (RAG-Retrieval: 0.02).
        teacher_temperature: temperature of the given scores (RAG-Retrieval uses the same 0.02).
        hard_weight: weight of the hard-label loss (0: pure preference tuning).

    Inputs:
        scores: ``[B, G]`` retriever similarities; teacher: ``[B, G]`` given scores; mask: bool
        ``[B, G]`` (queries have different numbers of passages).

    References:
        RAG-Retrieval (NLPJCL), ``rag_retrieval/train/embedding/model.py`` (``pair_kl_loss``);
        Shi et al., "REPLUG: Retrieval-Augmented Black-Box Language Models", 2023.
    """

    def __init__(self, temperature: float | None = 0.02, teacher_temperature: float = 0.02,
                 hard_weight: float = 0.0) -> None:
        super().__init__(temperature, teacher_temperature, hard_weight)
