"""The models ``ragr serve`` holds: one per ``--model`` flag, each under a name clients send as ``model``."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragr.errors import UserError

@dataclass
class ServedModel:
    """A loaded model and how to reach it.

    Args:
        name: what clients send as ``model``.
        source: the ``--model`` value it was loaded from.
        reranker: a :class:`ragr.infer.Reranker`; every family can rerank (an embedder by cosine).
        embedder: the :class:`ragr.models.embedder.Embedder` behind an embedder-family model (it also
            serves ``/v1/embeddings``); None for other families.
    """

    name: str
    source: str
    reranker: Any
    embedder: Any = None
    created: int = field(default_factory=lambda: int(time.time()))
    _counter: Any = field(default=None, init=False, repr=False)
    _counter_lock: Any = field(default_factory=threading.Lock, init=False, repr=False)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text (no special tokens), thread-safe.

        Counting uses a private copy of the tokenizer: a Hugging Face tokenizer's padding and
        truncation settings are shared state, so it must not touch the one the worker scores with.
        """
        if not texts:
            return []
        with self._counter_lock:
            if self._counter is None:
                self._counter = copy.deepcopy(self.tokenizer)
            return [len(ids) for ids in self._counter(list(texts), add_special_tokens=False)["input_ids"]]

    @property
    def family(self) -> str:
        return self.reranker.family

    @property
    def long_doc(self) -> str:
        return self.reranker.long_doc

    @property
    def tokenizer(self) -> Any:
        return self.reranker.scorer.tokenizer

    @property
    def max_length(self) -> int:
        return int(getattr(self.reranker.scorer, "max_length", 512) or 512)

    @property
    def can_embed(self) -> bool:
        return self.embedder is not None

    @property
    def can_embed_sparse(self) -> bool:
        """A sparse (SPLADE) model: its scorer gives term weights (``/embed_sparse``)."""
        return callable(getattr(self.reranker.scorer, "sparse_terms", None))

    @property
    def endpoints(self) -> list[str]:
        out = ["/v2/rerank", "/v1/rerank", "/rerank"]
        return out + ["/v1/embeddings"] * self.can_embed + ["/embed_sparse"] * self.can_embed_sparse


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain PATH, alias or hub id -> (its name, itself).

    A local folder is named by its basename, an alias or hub id by itself (``BAAI/bge-reranker-base``).
    """
    path = Path(spec).expanduser()
    if "=" in spec and not path.exists():
        name, source = spec.split("=", 1)
        if not name.strip() or not source.strip():
            raise UserError(f"--model {spec!r}: expected PATH or NAME=PATH")
        return name.strip(), source.strip()
    if path.exists():
        return path.resolve().name, spec
    return spec, spec


def load_model(name: str, source: str, *, family: str | None = None, device: str | None = None,
               dtype: str | None = None, max_length: int | None = None, long_doc: str = "truncate",
               overlap: int = 32, batch_size: int = 32, backend: str | None = None) -> ServedModel:
    """Load ``source`` the way ``ragr rerank`` does (:class:`ragr.infer.Reranker`), so scores match it.

    ``backend``: ``torch`` or ``onnx`` (None: read from the folder, as ``ragr rerank``).

    ``batch_size`` matters only for ``max-chunk``: the windows of one forward pass's pairs are scored
    ``batch_size`` at a time (the batching queue sizes the forward passes of pairs itself).
    """
    from ragr.infer import Reranker

    reranker = Reranker(source, family=family, device=device, dtype=dtype, max_length=max_length,
                        long_doc=long_doc, overlap=overlap, batch_size=batch_size, backend=backend)
    embedder = getattr(reranker.scorer, "model", None) if reranker.family == "embedder" else None
    return ServedModel(name=name, source=source, reranker=reranker, embedder=embedder)


def parse_specs(specs: list[str]) -> list[tuple[str, str]]:
    """(name, source) of every ``--model`` spec (see :func:`parse_model_spec`); names must be unique."""
    if not specs:
        raise UserError("give at least one --model")
    named = [parse_model_spec(s) for s in specs]
    seen: dict[str, str] = {}
    for name, source in named:
        if name in seen:
            raise UserError(f"two models are named '{name}' ({seen[name]} and {source}); name them with --model NAME=PATH")
        seen[name] = source
    return named


def load_models(specs: list[str], **options: Any) -> list[ServedModel]:
    """Load every ``--model`` spec (``PATH`` or ``NAME=PATH``); ``options`` go to :func:`load_model`."""
    return [load_model(name, source, **options) for name, source in parse_specs(specs)]
