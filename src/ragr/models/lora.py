"""LoRA helpers shared by every family that can train adapters."""

from __future__ import annotations

import re

import torch


def merged_lora_state(peft_model) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA delta added to its weight (plain key names), leaving the
    live model untouched: saving mid-training (the best checkpoint) must not end LoRA training."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    state = dict(base.state_dict())
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and f"{name}.base_layer.weight" in state:
                key = f"{name}.base_layer.weight"
                for adapter in module.active_adapters:
                    if adapter in module.lora_A and adapter not in getattr(module, "merged_adapters", []):
                        state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    out = {}
    for key, value in state.items():
        if "lora_" in key or ".original_module." in key:
            continue
        # modules trained whole beside the adapter (a classification head) replace the original module
        out[re.sub(r"\.modules_to_save\.[^.]+\.", ".", key.replace(".base_layer.", "."))] = value
    return out
