"""SPLADE losses: a ranking loss on sparse dot products plus the FLOPS regulariser on queries and documents.

``FLOPS(W) = sum_t (mean_i W_it)^2`` over a batch of term-weight vectors ``W [N, V]`` (Paria et al.,
2020): the expected number of multiplications of a query-document dot product, relaxed to be
differentiable. It is weighted separately for queries and documents (``lambda_q``, ``lambda_d``) and
ramped up quadratically over the first ``warmup_steps`` optimizer steps, as in the SPLADE papers
(``lambda_t = lambda * min(1, t / N)^2``; the engine tells the loss the step through :meth:`set_step`).

Under several ranks the regulariser is computed on the batch gathered from every rank (all_gather
with gradients, :mod:`ragr.losses.gather`): the mean over the batch is the mean over the combined
batch, so the sparsity a run reaches does not depend on the number of processes (the FLOPS of a
per-rank mean is not the FLOPS of the global mean: it is a square of a mean).

* :class:`SpladeLoss` (``loss=splade``, contrastive objective): InfoNCE over the query's positive,
  its hard negatives and the other queries' documents.
* :class:`SpladeDistillLoss` (``loss=splade-distill``, ``ragr distill``): KL or margin-MSE against
  teacher scores of each query's candidates.

Both return the total ``loss`` and, for the logs, ``ranking`` (the ranking term), ``flops_query`` /
``flops_doc`` (the unweighted FLOPS terms), ``regularizer`` (what was added to the loss),
``flops_weight`` (the warm-up factor in [0, 1]) and ``active_dims_query`` / ``active_dims_doc`` (mean
nonzero terms per query / document of the gathered batch).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ragr.losses.gather import all_gather_with_grad


def flops(weights: torch.Tensor) -> torch.Tensor:
    """``sum_t (mean_i w_it)^2`` of ``weights [N, V]`` (fp32)."""
    return (weights.float().mean(0) ** 2).sum()


def active_dims(weights: torch.Tensor) -> torch.Tensor:
    """Mean number of nonzero terms per row of ``weights [N, V]`` (no gradient)."""
    return (weights.detach() != 0).sum(-1).float().mean()


class FlopsRegularizer(nn.Module):
    """``lambda_q * FLOPS(queries) + lambda_d * FLOPS(docs)`` on every rank's batch together, with a quadratic warm-up.

    Args:
        lambda_q / lambda_d: the full weights of the query and document terms.
        warmup_steps: optimizer steps of the quadratic ramp; None: a third of the run (as sentence-transformers'
            SPLADE scheduler); 0: full weight from the first step.
    """

    def __init__(self, lambda_q: float = 5e-4, lambda_d: float = 3e-4, warmup_steps: int | None = None) -> None:
        super().__init__()
        if lambda_q < 0 or lambda_d < 0:
            raise ValueError("lambda_q and lambda_d must be >= 0")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0 (or null: a third of the run)")
        self.lambda_q, self.lambda_d, self.warmup_steps = float(lambda_q), float(lambda_d), warmup_steps
        self.step, self.total = None, None

    def set_step(self, step: int, total: int | None = None) -> None:
        """The engine's optimizer step (0-based) and the run's total steps, before each step."""
        self.step, self.total = int(step), total

    def weight(self) -> float:
        """The warm-up factor ``min(1, t / N)^2``; 1 outside a training loop (no step set) or with ``N = 0``."""
        n = self.warmup_steps
        if n is None:
            n = max(1, (self.total or 0) // 3) if self.total else 0
        if self.step is None or n == 0:
            return 1.0
        return min(1.0, self.step / n) ** 2

    def forward(self, queries: torch.Tensor, docs: torch.Tensor) -> dict[str, torch.Tensor]:
        all_q, _ = all_gather_with_grad(queries)
        all_d, _ = all_gather_with_grad(docs)
        fq, fd = flops(all_q), flops(all_d)
        w = self.weight()
        reg = w * (self.lambda_q * fq + self.lambda_d * fd)
        return {"regularizer": reg, "flops_query": fq.detach(), "flops_doc": fd.detach(),
                "flops_weight": torch.tensor(w, device=reg.device),
                "active_dims_query": active_dims(all_q), "active_dims_doc": active_dims(all_d)}


def _parts(ranking: torch.Tensor, reg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": ranking + reg["regularizer"], "ranking": ranking.detach(), **{k: v.detach() for k, v in reg.items()}}


class SpladeLoss(nn.Module):
    """SPLADE training: InfoNCE on sparse dot products plus the FLOPS regulariser (see the module docstring).

    Documents come in groups of ``G = 1 + n`` (query ``i``'s positive is ``docs[i * G]``, its hard negatives
    follow); logits are ``q . d / temperature``.

    Args:
        temperature: softmax temperature of the dot products (1: sentence-transformers' SPLADE scale).
        in_batch_negatives: the other queries' documents are negatives too.
        lambda_q / lambda_d: FLOPS weights of queries and documents (SPLADE++ fine-tuning uses values
            around 1e-4..1e-2; larger gives sparser vectors; an inference-free query side usually takes 0).
        warmup_steps: quadratic ramp of the FLOPS weights (None: a third of the run).

    Inputs:
        queries ``[B, V]``, docs ``[B * G, V]`` term weights; ``false_negatives [B, B * G]`` (another positive
        of the query, removed from the softmax); text keys are accepted and unused (negatives stay local).

    Returns:
        ``{"loss", "ranking", "regularizer", "flops_query", "flops_doc", "flops_weight", "active_dims_query",
        "active_dims_doc"}``.

    References:
        Formal et al., "SPLADE v2", 2021; "From Distillation to Hard Negative Sampling: Making Sparse Neural
        IR Models More Effective" (SPLADE++), SIGIR 2022; Paria et al., "Minimizing FLOPs to Learn Efficient
        Sparse Representations", ICLR 2020.
    """

    objective: ClassVar[str] = "contrastive"
    consumes: ClassVar[tuple[str, ...]] = ("sparse",)
    targets: ClassVar[str] = "positives"

    def __init__(self, temperature: float = 1.0, in_batch_negatives: bool = True, lambda_q: float = 5e-4,
                 lambda_d: float = 3e-4, warmup_steps: int | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature, self.in_batch_negatives = float(temperature), in_batch_negatives
        self.flops = FlopsRegularizer(lambda_q, lambda_d, warmup_steps)

    def set_step(self, step: int, total: int | None = None) -> None:
        self.flops.set_step(step, total)

    def ranking(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None) -> torch.Tensor:
        q, d = queries.float(), docs.float()
        b = q.shape[0]
        g = d.shape[0] // b
        if self.in_batch_negatives:
            scores = q @ d.T / self.temperature
            if false_negatives is not None:
                scores = scores.masked_fill(false_negatives.to(scores.device), torch.finfo(scores.dtype).min)
            return F.cross_entropy(scores, torch.arange(b, device=scores.device) * g)
        own = torch.einsum("bv,bgv->bg", q, d.view(b, g, -1)) / self.temperature
        if false_negatives is not None:
            fn = false_negatives.to(own.device).view(b, b, g)[torch.arange(b), torch.arange(b)]
            own = own.masked_fill(fn, torch.finfo(own.dtype).min)
        return F.cross_entropy(own, torch.zeros(b, dtype=torch.long, device=own.device))

    def forward(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None,
                doc_keys: torch.Tensor | None = None, pos_keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return _parts(self.ranking(queries, docs, false_negatives), self.flops(queries, docs))


class SpladeDistillLoss(nn.Module):
    """SPLADE distillation: teacher scores of each query's candidates, plus the FLOPS regulariser.

    Args:
        objective: ``kl`` — ``KL(softmax(t / teacher_temperature) || softmax(s / temperature))`` per query over its
            candidates; ``margin-mse`` — ``((s_p - s_n) - (t_p - t_n))^2`` over every (positive, negative) pair of
            a query's candidates (positives: the candidates with the highest hard label of the group), the loss
            of SPLADE++ and sentence-transformers' SparseMarginMSELoss.
        temperature / teacher_temperature: the ``kl`` temperatures.
        lambda_q / lambda_d / warmup_steps: the FLOPS regulariser (see :class:`SpladeLoss`).

    Inputs (from the sparse grouped objective): ``scores [B, G]`` student dot products, ``teacher [B, G]``,
    ``labels [B, G]``, ``mask [B, G]`` (real candidates), and the term weights ``queries [B, V]`` and
    ``docs [M, V]`` the scores came from.
    """

    objective: ClassVar[str] = "grouped_sparse"
    consumes: ClassVar[tuple[str, ...]] = ("sparse",)
    targets: ClassVar[str] = "teacher"
    teacher_space: ClassVar[str] = "raw"

    def __init__(self, objective: Literal["kl", "margin-mse"] = "margin-mse", temperature: float = 1.0,
                 teacher_temperature: float = 1.0, lambda_q: float = 5e-4, lambda_d: float = 3e-4,
                 warmup_steps: int | None = None) -> None:
        super().__init__()
        if objective not in ("kl", "margin-mse"):
            raise ValueError(f"objective must be 'kl' or 'margin-mse', got {objective!r}")
        if temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.kind, self.temperature, self.teacher_temperature = objective, float(temperature), float(teacher_temperature)
        self.flops = FlopsRegularizer(lambda_q, lambda_d, warmup_steps)

    def set_step(self, step: int, total: int | None = None) -> None:
        self.flops.set_step(step, total)

    def ranking(self, scores: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
        from ragr.losses.distill import per_query_kl

        s, t, mask = scores.float(), teacher.float().to(scores.device), mask.bool().to(scores.device)
        if self.kind == "kl":
            return per_query_kl(s / self.temperature, t / self.teacher_temperature, mask)
        lab = (labels if labels is not None else t).float().to(s.device).masked_fill(~mask, float("-inf"))
        pos = mask & (lab == lab.amax(-1, keepdim=True))
        neg = mask & ~pos
        pairs = pos.unsqueeze(2) & neg.unsqueeze(1)  # [B, G, G]: (positive i, negative j)
        if not pairs.any():
            return s.sum() * 0.0
        diff = (s.unsqueeze(2) - s.unsqueeze(1)) - (t.unsqueeze(2) - t.unsqueeze(1))
        return (diff ** 2)[pairs].mean()

    def forward(self, scores: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, queries: torch.Tensor | None = None,
                docs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if queries is None or docs is None:
            raise ValueError("loss=splade-distill needs the term weights (queries, docs): train a splade model")
        mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
        return _parts(self.ranking(scores, teacher, labels, mask), self.flops(queries, docs))
