"""Model families: build, save and load. Families are looked up in :data:`ragr.registry.families`."""

from __future__ import annotations


def build_model(model_cfg: dict, **runtime):
    """Builder: the ``model`` config node, flattened into the family class's ``from_pretrained`` arguments."""
    from ragr.registry import families

    cls = families.get(model_cfg["family"])
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("preset", "family", "name_or_path")}
    return cls.from_pretrained(model_cfg["name_or_path"], **kwargs, **runtime)
