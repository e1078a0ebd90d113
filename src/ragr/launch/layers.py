"""Find a model's own transformer layer class (what FSDP wraps), never a hard-coded name.

The layer stack is the ``nn.ModuleList`` holding most parameters (``encoder.layer`` in BERT/XLM-R,
``layers`` in Qwen2/Llama/Gemma ...); its element classes are the wrap units. When a model has no such
list, the classes Hugging Face marks as ``_no_split_modules`` are used.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ragr.errors import UserError


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def transformer_layer_classes(model: nn.Module) -> list[str]:
    """Class names of ``model``'s repeated transformer blocks (empty if none can be found)."""
    best: tuple[int, list[str]] | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            names = list(dict.fromkeys(type(child).__name__ for child in module))
            size = _numel(module)
            if size > 0 and (best is None or size > best[0]):
                best = (size, names)
    if best is not None:
        return best[1]
    present = {type(m).__name__ for m in model.modules()}
    marked: set[str] = set()
    for m in model.modules():
        marked.update(getattr(m, "_no_split_modules", None) or ())
    return sorted(n for n in marked & present if not n.endswith("Embeddings"))


def layer_classes_for_model(model_cfg: dict[str, Any]) -> list[str]:
    """Layer classes of the model a config node names, from its ``config.json`` on an empty (meta) model.

    Nothing is loaded but the Hugging Face config, so the parent process can write the FSDP config cheaply.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    from ragr.models.hub import resolve_model_path

    path = resolve_model_path(model_cfg["name_or_path"], "model.name_or_path")
    try:
        config = AutoConfig.from_pretrained(path)
        with init_empty_weights():
            skeleton = AutoModel.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot build {path} to find its layer class for FSDP ({exc}); "
                        "name the layer classes in launcher.layer_cls (a list of class names)") from None
    names = transformer_layer_classes(skeleton)
    if not names:
        raise UserError(f"found no repeated transformer layer in {type(skeleton).__name__}; "
                        "name the layer classes for FSDP in launcher.layer_cls (a list of class names)")
    return names
