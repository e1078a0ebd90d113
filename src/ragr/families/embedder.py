"""Family ``embedder``: one vector per text (BERT- or LLM-based bi-encoders), dot-product scores.

Model: :class:`ragr.models.embedder.Embedder` (sentence-transformers layout on disk).
Forward: each side's texts tokenized unpadded, cut into length-planned chunks (collective-safe).
Scorer: :class:`ragr.infer.embedder.EmbedderScorer` (cosine). GradCache and token budgets: yes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ragr.families.base import DotProductFamily
from ragr.models.embedder import Embedder


class EmbedderFamily(DotProductFamily):
    """bi-encoder: cls/mean/last pooling, optional Dense head, L2 norm"""

    name = "embedder"
    model_class = Embedder
    produces = ("vectors", "pair_scores")
    natural_temperature = 0.02
    grad_cache = True
    token_budget = True

    def scorer_class(self) -> type:
        from ragr.infer.embedder import EmbedderScorer

        return EmbedderScorer

    def scorer(self, model):
        from ragr.infer.embedder import EmbedderScorer

        return EmbedderScorer(model)

    def token_ids(self, model: Embedder, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        prompt = model.query_prompt if is_query else model.doc_prompt
        max_len = model.max_query_length if is_query else model.max_doc_length
        return model.tokenizer([prompt + t for t in texts], truncation=True, max_length=max_len)["input_ids"]

    def prepare(self, model: Embedder, texts: Sequence[str], is_query: bool):
        """``(lengths, make_chunk)`` for :meth:`ChunkedForward.run`: unpadded ids, each chunk padded to its longest."""
        ids = self.token_ids(model, texts, is_query)

        def make_chunk(idx: list[int]) -> dict[str, torch.Tensor]:
            rows = [ids[i] for i in idx]
            padded = model.tokenizer.pad({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]},
                                         return_tensors="pt")
            return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

        return [len(x) for x in ids], make_chunk
