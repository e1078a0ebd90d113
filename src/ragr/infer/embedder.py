"""Bi-encoder reranking: the dot product of a ragr :class:`~ragr.models.embedder.Embedder`'s vectors.

One rule everywhere (training, evaluation, mining, distillation, ``ragr rerank`` and ``serve``): the model's own
normalisation decides, so a normalizing model scores by cosine and one without a Normalize module by dot product."""

from __future__ import annotations

from typing import Any

import torch

from ragr.infer.base import Scorer


class EmbedderScorer(Scorer):
    """Score a pair by the dot product of the query and document embeddings (a cosine in [-1, 1] when the model
    normalizes).

    Args:
        model: an :class:`~ragr.models.embedder.Embedder`.
    """

    family = "embedder"

    def __init__(self, model) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.max_length = model.max_doc_length

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> EmbedderScorer:
        from ragr.models.embedder import Embedder

        if max_length is not None:
            options["max_doc_length"] = max_length
        model = Embedder.from_pretrained(path, dtype=dtype, **options).to(device).eval()
        return cls(model)

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        uq = list(dict.fromkeys(queries))
        ud = list(dict.fromkeys(docs))
        q = self.model.encode(uq, is_query=True, batch_size=max(1, len(uq)))
        d = self.model.encode(ud, is_query=False, batch_size=max(1, len(ud)))
        q, d = q.float(), d.float()  # the model's own normalisation decides: cosine for a normalizing model
        q_at = {t: i for i, t in enumerate(uq)}
        d_at = {t: i for i, t in enumerate(ud)}
        qi = torch.tensor([q_at[x] for x in queries])
        di = torch.tensor([d_at[x] for x in docs])
        return (q[qi] * d[di]).sum(-1).tolist()

    def score_groups(self, queries: list[str], candidates: list[list[str]], batch_size: int = 64,
                     progress=None) -> list[list[float]]:
        """Each query's candidates scored by the dot product of the model's vectors (the training
        similarity; cosine for a normalizing model); each distinct text is encoded once, fp32."""
        uq = sorted(set(queries))
        ud = sorted({d for cs in candidates for d in cs})
        q = self.model.encode(uq, is_query=True, batch_size=batch_size, progress=progress).float()
        d = self.model.encode(ud, is_query=False, batch_size=batch_size, progress=progress).float()
        q_at = {t: i for i, t in enumerate(uq)}
        d_at = {t: i for i, t in enumerate(ud)}
        return [(d[[d_at[c] for c in cs]] @ q[q_at[qt]]).tolist() for qt, cs in zip(queries, candidates)]

    def doc_budget(self, query: str) -> int:
        prompt = self.model.doc_prompt
        n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False) - n_prompt)

    def normalize(self, score: float) -> float:
        """A cosine (normalizing model) mapped linearly from [-1, 1] to [0, 1]; a raw dot product through a sigmoid."""
        if self.model.normalize:
            return (score + 1.0) / 2.0
        return super().normalize(score)
