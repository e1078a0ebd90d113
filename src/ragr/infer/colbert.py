"""ColBERT inference: MaxSim scoring of (query, document) pairs, and an encode-once document index.

``ColBERTScorer`` is the ColBERT entry of the scorer registry (family ``colbert``), so a saved
ColBERT folder reranks through the common ``Reranker`` API and ``ragr rerank``. For many queries
against the same documents, encode the documents once::

    scorer = ColBERTScorer.load("runs/x/model")
    index = scorer.encode_docs(docs)            # token vectors, computed once
    scores = scorer.score_queries(queries, index)   # [len(queries), len(docs)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ragr.infer.base import Scorer
from ragr.models.colbert import ColBERT, maxsim, maxsim_pairs, pad_vectors


@dataclass
class ColBERTIndex:
    """Documents encoded once: padded token vectors ``[N, Ld, dim]`` (fp32, CPU) and their bool mask ``[N, Ld]``."""

    vectors: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.vectors.shape[0]


class ColBERTScorer(Scorer):
    """Score (query, document) pairs with a ColBERT model's MaxSim (family ``colbert``).

    Queries and documents are encoded separately, so :meth:`encode_docs` / :meth:`score_queries`
    can reuse document vectors across any number of queries.

    :meth:`score_pairs` keeps the token vectors of recently seen texts (least recently used first
    out, at most ``cache_elements`` floats in all), so a query scored against candidates spread over
    many batches is encoded once; memory stays bounded.

    Args:
        model: a :class:`ragr.models.colbert.ColBERT`.
        batch_size: texts per encoder batch.
        cache_elements: size of the token-vector cache in fp32 elements (0 disables it).
    """

    family = "colbert"

    def __init__(self, model: ColBERT, batch_size: int = 32, cache_elements: int = 2**25) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.tokenizer = model.tokenizer
        self.max_length = model.max_doc_length
        self.cache_elements = cache_elements
        self._cache: OrderedDict[tuple[bool, str], torch.Tensor] = OrderedDict()
        self._cached = 0

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             batch_size: int = 32, cache_elements: int = 2**25, **options: Any) -> ColBERTScorer:
        """Load a ColBERT folder (bge-m3 layout). ``max_length`` caps the document length in tokens;
        ``options`` go to :meth:`ColBERT.from_pretrained` (``max_query_length``, ``mask_punctuation`` ...)."""
        from ragr.infer.reranker import parse_dtype

        if max_length is not None:
            options["max_doc_length"] = max_length
        model = ColBERT.from_pretrained(str(path), dtype=parse_dtype(dtype), key="--model", **options)
        return cls(model.to(device), batch_size=batch_size, cache_elements=cache_elements)

    def _encode(self, texts: Sequence[str], is_query: bool, progress: Callable[[int], None] | None = None):
        return self.model.encode(texts, is_query=is_query, batch_size=self.batch_size, progress=progress)

    def _vectors(self, texts: list[str], is_query: bool) -> dict[str, torch.Tensor]:
        """Token vectors of distinct ``texts``, from the cache or freshly encoded (then cached)."""
        found = {}
        for t in texts:
            v = self._cache.get((is_query, t))
            if v is not None:
                self._cache.move_to_end((is_query, t))
                found[t] = v
        missing = [t for t in texts if t not in found]
        for t, v in zip(missing, self._encode(missing, is_query) if missing else []):
            found[t] = v
            if self.cache_elements > 0 and v.numel() <= self.cache_elements:
                self._cache[(is_query, t)] = v
                self._cached += v.numel()
        while self._cached > self.cache_elements:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.numel()
        return found

    @torch.no_grad()
    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        """MaxSim score of ``queries[i]`` against ``docs[i]``; each distinct text is encoded once."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        if not queries:
            return []
        qv = self._vectors(list(dict.fromkeys(queries)), True)
        dv = self._vectors(list(dict.fromkeys(docs)), False)
        out: list[float] = []
        for start in range(0, len(queries), self.batch_size):
            qs, ds = queries[start : start + self.batch_size], docs[start : start + self.batch_size]
            q, q_mask = pad_vectors([qv[t] for t in qs])
            d, d_mask = pad_vectors([dv[t] for t in ds])
            out += maxsim_pairs(q, q_mask, d, d_mask, self.model.normalize_by_query_length).tolist()
        return out

    @torch.no_grad()
    def encode_docs(self, docs: Sequence[str], progress: Callable[[int], None] | None = None) -> ColBERTIndex:
        """Encode ``docs`` once for :meth:`score_queries`."""
        vectors, mask = pad_vectors(self._encode(docs, False, progress))
        return ColBERTIndex(vectors, mask)

    @torch.no_grad()
    def score_queries(self, queries: Sequence[str], index: ColBERTIndex) -> torch.Tensor:
        """MaxSim scores ``[len(queries), len(index)]`` (fp32) against pre-encoded documents (blockwise)."""
        q, q_mask = pad_vectors(self._encode(queries, True))
        return maxsim(q, q_mask, index.vectors, index.mask, self.model.normalize_by_query_length,
                      self.model.max_score_elements)

    def rank(self, query: str, index: ColBERTIndex, top_k: int | None = None) -> list[tuple[int, float]]:
        """``(document index, score)`` of the best ``top_k`` pre-encoded documents for ``query``, best first."""
        scores = self.score_queries([query], index)[0]
        k = len(scores) if top_k is None else min(top_k, len(scores))
        values, order = torch.topk(scores, k)
        return list(zip(order.tolist(), values.tolist()))

    def score_groups(self, queries: Sequence[str], candidates: Sequence[Sequence[str]], batch_size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> list[list[float]]:
        """Each query's candidates MaxSim-scored; each distinct text is encoded once (for evaluation)."""
        m, bs = self.model, batch_size or self.batch_size
        uq = sorted(set(queries))
        ud = sorted({d for cs in candidates for d in cs})
        q_vecs = dict(zip(uq, m.encode(uq, is_query=True, batch_size=bs, progress=progress)))
        d_vecs = dict(zip(ud, m.encode(ud, is_query=False, batch_size=bs, progress=progress)))
        out = []
        for qt, cs in zip(queries, candidates):
            q, q_mask = pad_vectors([q_vecs[qt]])
            d, d_mask = pad_vectors([d_vecs[c] for c in cs])
            out.append(maxsim(q, q_mask, d, d_mask, m.normalize_by_query_length, m.max_score_elements)[0].tolist())
        return out

    def doc_budget(self, query: str) -> int:
        """Document tokens per window for ``long_doc="max-chunk"`` (documents are encoded without the query)."""
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False))

    def normalize(self, score: float) -> float:
        """A length-normalized MaxSim lies in [-1, 1]: mapped linearly to [0, 1]; an unnormalized sum: sigmoid."""
        return (score + 1.0) / 2.0 if self.model.normalize_by_query_length else super().normalize(score)
