"""Inference: one Reranker interface over every family (see DESIGN.md section 8).

``Reranker`` drives batching, long documents and normalization; a family implements ``Scorer``
(:mod:`ragr.infer.base`) and is registered in :data:`ragr.registry.scorers`.
"""

from ragr.infer.base import Scorer, register_scorer, token_windows
from ragr.infer.detect import detect_family
from ragr.infer.reranker import Reranker

__all__ = ["Reranker", "Scorer", "detect_family", "register_scorer", "token_windows"]
