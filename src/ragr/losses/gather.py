"""Across-rank gathering for in-batch negatives: all_gather with gradients, and text keys.

:func:`all_gather_with_grad` concatenates every rank's tensor (in rank order, sizes may differ) and
routes the gradient of the concatenation back to each rank's own rows, summed over all ranks' losses:
with DDP averaging the parameter gradients, a gathered loss then has exactly the gradients of one
process holding the combined batch.

Text keys (64-bit hashes of normalized texts, made by the collator) let a loss recognise the same
document on another rank; the contrastive objective passes them to the loss with the batch.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


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
