"""One reranking interface for every family: ``Reranker(name_or_path).score(pairs)`` / ``.rank(query, docs)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ragr.errors import UserError
from ragr.infer.base import Scorer, forward_context, scorer_class, scorer_module, token_batches, token_windows

LONG_DOC = ("truncate", "max-chunk")
#: pairs tokenized and sorted together: bounds memory whatever the input size
SORT_WINDOW = 8192
#: pairs per forward pass for families without the token-level fast path, when batch_size is None
DEFAULT_PAIRS = 32
#: default padded tokens per forward pass, and the fixed cost of one forward pass in token-equivalents
#: (see :func:`ragr.infer.base.token_batches`): a CPU is busy with a few hundred tokens, a GPU wants more
MAX_TOKENS = {"cpu": 8192, "other": 32768}
BATCH_OVERHEAD = {"cpu": 64, "other": 1024}
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
        dtype: ``fp32`` (default), ``bf16`` or ``fp16``; scores are returned in fp32 whatever the dtype
            (cross-encoders keep their head in fp32). bf16 pays off on GPUs and on CPUs whose bf16 matrix
            products outrun fp32 (AMX); where the CPU only has avx512_bf16 it can be slower than fp32.
        max_length: input length in tokens; None: the model's own (or its preset's).
        long_doc: ``truncate`` (cut what does not fit) or ``max-chunk`` (score overlapping windows of
            the document that fit beside the query, keep the max).
        overlap: tokens shared by consecutive ``max-chunk`` windows (capped at half a window).
        batch_size: at most this many pairs per forward pass (None: as many as ``max_tokens`` allows;
            32 for families without the token-level path).
        max_tokens: padded tokens per forward pass (pairs x longest pair in the batch); None: 8192 on
            CPU, 32768 on a GPU. Families that tokenize up front (cross-encoders) sort pairs by exact
            token length, cut batches that pad least within this budget and pad each batch only to
            its own longest pair; others sort by characters.
        forward: the forward strategy (:mod:`ragr.families.forward`): ``auto`` (packed on CUDA where the model
            supports it, else bucketed; chunked elsewhere), ``chunked`` (each batch padded to its longest),
            ``packed`` (padding-free: ``max_tokens`` counts real tokens) or ``bucketed`` (few fixed shapes).
            Scores do not depend on it beyond float rounding.
        backend: ``torch`` or ``onnx`` (ONNX Runtime, a folder written by ``ragr export``; cross-encoders and
            embedders); None or ``auto``: read from the folder (:func:`ragr.infer.detect.detect_backend`).
            The ONNX file's precision (fp32, int8, fp16) is fixed at export; option ``file_name`` picks another.
        **options: family options, such as an LLM's ``prompt`` dict.

    Example:
        >>> rr = Reranker("bge-reranker-base")
        >>> rr.rank("what is panda?", ["hi", "The giant panda is a bear."], top_k=1)
        [(1, 5.26..., 'The giant panda is a bear.')]
    """

    def __init__(self, name_or_path: str, family: str | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, max_length: int | None = None, long_doc: str = "truncate",
                 overlap: int = 32, batch_size: int | None = None, max_tokens: int | None = None, forward: str = "auto",
                 backend: str | None = None, **options: Any) -> None:
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
        from ragr.infer.detect import detect_backend

        if detect_backend(path, backend) == "onnx":
            from ragr.infer.onnx import auto_device, onnx_scorer_class

            cls, device = onnx_scorer_class(family), device or auto_device()
        else:
            from ragr.device import default_device

            cls, device = scorer_class(family), device or str(default_device())
        try:
            scorer = cls.load(path, device=device, dtype=parse_dtype(dtype), **opts)
        except TypeError as exc:
            if "argument" in str(exc):
                raise UserError(f"reranker family '{family}': {exc}") from None
            raise
        self._setup(scorer, long_doc, overlap, batch_size, max_tokens, forward)
        self.name_or_path = str(name_or_path)

    @classmethod
    def from_scorer(cls, scorer: Scorer, long_doc: str = "truncate", overlap: int = 32, batch_size: int | None = None,
                    max_tokens: int | None = None, forward: str = "auto") -> Reranker:
        """Wrap an already loaded scorer (a model being trained, a custom scorer) in the Reranker API."""
        self = cls.__new__(cls)
        self._setup(scorer, long_doc, overlap, batch_size, max_tokens, forward)
        self.name_or_path = type(scorer).__name__
        return self

    def _setup(self, scorer: Scorer, long_doc: str, overlap: int, batch_size: int | None, max_tokens: int | None,
               forward: str = "auto") -> None:
        if long_doc not in LONG_DOC:
            raise UserError(f"long_doc must be one of {', '.join(LONG_DOC)}, got {long_doc!r}")
        if overlap < 0:
            raise UserError(f"overlap must be >= 0, got {overlap}")
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
        self.scorer, self.long_doc, self.overlap = scorer, long_doc, overlap
        kind = "cpu" if self._device_type() == "cpu" else "other"
        self.batch_size, self.max_tokens = batch_size, max_tokens or MAX_TOKENS[kind]
        self.batch_overhead = BATCH_OVERHEAD[kind]
        from ragr.families.forward import resolve_strategy

        module = scorer_module(scorer)  # a scorer without an nn.Module inside runs its own way: chunked batches
        self.forward = resolve_strategy(forward, self._device_type(), module, key="forward") if module is not None else "chunked"

    def _device_type(self) -> str:
        if isinstance(getattr(self.scorer, "device_type", None), str):  # a scorer without torch parameters (ONNX)
            return self.scorer.device_type
        params = getattr(self.scorer, "parameters", None)
        try:
            return next(params()).device.type if callable(params) else "cpu"
        except (StopIteration, TypeError):
            return "cpu"

    @property
    def family(self) -> str:
        return self.scorer.family

    @property
    def backend(self) -> str:
        """``torch`` or ``onnx``."""
        return getattr(self.scorer, "backend", "torch")

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
        raw = [0.0] * len(items)
        per_item = len(pairs) / len(items)
        for w in range(0, len(items), SORT_WINDOW):
            window = items[w : w + SORT_WINDOW]
            for idx, scores in self._score_window([q for _, q, _ in window], [d for _, _, d in window]):
                for k, s in zip(idx, scores):
                    raw[w + k] = float(s)
                if progress is not None:
                    progress(len(idx) * per_item)
        out = [float("-inf")] * len(pairs)
        for (i, _, _), s in zip(items, raw):
            out[i] = max(out[i], s)
        return [self.scorer.normalize(s) for s in out] if normalize else out

    def _score_window(self, queries: list[str], docs: list[str]):
        """Yield ``(indices, scores)`` per forward pass over one window of pairs, longest batches first."""
        tokenize = getattr(self.scorer, "tokenize_pairs", None)  # duck-typed scorers may lack the fast path
        feats = tokenize(queries, docs) if tokenize is not None else None
        if feats is not None:  # exact token lengths: token-budget batches, each padded to its own longest
            lengths = [len(f["input_ids"]) for f in feats]
            for idx in token_batches(lengths, self.max_tokens, self.batch_size, self.batch_overhead, self.forward):
                with forward_context(self.scorer, self.forward):
                    scores = self.scorer.score_tokenized([feats[k] for k in idx])
                yield idx, scores
            return
        size = self.batch_size or DEFAULT_PAIRS
        order = sorted(range(len(queries)), key=lambda k: len(queries[k]) + len(docs[k]), reverse=True)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            with forward_context(self.scorer, self.forward):
                scores = self.scorer.score_pairs([queries[k] for k in idx], [docs[k] for k in idx])
            yield idx, scores

    def rank(self, query: str, docs: Sequence[str], top_k: int | None = None, normalize: bool = False,
             rescore: Reranker | None = None, rescore_margin: int = 1) -> list[tuple[int, float, str]]:
        """``(index, score, document)`` of ``docs`` sorted by score, best first (ties keep input order).

        Args:
            rescore: a second, exact reranker (typically the same model in fp32 beside a bf16 one): after
                this reranker scores every document, ``rescore`` re-scores the best ``top_k + rescore_margin``
                and those come first in its order, with its scores; the rest keep this reranker's. Low-precision
                rounding mostly swaps near-tied neighbours (docs/BENCHMARKS.md: bf16 kept the fp32 top-10
                order on 76% of queries, bf16 + fp32 re-scoring of the top 11 on 100%), so a small margin makes
                the top ``top_k`` that of the exact model while it scores only ``top_k + margin`` documents.
            rescore_margin: documents beyond ``top_k`` that ``rescore`` also re-scores (needs ``top_k``).
        """
        docs = list(docs)
        scores = self.score([(query, d) for d in docs], normalize=normalize)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        if rescore is not None:
            if top_k is None:
                raise UserError("rescore needs top_k (the documents to re-score are the best top_k + rescore_margin)")
            if rescore_margin < 0:
                raise UserError(f"rescore_margin must be >= 0, got {rescore_margin}")
            head = order[: max(0, top_k) + rescore_margin]
            exact = rescore.score([(query, docs[i]) for i in head], normalize=normalize)
            for i, s in zip(head, exact):
                scores[i] = s
            order = sorted(head, key=lambda i: -scores[i]) + order[len(head) :]
        if top_k is not None:
            order = order[: max(0, top_k)]
        return [(i, scores[i], docs[i]) for i in order]
