"""Cached-gradient (GradCache) contrastive steps: any batch size in the memory of one chunk.

A contrastive loss couples every text of a step (each query is scored against every document), so
plain training keeps the activations of the whole step. GradCache (Gao et al., "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", 2021) splits the step in two passes:

1. embed every text without keeping activations, chunk by chunk (length-sorted, as
   :meth:`ragr.models.embedder.Embedder.embed` cuts them), and compute the loss on those embeddings;
   take the gradient of the loss with respect to the embeddings (cheap: the loss is a small matrix);
2. on backward, re-embed each chunk with gradients and backpropagate its cached embedding gradient
   into the encoder, one chunk at a time.

The chain rule makes the parameter gradients those of the plain step. Dropout stays exact: the RNG
state before each chunk of pass 1 is saved and restored before the same chunk of pass 2, so both
passes draw the same masks (and pass 1 draws exactly what the plain step would, so the loss value and
the RNG stream after the step match a plain run too). The cost is one extra forward pass.

:func:`cached_step` returns a loss tensor whose ``backward()`` runs pass 2, so a training loop calls
it like any loss (scaling by gradient accumulation, GradScaler, DDP ``no_sync`` all apply).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ragr.models.chunking import chunk_overhead


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _Side:
    """One side of the step (queries or documents): its chunks, pass-1 RNG states and embeddings."""

    def __init__(self, forward, unwrapped, texts: Sequence[str], is_query: bool, chunk_size: int, device) -> None:
        self.forward, self.device = forward, device
        # the same cut as Embedder.embed (so pass 1 draws the same dropout masks as a plain step)
        self.order, self.chunks = unwrapped.chunk_features(texts, is_query, chunk_size, chunk_overhead(device))
        self.states = []
        parts = []
        with torch.no_grad():
            for feats in self.chunks:
                self.states.append(_rng_state(device))
                parts.append(self._run(feats))
        out = torch.cat(parts)
        self.inverse = torch.empty(len(self.order), dtype=torch.long)
        self.inverse[torch.tensor(self.order)] = torch.arange(len(self.order))
        self.embeddings = out[self.inverse.to(out.device)]  # input order

    def _run(self, feats: dict) -> torch.Tensor:
        return self.forward(input_ids=feats["input_ids"].to(self.device),
                            attention_mask=feats["attention_mask"].to(self.device))

    def replay(self, grad: torch.Tensor, sync_last: bool) -> None:
        """Pass 2: re-embed each chunk with gradients and backpropagate its rows of ``grad``."""
        grad = grad[torch.tensor(self.order, device=grad.device)]  # chunk order
        at = 0
        for c, feats in enumerate(self.chunks):
            n = feats["input_ids"].shape[0]
            last = sync_last and c == len(self.chunks) - 1
            no_sync = getattr(self.forward, "no_sync", None)  # DDP: all-reduce once, on the step's last chunk
            ctx = no_sync() if no_sync is not None and not last else nullcontext()
            with ctx:
                _set_rng_state(self.states[c], self.device)
                out = self._run(feats)
                torch.autograd.backward(out, grad[at : at + n].to(out.dtype))
            at += n


def cached_step(forward, unwrapped, loss_fn: Callable[..., dict[str, torch.Tensor]], queries: Sequence[str],
                docs: Sequence[str], extra: Sequence[Any], chunk_size: int, device) -> dict[str, torch.Tensor]:
    """The loss dict of one contrastive step computed GradCache-style (see the module docstring).

    Args:
        forward: the module to call (possibly DDP-wrapped) with ``input_ids`` / ``attention_mask``.
        unwrapped: the :class:`~ragr.models.embedder.Embedder` (tokenizer, prompts, lengths).
        loss_fn: called as ``loss_fn(q_emb.float(), d_emb.float(), *extra)``.
        chunk_size: texts per forward pass in both passes; memory is bounded by it.

    Returns:
        The loss dict; ``["loss"]`` has the plain loss's value, and its ``backward()`` re-embeds every
        chunk and accumulates the plain step's gradients into the parameters.
    """
    device = torch.device(device)
    dev_type = device.type
    autocast = (torch.is_autocast_enabled(dev_type), torch.get_autocast_dtype(dev_type))
    q_side = _Side(forward, unwrapped, queries, True, chunk_size, device)
    d_side = _Side(forward, unwrapped, docs, False, chunk_size, device)
    q = q_side.embeddings.detach().float().requires_grad_()
    d = d_side.embeddings.detach().float().requires_grad_()
    with torch.enable_grad():
        out = loss_fn(q, d, *extra)
        g_q, g_d = torch.autograd.grad(out["loss"], [q, d])
    loss = out["loss"].detach().requires_grad_()

    def backward_hook(grad_out: torch.Tensor) -> None:
        # runs inside loss.backward(): grad mode is off there, and autocast is re-entered explicitly
        forks = [device] if dev_type == "cuda" else []
        with torch.random.fork_rng(devices=forks), torch.enable_grad(), \
                torch.autocast(dev_type, dtype=autocast[1], enabled=autocast[0]):
            q_side.replay(g_q * grad_out, sync_last=False)
            d_side.replay(g_d * grad_out, sync_last=True)

    loss.register_hook(backward_hook)
    return {**out, "loss": loss}
