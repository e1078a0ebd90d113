"""The one place that decides the device and the compute dtype ("auto" precision).

``auto`` means bf16 on a CUDA GPU that supports it, fp32 everywhere else (most CPUs compute bf16
slower than fp32, see docs/BENCHMARKS.md). Training (accelerate's ``mixed_precision``), teacher
scoring, ``ragr embed`` and the launchers' accelerate configs all ask here.
"""

from __future__ import annotations

from typing import Any

import torch

#: setting -> torch dtype (None: fp32, the families' default)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "float32": None, "bf16": torch.bfloat16,
                                          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def default_device(local_rank: int | None = None) -> torch.device:
    """``cuda[:local_rank]`` when a GPU is visible, else the CPU (``local_rank`` is ignored there)."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    return torch.device("cpu")


def quiet_deepspeed_probe() -> None:
    """Without a GPU, tell DeepSpeed (imported by accelerate when installed) it is on the CPU, so it does not
    warn about failing to find an accelerator on every run. A value the user set is kept."""
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def resolve_precision(setting: str, cuda: bool | None = None) -> str:
    """``"auto" | "fp32" | "bf16" | "fp16"`` -> the concrete ``"fp32" | "bf16" | "fp16"`` on this machine."""
    if setting == "auto":
        if cuda is None:
            cuda = torch.cuda.is_available()
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if setting in ("float32",):
        return "fp32"
    if setting not in ("fp32", "bf16", "fp16", "no"):
        from ragr.errors import UserError

        raise UserError(f"unknown precision '{setting}' (auto, fp32, bf16, fp16)")
    return "fp32" if setting == "no" else setting


def mixed_precision(setting: str, cuda: bool | None = None) -> str:
    """accelerate's ``mixed_precision`` value (``no`` / ``bf16`` / ``fp16``) for ``trainer.precision``."""
    p = resolve_precision(setting, cuda)
    return "no" if p == "fp32" else p


def compute_dtype(setting: Any, cuda: bool | None = None) -> torch.dtype | None:
    """The weights' dtype for a precision setting (a torch dtype passes through); None means fp32."""
    if setting is None or isinstance(setting, torch.dtype):
        return setting
    return DTYPES[resolve_precision(str(setting), cuda)]
