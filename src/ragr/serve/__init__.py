"""``ragr serve``: rerank and embed over HTTP with the APIs RAG clients already use.

Needs the ``serve`` extra (FastAPI, uvicorn). Only :mod:`ragr.serve.app` imports FastAPI; the names
below load on first use, so ``ragr.serve.models`` and the CLI work (and explain) without it.

Example:
    >>> from ragr.serve import ServeSettings, create_app, load_models
    >>> app = create_app(load_models(["reranker=runs/x/model"]), ServeSettings(api_key="secret"))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "ragr.serve.app",
    "BatchQueue": "ragr.serve.batching",
    "ServeSettings": "ragr.serve.limits",
    "ServedModel": "ragr.serve.models",
    "load_model": "ragr.serve.models",
    "load_models": "ragr.serve.models",
    "parse_model_spec": "ragr.serve.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ragr.serve' has no attribute '{name}'")
