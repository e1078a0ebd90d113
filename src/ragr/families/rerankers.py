"""Families ``cross_encoder``, ``llm_seqcls`` and ``llm_yes``: one score per (query, document) pair.

Models: :class:`ragr.models.cross_encoder.CrossEncoder` (``AutoModelForSequenceClassification``,
one logit) and :mod:`ragr.models.llm_reranker` (a decoder's classification head, or its "yes"
logit after a prompt). Forward: each pair tokenized unpadded (truncated to ``max_length``), then
length-planned chunks, each padded to its own longest pair (collective-safe). The models are their
own scorers (:class:`ragr.infer.base.ModuleScorer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ragr.families.base import Family
from ragr.models.cross_encoder import CrossEncoder
from ragr.models.llm_reranker import LLMSeqClsReranker, LLMYesReranker


class PairScoreFamily(Family):
    """A family whose model scores a tokenized (query, document) pair: ``model(**features) -> [N]``."""

    produces = ("pair_scores",)
    natural_temperature = 1.0

    def pair_lengths(self, model, queries: Sequence[str], docs: Sequence[str]):
        """``(lengths, make_chunk)`` over the pairs."""
        if hasattr(model, "tokenize_pairs") and hasattr(model, "pad_features"):
            feats = model.tokenize_pairs(list(queries), list(docs))
            return [len(f["input_ids"]) for f in feats], lambda idx: model.pad_features([feats[i] for i in idx])
        seqs = [model.encode_pair(q, d) for q, d in zip(queries, docs)]  # LLM rerankers: right-padded chunks
        pad = model.tokenizer.pad_token_id

        def make_chunk(idx: list[int]) -> dict[str, torch.Tensor]:
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
                mask[r, : len(seqs[i])] = 1
            return {"input_ids": ids, "attention_mask": mask}

        return [len(s) for s in seqs], make_chunk

    def score_pairs(self, fwd, queries: Sequence[str], docs: Sequence[str], pair_query: torch.Tensor) -> torch.Tensor:
        pair_queries = [queries[int(i)] for i in pair_query.tolist()]
        lengths, make_chunk = self.pair_lengths(fwd.model, pair_queries, docs)
        return fwd.run(lengths, make_chunk)


class CrossEncoderFamily(PairScoreFamily):
    """reranker: BERT-family cross-encoder, one logit"""

    name = "cross_encoder"
    model_class = CrossEncoder


class LLMSeqClsFamily(PairScoreFamily):
    """reranker: decoder + classification head on the last token"""

    name = "llm_seqcls"
    model_class = LLMSeqClsReranker


class LLMYesFamily(PairScoreFamily):
    """reranker: decoder, logit of 'yes' after a prompt"""

    name = "llm_yes"
    model_class = LLMYesReranker
