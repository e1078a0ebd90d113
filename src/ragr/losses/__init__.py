"""Losses, built by name through :data:`ragr.registry.losses`.

Every loss is an ``nn.Module`` whose ``forward`` returns a dict with a ``"loss"`` tensor and any named
parts (logged by the engine). Builders flatten the config node into keyword arguments.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from ragr.errors import UserError, did_you_mean


def _params(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {k: p for k, p in sig.parameters.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def check_loss_config(node: Any, path: str) -> None:
    """Check a loss node (``{name: ..., **kwargs}``) against the loss class's constructor."""
    from ragr.config.schema import _describe, _type_ok
    from ragr.registry import losses

    if not isinstance(node, dict) or "name" not in node:
        raise UserError(f"config key '{path}' must be a mapping with a 'name' (choices: {', '.join(losses.names())})")
    cls = losses.get(node["name"])
    params = _params(cls)
    hints = typing.get_type_hints(cls.__init__)
    for key, value in node.items():
        if key == "name":
            continue
        if key not in params or key in getattr(cls, "runtime_args", ()):
            valid = [f"{path}.{k}" for k in params if k not in getattr(cls, "runtime_args", ())]
            raise UserError(f"unknown config key '{path}.{key}'{did_you_mean(f'{path}.{key}', valid)}")
        if key == "inner":
            check_loss_config(value, f"{path}.inner")
        elif key in hints and not _type_ok(value, hints[key]):
            raise UserError(f"config key '{path}.{key}' must be {_describe(hints[key])}, got {value!r}")


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
