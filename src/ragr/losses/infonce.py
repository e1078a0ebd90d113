"""InfoNCE over a query's positive, its hard negatives and the other queries' documents."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ragr.losses.gather import all_gather_no_grad, all_gather_with_grad, is_distributed


class InfoNCE(nn.Module):
    """Contrastive (InfoNCE) loss for bi-encoders.

    Documents come in groups of ``G = 1 + n``: query ``i``'s positive is ``docs[i * G]`` and its hard
    negatives follow it. Logits are ``q . d / temperature``; with ``in_batch_negatives`` every document in
    the batch is a candidate for every query, otherwise only the query's own group.

    Args:
        temperature: softmax temperature tau (0.05 = sentence-transformers scale 20; RAG-Retrieval used 0.02).
        in_batch_negatives: use the other queries' documents as extra negatives.
        gather_across_ranks: in a multi-process run, every rank's documents are candidates for every
            query (all_gather with gradients to each rank's encoder; the target column of query ``i`` on
            rank ``r`` is ``offset_r + i * G``). A document with the text of one of the query's positives
            is masked on every rank, using the text keys the collator makes (see
            :mod:`ragr.losses.gather`). With DDP the gradients equal one process holding all ranks' batches.

    Inputs:
        queries: ``[B, D]`` query embeddings (normalized by the model when it normalizes).
        docs: ``[B * G, D]`` document embeddings.
        false_negatives: optional bool ``[B, B * G]``; True marks a document that is another positive
            of the query (same text), which is removed from the softmax instead of counting as negative.
        doc_keys / pos_keys: optional text keys (``[B * G]`` and ``[B, P]`` padded with -1) for the
            cross-rank mask (the collator makes them; the contrastive objective passes them on).

    Returns:
        ``{"loss": mean cross-entropy}``.

    References:
        van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    """

    objective = "contrastive"
    consumes = ("vectors", "multivectors")
    targets = "positives"

    def __init__(self, temperature: float = 0.05, in_batch_negatives: bool = True,
                 gather_across_ranks: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if gather_across_ranks and not in_batch_negatives:
            raise ValueError("loss.gather_across_ranks=true needs loss.in_batch_negatives=true")
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.gather_across_ranks = gather_across_ranks

    def score_loss(self, scores: torch.Tensor, false_negatives: torch.Tensor | None = None, in_batch: bool | None = None):
        """InfoNCE from a similarity matrix ``scores [B, B * G]`` (query i's positive at column ``i * G``).

        Families that score with something other than a dot product (ColBERT's MaxSim) call this.
        Without in-batch negatives only each query's own group of ``G`` columns is used.
        """
        if self.gather_across_ranks and is_distributed():
            from ragr.errors import UserError

            raise UserError("loss.gather_across_ranks=true needs dot-product embeddings (model family embedder); "
                            "this model scores pairs itself, so negatives stay on each rank")
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

    def forward(self, queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None,
                doc_keys: torch.Tensor | None = None, pos_keys: torch.Tensor | None = None):
        if self.gather_across_ranks and is_distributed():
            return self._gathered(queries, docs, false_negatives, doc_keys, pos_keys)
        if self.in_batch_negatives:
            return self.score_loss(queries @ docs.T, false_negatives)
        b = queries.shape[0]
        g = docs.shape[0] // b
        own = torch.einsum("bd,bgd->bg", queries, docs.view(b, g, -1))
        scores = own.new_full((b, b, g), torch.finfo(own.dtype).min)  # only the diagonal blocks are read
        scores[torch.arange(b), torch.arange(b)] = own
        return self.score_loss(scores.view(b, b * g), false_negatives)

    def _gathered(self, queries, docs, false_negatives, doc_keys, pos_keys):
        """In-batch InfoNCE against every rank's documents (see ``gather_across_ranks``)."""
        b, n = queries.shape[0], docs.shape[0]
        g = n // b
        all_docs, offset = all_gather_with_grad(docs)
        scores = (queries @ all_docs.T).float() / self.temperature
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        if false_negatives is not None:
            mask[:, offset : offset + n] = false_negatives.to(scores.device)
        if doc_keys is not None and pos_keys is not None:
            all_keys = all_gather_no_grad(doc_keys.to(scores.device))
            mask |= (all_keys[None, :, None] == pos_keys.to(scores.device)[:, None, :]).any(-1)
        else:
            warnings.warn("gather_across_ranks without text keys: another rank's copy of a positive is not masked",
                          stacklevel=2)
        target = offset + torch.arange(b, device=scores.device) * g
        mask[torch.arange(b, device=scores.device), target] = False
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        return {"loss": F.cross_entropy(scores, target)}
