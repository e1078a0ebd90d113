"""Model classes (embedder, colbert, cross_encoder, llm_reranker): build, save and load.

Which class a config node builds is decided by its family (:mod:`ragr.families`).
"""

from __future__ import annotations


def build_model(model_cfg: dict, **runtime):
    """Builder: the ``model`` config node, flattened into its family's ``from_pretrained`` arguments."""
    from ragr.families import get_family

    return get_family(model_cfg["family"]).build(model_cfg, **runtime)
