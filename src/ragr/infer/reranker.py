"""One reranking interface for every family: ``Reranker(name_or_path).score(pairs)`` / ``.rank(query, docs)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ragr.errors import UserError
from ragr.infer.base import Scorer, scorer_class, token_windows

LONG_DOC = ("truncate", "max-chunk")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp32" | "bf16" | "fp16"`` (or a torch dtype, or None for the family default) -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}' (fp32, bf16, fp16)")
    return DTYPES[dtype]


class Reranker:
    """Score (query, document) pairs with any reranker: cross-encoder, LLM (head or "yes" logit),
    ColBERT, or a bi-encoder (cosine).

    Args:
        name_or_path: a model folder, an alias (``bge-reranker-base``, ``qwen-reranker`` ...) or a hub id.
        family: ``cross_encoder``, ``llm_seqcls``, ``llm_yes``, ``embedder``, ``colbert`` or a registered
            family; None reads it from the model's files (:func:`ragr.infer.detect.detect_family`).
        device: torch device; None: CUDA when available, else CPU.
        dtype: ``fp32`` (default), ``bf16`` or ``fp16``; scores are returned in fp32 whatever the dtype.
        max_length: input length in tokens; None: the model's own (or its preset's).
        long_doc: ``truncate`` (cut what does not fit) or ``max-chunk`` (score overlapping windows of
            the document that fit beside the query, keep the max).
        overlap: tokens shared by consecutive ``max-chunk`` windows (capped at half a window).
        batch_size: pairs per forward pass; pairs are sorted by length first to cut padding.
        **options: family options, such as an LLM's ``prompt`` dict.

    Example:
        >>> rr = Reranker("bge-reranker-base")
        >>> rr.rank("what is panda?", ["hi", "The giant panda is a bear."], top_k=1)
        [(1, 5.26..., 'The giant panda is a bear.')]
    """

    def __init__(self, name_or_path: str, family: str | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, max_length: int | None = None, long_doc: str = "truncate",
                 overlap: int = 32, batch_size: int = 32, **options: Any) -> None:
        from ragr.infer.detect import detect_family
        from ragr.infer.presets import preset_for
        from ragr.models.hub import resolve_model_path

        path = resolve_model_path(str(name_or_path), key="model")
        preset = None if Path(str(name_or_path)).expanduser().exists() else preset_for(str(name_or_path))
        family = family or detect_family(path)
        opts = dict(preset.load_options()) if preset is not None and preset.family == family else {}
        if max_length is not None:
            opts["max_length"] = max_length
        opts.update(options)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cls = scorer_class(family)
        try:
            scorer = cls.load(path, device=device, dtype=parse_dtype(dtype), **opts)
        except TypeError as exc:
            if "argument" in str(exc):
                raise UserError(f"reranker family '{family}': {exc}") from None
            raise
        self._setup(scorer, long_doc, overlap, batch_size)
        self.name_or_path = str(name_or_path)

    @classmethod
    def from_scorer(cls, scorer: Scorer, long_doc: str = "truncate", overlap: int = 32, batch_size: int = 32) -> Reranker:
        """Wrap an already loaded scorer (a model being trained, a custom scorer) in the Reranker API."""
        self = cls.__new__(cls)
        self._setup(scorer, long_doc, overlap, batch_size)
        self.name_or_path = type(scorer).__name__
        return self

    def _setup(self, scorer: Scorer, long_doc: str, overlap: int, batch_size: int) -> None:
        if long_doc not in LONG_DOC:
            raise UserError(f"long_doc must be one of {', '.join(LONG_DOC)}, got {long_doc!r}")
        if overlap < 0:
            raise UserError(f"overlap must be >= 0, got {overlap}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.scorer, self.long_doc, self.overlap, self.batch_size = scorer, long_doc, overlap, batch_size

    @property
    def family(self) -> str:
        return self.scorer.family

    def __repr__(self) -> str:
        return f"Reranker({self.name_or_path!r}, family={self.family!r}, long_doc={self.long_doc!r})"

    # ---- scoring ------------------------------------------------------------------------------
    def _items(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
        if self.long_doc == "truncate":
            return [(i, q, d) for i, (q, d) in enumerate(pairs)]
        budgets: dict[str, int] = {}
        items = []
        for i, (q, d) in enumerate(pairs):
            if q not in budgets:
                budgets[q] = self.scorer.doc_budget(q)
            items.extend((i, q, w) for w in token_windows(self.scorer.tokenizer, d, budgets[q], self.overlap))
        return items

    def score(self, pairs: Iterable[Sequence[str]], normalize: bool = False,
              progress: Callable[[float], None] | None = None) -> list[float]:
        """Scores of ``pairs`` ((query, document) each), in input order.

        Args:
            pairs: (query, document) pairs.
            normalize: map raw scores to [0, 1] (sigmoid of the logit; cosine (s + 1) / 2 for embedders).
            progress: called with the number of pairs done after each batch.

        Returns:
            One fp32 score per pair: the model's raw score (logit, yes-logit, MaxSim or cosine),
            independent of the batch size.
        """
        pairs = [(q, d) for q, d in pairs]
        for i, (q, d) in enumerate(pairs):
            if not isinstance(q, str) or not isinstance(d, str):
                raise TypeError(f"pair {i}: query and document must be strings, got {type(q).__name__}, {type(d).__name__}")
        if not pairs:
            return []
        items = self._items(pairs)
        order = sorted(range(len(items)), key=lambda k: len(items[k][1]) + len(items[k][2]), reverse=True)
        raw = [0.0] * len(items)
        per_item = len(pairs) / len(items)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            scores = self.scorer.score_pairs([items[k][1] for k in idx], [items[k][2] for k in idx])
            for k, s in zip(idx, scores):
                raw[k] = float(s)
            if progress is not None:
                progress(len(idx) * per_item)
        out = [float("-inf")] * len(pairs)
        for (i, _, _), s in zip(items, raw):
            out[i] = max(out[i], s)
        return [self.scorer.normalize(s) for s in out] if normalize else out

    def rank(self, query: str, docs: Sequence[str], top_k: int | None = None,
             normalize: bool = False) -> list[tuple[int, float, str]]:
        """``(index, score, document)`` of ``docs`` sorted by score, best first (ties keep input order)."""
        docs = list(docs)
        scores = self.score([(query, d) for d in docs], normalize=normalize)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        if top_k is not None:
            order = order[: max(0, top_k)]
        return [(i, scores[i], docs[i]) for i in order]
