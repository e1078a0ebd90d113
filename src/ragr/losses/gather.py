"""Across-rank gathering for in-batch negatives: all_gather with gradients, and text keys.

:func:`all_gather_with_grad` concatenates every rank's tensor (in rank order, sizes may differ) and
routes the gradient of the concatenation back to each rank's own rows, summed over all ranks' losses:
with DDP averaging the parameter gradients, a gathered loss then has exactly the gradients of one
process holding the combined batch.

Text keys (64-bit hashes of normalized texts, made by the collator) let a loss recognise the same
document on another rank: :func:`batch_text_keys` publishes a batch's keys to the losses computed
inside it, so wrappers (MRL) and tasks need not pass them through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

_KEYS: ContextVar[tuple[torch.Tensor, torch.Tensor] | None] = ContextVar("ragr_text_keys", default=None)


def text_key(text: str) -> int:
    """A stable non-negative 63-bit key of ``text`` (the same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sizes(n: int, device: torch.device) -> list[int]:
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    bufs = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(bufs, padded.contiguous())
    return torch.cat([b[:n] for b, n in zip(bufs, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # noqa: D102
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_padded(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss saw these rows
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(every rank's x concatenated along dim 0 in rank order, offset of this rank's rows)``.

    Outside a multi-process group this is ``(x, 0)``. Gradients reach every rank's ``x``.
    """
    if not is_distributed():
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    rank = dist.get_rank()
    return _AllGatherWithGrad.apply(x, sizes, rank), sum(sizes[:rank])


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 (sizes may differ); no gradient."""
    if not is_distributed():
        return x
    return _gather_padded(x, _sizes(x.shape[0], x.device))


@contextmanager
def batch_text_keys(doc_keys: torch.Tensor | None, pos_keys: torch.Tensor | None) -> Iterator[None]:
    """Make a batch's text keys visible to losses computed inside the block.

    Args:
        doc_keys: ``[N]`` int64, the key of each (flattened) document.
        pos_keys: ``[B, P]`` int64, the keys of each query's positives, padded with -1.
    """
    token = _KEYS.set((doc_keys, pos_keys) if doc_keys is not None and pos_keys is not None else None)
    try:
        yield
    finally:
        _KEYS.reset(token)


def current_text_keys() -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(doc_keys, pos_keys)`` published by the innermost :func:`batch_text_keys`, if any."""
    return _KEYS.get()
