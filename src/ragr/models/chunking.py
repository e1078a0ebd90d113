"""Cheap training forwards: length-planned chunks and one shared input-embedding lookup per step.

Training encodes a step's texts in several forward passes ("chunks"), each padded only to its own
longest text. Two things decide what a step costs on top of the real tokens:

* **Padding.** :func:`plan_chunks` sorts the texts by length and cuts the sorted list where the
  total of ``rows × longest + overhead`` is smallest (an exact dynamic programme), so long texts
  get small chunks of their own and short ones share big chunks. ``overhead`` is what one more
  forward pass costs, in tokens: small on a CPU, where arithmetic dominates, large on a GPU, where
  a launch-bound small chunk costs as much as a full one.
* **The input-embedding backward.** Every forward's embedding lookup has its own backward, and each
  of those writes a dense gradient as large as the whole vocabulary table (47 MB for MiniLM's
  30,522 × 384). :func:`shared_input_embeddings` looks up all chunks' ids at once and hands each
  forward its slice, so the step pays for one such backward instead of one per chunk.

Neither changes the result: attention masks make a text's vectors independent of its chunk, and
the shared lookup is the same gather (tests compare both with one plainly padded forward).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

#: What one more forward pass costs, in tokens of work (measured: about 17 ms per MiniLM chunk on a
#: 2-core CPU running ~2,700 training tokens/s; a GPU's launch overhead is worth far more tokens).
CHUNK_OVERHEAD_TOKENS = {"cpu": 64, "cuda": 1024}


def chunk_overhead(device: torch.device | str) -> int:
    """The per-chunk overhead (tokens) to plan with on ``device``."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return CHUNK_OVERHEAD_TOKENS.get(kind, CHUNK_OVERHEAD_TOKENS["cuda"])


def plan_chunks(lengths: Sequence[int], max_rows: int, overhead: int = CHUNK_OVERHEAD_TOKENS["cpu"]) -> list[list[int]]:
    """Indices of ``lengths`` grouped into forward chunks of at most ``max_rows``, shortest first.

    Minimises ``sum(rows × longest + overhead)`` over all cuts of the length-sorted list (the
    padded tokens each chunk computes plus a fixed cost per chunk). Ties keep the stable sort, so
    the plan is deterministic.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[order[end - 1]]
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * longest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks = []
    end = n
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


def input_embedding_to_share(model: nn.Module, forward) -> nn.Module | None:
    """The trainable input-embedding module of ``model``'s backbone, when sharing its lookup is safe.

    Safe when ``forward`` runs the parameters in place: the module itself or DDP around it (FSDP and
    ZeRO-3 shard the table, so a lookup outside their forward would see a shard). ``None`` otherwise,
    and when the table is frozen (LoRA), where its backward costs nothing.
    """
    if forward is not model and type(forward).__name__ != "DistributedDataParallel":
        return None
    if any(c.__name__.startswith("FSDP") for c in type(model).__mro__):  # FSDP2 shards in place
        return None
    backbone = getattr(model, "backbone", None)
    get = getattr(backbone, "get_input_embeddings", None)
    emb = get() if get is not None else None
    if not isinstance(emb, nn.Embedding) or not emb.weight.requires_grad or not torch.is_grad_enabled():
        return None
    if type(emb.weight.data) is not torch.Tensor:  # a DTensor or other sharded parameter
        return None
    return emb


def forward_chunks(forward, model: nn.Module, order: Sequence[int], chunks: Sequence[dict[str, torch.Tensor]],
                   post=None, fillers: int = 0) -> torch.Tensor:
    """``forward(**chunk)`` for each chunk, sharing one input-embedding lookup; rows back in input order.

    ``order`` lists the input index of each output row, chunk after chunk (a plan flattened); ``post``
    maps each chunk's output before they are joined (ColBERT pads token vectors back to one width).
    The last ``fillers`` chunks are collective fillers (see :mod:`ragr.families.forward`): they are
    run, and enter the result multiplied by zero, so their backward runs too.
    """
    with shared_input_embeddings(input_embedding_to_share(model, forward), [c["input_ids"] for c in chunks]):
        parts = [forward(**c) for c in chunks]
    extra = parts[len(parts) - fillers :] if fillers else []
    parts = parts[: len(parts) - fillers]
    out = torch.cat([post(p) for p in parts] if post is not None else parts)
    for filler in extra:
        out = out + filler.sum() * 0
    at = torch.tensor(list(order), device=out.device)
    inverse = torch.empty_like(at)
    inverse[at] = torch.arange(len(at), device=out.device)
    return out[inverse]


@contextmanager
def shared_input_embeddings(module: nn.Module | None, id_chunks: Sequence[torch.Tensor]) -> Iterator[None]:
    """While active, the ``i``-th call of ``module`` returns the ``i``-th slice of one joint lookup.

    Each call must receive exactly ``id_chunks[i]`` (checked; on any mismatch the hook steps aside and
    the module's own output is used from then on). ``module=None`` makes this a no-op.
    """
    if module is None or not id_chunks:
        yield
        return
    table = module(torch.cat([c.reshape(-1) for c in id_chunks]))
    slices = iter(zip(id_chunks, torch.split(table, [c.numel() for c in id_chunks])))
    active = [True]

    def hook(_mod, args, output):
        if not active[0]:
            return None
        expected = next(slices, None)
        ids = args[0] if args else None
        if expected is None or ids is None or (ids is not expected[0] and (  # identity: no device sync
                ids.shape != expected[0].shape or not torch.equal(ids, expected[0]))):
            active[0] = False
            return None
        return expected[1].view(output.shape)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
