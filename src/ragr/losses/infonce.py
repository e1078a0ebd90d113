"""InfoNCE over a query's positive, its hard negatives and the other queries' documents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCE(nn.Module):
    """Contrastive (InfoNCE) loss for bi-encoders.

    Documents come in groups of ``G = 1 + n``: query ``i``'s positive is ``docs[i * G]`` and its hard
    negatives follow it. Logits are ``q . d / temperature``; with ``in_batch_negatives`` every document in
    the batch is a candidate for every query, otherwise only the query's own group.

    Args:
        temperature: softmax temperature tau (RAG-Retrieval's default 0.02).
        in_batch_negatives: use the other queries' documents as extra negatives.

    Inputs:
        queries: ``[B, D]`` query embeddings (normalized by the model when it normalizes).
        docs: ``[B * G, D]`` document embeddings.
        false_negatives: optional bool ``[B, B * G]``; True marks a document that is another positive
            of the query (same text), which is removed from the softmax instead of counting as negative.

    Returns:
        ``{"loss": mean cross-entropy}``.

    References:
        van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    """

    def __init__(self, temperature: float = 0.02, in_batch_negatives: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives

    def logits(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None):
        """Return (logits, target index per query)."""
        b = queries.shape[0]
        g = docs.shape[0] // b
        if self.in_batch_negatives:
            logits = queries @ docs.T / self.temperature
            if false_negatives is not None:
                logits = logits.masked_fill(false_negatives, torch.finfo(logits.dtype).min)
            target = torch.arange(b, device=queries.device) * g
        else:
            grouped = docs.view(b, g, -1)
            logits = torch.einsum("bd,bgd->bg", queries, grouped) / self.temperature
            if false_negatives is not None:
                own = false_negatives.view(b, b, g)[torch.arange(b), torch.arange(b)]
                logits = logits.masked_fill(own, torch.finfo(logits.dtype).min)
            target = torch.zeros(b, dtype=torch.long, device=queries.device)
        return logits, target

    def forward(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None):
        logits, target = self.logits(queries, docs, false_negatives)
        return {"loss": F.cross_entropy(logits.float(), target)}
