"""Matryoshka representation learning: one loss averaged over prefix dimensions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MatryoshkaLoss(nn.Module):
    """Apply ``inner`` to the first ``d`` dimensions of the embeddings, for every ``d`` in ``dims``.

    Each prefix is re-normalized (L2) before the inner loss; the result is the weighted mean
    ``sum_i w_i * L_i / sum_i w_i`` and each ``loss@d`` is reported as a part.

    Args:
        inner: the wrapped loss (for example :class:`~ragr.losses.infonce.InfoNCE`).
        dims: prefix sizes. Sizes above the model's width are dropped with a warning.
        weights: one weight per kept dim (default: all 1).
        embed_dim: the model's embedding width (filled in by the builder).

    Inputs:
        Same as the inner loss: ``queries [B, D]``, ``docs [B * G, D]``, optional ``false_negatives``.

    References:
        Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.
    """

    runtime_args = ("embed_dim",)

    objective = "contrastive"
    consumes = ("vectors",)
    targets = "positives"

    def __init__(
        self,
        inner: nn.Module,
        dims: Sequence[int] = (64, 128, 256),
        weights: Sequence[float] | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"loss.weights has {len(weights)} values for {len(dims)} dims")
        weights = [float(w) for w in weights] if weights is not None else [1.0] * len(dims)
        if embed_dim is not None:
            dropped = [d for d in dims if d > embed_dim]
            if dropped:
                warnings.warn(f"MRL dims {dropped} exceed the embedding width {embed_dim}; dropped", stacklevel=2)
            kept = [(d, w) for d, w in zip(dims, weights) if d <= embed_dim]
            dims, weights = [d for d, _ in kept], [w for _, w in kept]
        if not dims:
            raise ValueError("MRL needs at least one dimension no larger than the embedding width")
        self.inner, self.dims, self.weights = inner, dims, weights

    def forward(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None,
                **keys: torch.Tensor | None):
        parts: dict[str, torch.Tensor] = {}
        total = queries.new_zeros((), dtype=torch.float32)
        for d, w in zip(self.dims, self.weights):
            q = F.normalize(queries[:, :d], dim=-1)
            p = F.normalize(docs[:, :d], dim=-1)
            loss = self.inner(q, p, false_negatives, **keys)["loss"]
            parts[f"loss@{d}"] = loss.detach()
            total = total + w * loss
        return {"loss": total / sum(self.weights), **parts}
