"""bge-m3's unified loss (Chen et al., "BGE M3-Embedding: ... Through Self-Knowledge Distillation", 2024).

From the dense, sparse and ColBERT score matrices of a batch (``[B, B * G]``, query ``i``'s positive at column
``i * G``), each divided by ``temperature``:

* ``s_e = s_dense + ensemble_sparse_weight * s_sparse + s_colbert`` (the ensemble; FlagEmbedding: 0.3);
* ``L = (w_d * CE(s_dense) + w_e * CE(s_e) + w_s * CE(s_sparse) + w_c * CE(s_colbert)) / 4``
  (FlagEmbedding: 1, 1, 0.1, 1), each an InfoNCE cross-entropy over the query's candidates;
* self-distillation (``self_distill=true``, from step ``self_distill_start_step``): with ``p = softmax(s_e)``
  (no gradient), ``L_kd = (w_d * H(p, s_dense) + w_s * H(p, s_sparse) + w_c * H(p, s_colbert)) / 3`` where
  ``H(p, s) = -sum p log softmax(s)`` (soft-label cross-entropy, FlagEmbedding's ``kl_div``), and the loss is
  ``(L + L_kd) / 2``.

Returns ``loss`` and the parts (``dense``, ``sparse``, ``colbert``, ``ensemble``, ``self_distill``) for the logs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

#: masked logits (false negatives, other queries' groups) after the temperature: finite, so p * log q stays 0
MASKED = -1.0e9


class M3Loss(nn.Module):
    """Unified dense + sparse + ColBERT (+ ensemble, + self-distillation) InfoNCE for the ``bge_m3`` family.

    Args:
        temperature: of every score matrix (FlagEmbedding's bge-m3 recipe: 0.02).
        in_batch_negatives: the other queries' documents are negatives too.
        dense_weight / sparse_weight / colbert_weight / ensemble_weight: the parts' weights (1, 0.1, 1, 1).
        ensemble_sparse_weight: the sparse score's weight inside the ensemble score (0.3).
        self_distill: add the self-distillation term from the ensemble's distribution.
        self_distill_start_step: optimizer steps before self-distillation starts (the engine tells the step).
    """

    objective: ClassVar[str] = "contrastive"
    consumes: ClassVar[tuple[str, ...]] = ("unified",)
    targets: ClassVar[str] = "positives"

    def __init__(self, temperature: float = 0.02, in_batch_negatives: bool = True, dense_weight: float = 1.0,
                 sparse_weight: float = 0.1, colbert_weight: float = 1.0, ensemble_weight: float = 1.0,
                 ensemble_sparse_weight: float = 0.3, self_distill: bool = False, self_distill_start_step: int = 0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature, self.in_batch_negatives = float(temperature), in_batch_negatives
        self.weights = {"dense": float(dense_weight), "sparse": float(sparse_weight), "colbert": float(colbert_weight)}
        self.ensemble_weight, self.ensemble_sparse_weight = float(ensemble_weight), float(ensemble_sparse_weight)
        self.self_distill, self.self_distill_start_step = self_distill, int(self_distill_start_step)
        self.step: int | None = None

    def set_step(self, step: int, total: int | None = None) -> None:
        self.step = int(step)

    def _logits(self, scores: torch.Tensor, false_negatives: torch.Tensor | None) -> torch.Tensor:
        s = scores.float()
        invalid = s <= torch.finfo(torch.float32).min / 2  # the family's "not a candidate" fill
        if false_negatives is not None:
            invalid = invalid | false_negatives.to(s.device)
        return (s / self.temperature).masked_fill(invalid, MASKED)

    def score_loss(self, scores: dict[str, torch.Tensor], false_negatives: torch.Tensor | None = None):
        """The unified loss from the family's ``{"dense", "sparse", "colbert"}`` matrices ``[B, B * G]``."""
        if not isinstance(scores, dict):
            raise TypeError("loss=m3 takes the bge_m3 family's three score matrices; train model=bge-m3")
        s = {k: self._logits(scores[k], false_negatives) for k in ("dense", "sparse", "colbert")}
        b = s["dense"].shape[0]
        g = s["dense"].shape[1] // b
        target = torch.arange(b, device=s["dense"].device) * g
        ensemble = s["dense"] + self.ensemble_sparse_weight * s["sparse"] + s["colbert"]
        ensemble = ensemble.masked_fill(s["dense"] <= MASKED / 2, MASKED)
        parts = {k: F.cross_entropy(v, target) for k, v in s.items()}
        parts["ensemble"] = F.cross_entropy(ensemble, target)
        loss = (sum(self.weights[k] * parts[k] for k in self.weights) + self.ensemble_weight * parts["ensemble"]) / 4
        kd = loss.new_zeros(())
        if self.self_distill and (self.step is None or self.step >= self.self_distill_start_step):
            p = torch.softmax(ensemble.detach(), dim=-1)
            kd = sum(self.weights[k] * -(p * F.log_softmax(s[k], dim=-1)).sum(-1).mean() for k in self.weights) / 3
            loss = (loss + kd) / 2
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}, "self_distill": kd.detach()}

    def forward(self, *args, **kwargs):
        raise TypeError("loss=m3 scores with the bge_m3 family (score_loss); it does not take plain vectors")
