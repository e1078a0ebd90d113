"""Family ``colbert``: token vectors per text, MaxSim scores (bge-m3 layout: ``colbert_linear.pt``).

Model: :class:`ragr.models.colbert.ColBERT`. Forward: the side is tokenized padded (its token mask
decides which tokens score), then each length-planned chunk runs only up to its own longest text and
is zero-padded back (same vectors as one padded forward). Scorer: :class:`ragr.infer.colbert.ColBERTScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ragr.families.base import Family
from ragr.models.colbert import ColBERT, maxsim_pairs


class ColBERTFamily(Family):
    """late interaction: token vectors, MaxSim, bge-m3 layout"""

    name = "colbert"
    model_class = ColBERT
    produces = ("multivectors", "pair_scores")
    natural_temperature = 0.02
    token_budget = True

    def scorer_class(self) -> type:
        from ragr.infer.colbert import ColBERTScorer

        return ColBERTScorer

    def scorer(self, model):
        from ragr.infer.colbert import ColBERTScorer

        was_training = model.training
        scorer = ColBERTScorer(model, cache_elements=0)  # it puts the model in eval mode; a live model keeps its own
        model.train(was_training)
        return scorer

    def encode(self, fwd, texts: Sequence[str], is_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token vectors [N, L, dim], token_mask [N, L])``."""
        feats = fwd.model.tokenize(texts, is_query=is_query)
        used = feats["attention_mask"].bool() | feats["token_mask"].bool()
        positions = torch.arange(used.shape[1])
        lengths = (used.long() * (positions + 1)).amax(1).tolist()
        width = used.shape[1]

        def make_chunk(idx: list[int]) -> dict[str, torch.Tensor]:
            rows = torch.tensor(idx)
            return {k: v[rows, : max(1, max(lengths[i] for i in idx))] for k, v in feats.items()}

        vecs = fwd.run(lengths, make_chunk, post=lambda out: torch.nn.functional.pad(out, (0, 0, 0, width - out.shape[1])))
        return vecs, feats["token_mask"].to(fwd.device)

    def similarity(self, model: ColBERT, q, d) -> torch.Tensor:
        return model.score_matrix(q[0], q[1], d[0], d[1])

    def pair_similarity(self, model: ColBERT, q, d, rep: torch.Tensor) -> torch.Tensor:
        return maxsim_pairs(q[0][rep], q[1][rep], d[0], d[1], model.normalize_by_query_length)

    def own_group_scores(self, model: ColBERT, q, d) -> torch.Tensor:
        """``[B, B*G]`` with only each query's own group scored (InfoNCE without in-batch negatives)."""
        b = q[0].shape[0]
        g = d[0].shape[0] // b
        rep = torch.arange(b, device=q[0].device).repeat_interleave(g)
        own = self.pair_similarity(model, q, d, rep).view(b, g)
        scores = own.new_full((b, b, g), torch.finfo(own.dtype).min)
        scores[torch.arange(b), torch.arange(b)] = own
        return scores.view(b, b * g)

    def text_lengths(self, model: ColBERT, texts: Sequence[str], is_query: bool) -> list[int]:
        if not texts:
            return []
        max_len = model.max_query_length if is_query else model.max_doc_length
        if is_query and model.query_augmentation:
            return [max_len] * len(texts)
        return [len(x) for x in model.tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]]
