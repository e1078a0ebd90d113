"""Which SDPA kernels ragr lets PyTorch pick on a GPU.

ragr's batches are cut to their own lengths (length-planned training chunks, token-budget rerank
batches), so a run meets hundreds of distinct ``(rows, length)`` shapes. cuDNN's attention backend
builds an execution graph for each new shape, on the host, before its first launch; on an H100
(torch 2.11, transformers 5.17) a profile of ragr training spent about 4.5 ms of host time per
attention call, most of the step. FlashAttention and the memory-efficient kernel have no per-shape
set-up, so on CUDA ragr runs its model calls with those (and the math fallback) only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def shape_stable_attention(device: torch.device | str) -> AbstractContextManager:
    """A context in which SDPA may use any backend but cuDNN's (a no-op off CUDA or on an old torch)."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind != "cuda":
        return nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
