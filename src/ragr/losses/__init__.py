"""Losses, built by name through :data:`ragr.registry.losses`.

Every loss is an ``nn.Module`` whose ``forward`` returns a dict with a ``"loss"`` tensor and any named
parts (logged by the engine). Builders flatten the config node into keyword arguments.
"""

from __future__ import annotations

import inspect
from typing import Any

from ragr.errors import UserError


def _params(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {k: p for k, p in sig.parameters.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def check_loss_config(node: Any, path: str) -> None:
    """Check a loss node (``{name: ..., **kwargs}``) against the loss class's constructor."""
    from ragr.config.schema import check_kwargs
    from ragr.registry import losses

    if not isinstance(node, dict) or "name" not in node:
        raise UserError(f"config key '{path}' must be a mapping with a 'name' (choices: {', '.join(losses.names())})")
    cls = losses.get(node["name"])
    check_kwargs({k: v for k, v in node.items() if k != "inner"}, cls.__init__, path,
                 runtime=getattr(cls, "runtime_args", ()))
    if "inner" in node:
        check_loss_config(node["inner"], f"{path}.inner")
    return None


def build_loss(node: dict[str, Any], embed_dim: int | None = None):
    """Instantiate the loss described by ``node``; ``embed_dim`` lets MRL drop dims above the model width."""
    from ragr.registry import losses

    kwargs = {k: v for k, v in node.items() if k != "name"}
    if "inner" in kwargs:
        kwargs["inner"] = build_loss(kwargs["inner"], embed_dim)
    cls = losses.get(node["name"])
    if "embed_dim" in _params(cls):
        kwargs["embed_dim"] = embed_dim
    return cls(**kwargs)
