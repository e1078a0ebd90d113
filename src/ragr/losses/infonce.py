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

    def score_loss(self, scores: torch.Tensor, false_negatives: torch.Tensor | None = None, in_batch: bool | None = None):
        """InfoNCE from a similarity matrix ``scores [B, B * G]`` (query i's positive at column ``i * G``).

        Families that score with something other than a dot product (ColBERT's MaxSim) call this.
        Without in-batch negatives only each query's own group of ``G`` columns is used.
        """
        in_batch = self.in_batch_negatives if in_batch is None else in_batch
        b = scores.shape[0]
        g = scores.shape[1] // b
        scores = scores.float() / self.temperature
        if false_negatives is not None:
            scores = scores.masked_fill(false_negatives, torch.finfo(scores.dtype).min)
        if in_batch:
            target = torch.arange(b, device=scores.device) * g
            return {"loss": F.cross_entropy(scores, target)}
        own = scores.view(b, b, g)[torch.arange(b), torch.arange(b)]
        return {"loss": F.cross_entropy(own, torch.zeros(b, dtype=torch.long, device=scores.device))}

    def forward(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None):
        if self.in_batch_negatives:
            return self.score_loss(queries @ docs.T, false_negatives)
        b = queries.shape[0]
        g = docs.shape[0] // b
        own = torch.einsum("bd,bgd->bg", queries, docs.view(b, g, -1))
        scores = own.new_full((b, b, g), torch.finfo(own.dtype).min)  # only the diagonal blocks are read
        scores[torch.arange(b), torch.arange(b)] = own
        return self.score_loss(scores.view(b, b * g), false_negatives)
