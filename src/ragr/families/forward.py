"""How a family's batch becomes model outputs in training: length-planned chunks, collective-safe.

A family hands :meth:`ChunkedForward.run` the length of each input and a ``make_chunk(indices)``
that pads those inputs into one forward's features; the runner plans the chunks
(:func:`ragr.models.chunking.plan_chunks`: each chunk padded only to its own longest input),
shares one input-embedding lookup among them, and returns the outputs in input order.

**Every rank makes the same calls.** DDP broadcasts buffers in each forward, FSDP and ZeRO-3
gather parameters in each forward: a rank that runs three chunks while another runs two waits
forever. So, under several ranks, the ranks first agree on the chunk count (one ``all_reduce(MAX)``
of a small integer per call, the same call on every rank), and a rank with fewer chunks splits
its largest ones (exact: a text's output does not depend on its chunk) or, with fewer inputs than
chunks, runs one-input filler chunks whose outputs enter the result multiplied by zero, so every
rank also runs the same backward. The wrapped module is therefore called a rank-independent number
of times per micro-step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ragr.models.chunking import chunk_overhead, forward_chunks, plan_chunks


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agree_count(n: int, device: torch.device) -> int:
    """The largest ``n`` over all ranks (``n`` itself in one process): one all_reduce, on every rank."""
    if _world() == 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def split_to(plan: list[list[int]], count: int) -> tuple[list[list[int]], int]:
    """``plan`` cut into exactly ``count`` chunks where it has enough inputs; returns ``(plan, fillers)``.

    The chunk with the most rows is halved until the count is reached (the halves keep the length
    order, so the padding cost grows least); ``fillers`` is how many one-input chunks are still missing.
    """
    plan = [list(c) for c in plan if c]
    while len(plan) < count:
        k = max(range(len(plan)), key=lambda i: len(plan[i])) if plan else None
        if k is None or len(plan[k]) < 2:
            break
        c = plan.pop(k)
        plan[k:k] = [c[: len(c) // 2], c[len(c) // 2 :]]
    return plan, count - len(plan)


class ChunkedForward:
    """Calls ``module`` (the wrapped model) on length-planned chunks; see the module docstring.

    Args:
        module: what to call (the model, or DDP / FSDP / DeepSpeed around it).
        model: the unwrapped model (its input embeddings are shared across chunks).
        device: where the features go.
        chunk_size: at most this many inputs per forward.
    """

    def __init__(self, module: nn.Module, model: nn.Module, device: torch.device | str, chunk_size: int) -> None:
        self.module, self.model, self.device, self.chunk_size = module, model, torch.device(device), chunk_size

    def plan(self, lengths: Sequence[int]) -> tuple[list[list[int]], int]:
        """``(chunks of input indices, filler count)``, with the chunk count agreed across ranks."""
        plan = plan_chunks(list(lengths), self.chunk_size, chunk_overhead(self.device))
        count = agree_count(len(plan), self.device)
        return split_to(plan, count) if count != len(plan) else (plan, 0)

    def features(self, plan: list[list[int]], fillers: int, make_chunk: Callable[[list[int]], dict]) -> list[dict]:
        """Each chunk's features on the device; filler chunks repeat input 0 (their outputs are zeroed)."""
        chunks = [make_chunk(idx) for idx in plan] + [make_chunk([0]) for _ in range(fillers)]
        return [{k: v.to(self.device) for k, v in c.items()} for c in chunks]

    def run(self, lengths: Sequence[int], make_chunk: Callable[[list[int]], dict],
            post: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs for every input, in input order (``post`` maps each chunk's output before joining)."""
        if not len(lengths):
            raise ValueError("ChunkedForward.run needs at least one input")
        plan, fillers = self.plan(lengths)
        chunks = self.features(plan, fillers, make_chunk)
        order = [i for idx in plan for i in idx]
        return forward_chunks(self.module, self.model, order, chunks, post=post, fillers=fillers)
