"""Cached-gradient (GradCache) contrastive steps: any batch size in the memory of one chunk.

A contrastive loss couples every text of a step (each query is scored against every document), so
plain training keeps the activations of the whole step. GradCache (Gao et al., "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", 2021) splits the step in two passes:

1. embed every text without keeping activations, chunk by chunk (length-sorted, as
   :class:`ragr.families.forward.ChunkedForward` plans them), and compute the loss on those embeddings;
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



def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _Side:
    """One side of the step (queries or documents): its chunks, pass-1 RNG states and embeddings.

    The chunks are the family's collective-safe plan (:class:`ragr.families.forward.ChunkedForward`, or the
    packed / bucketed strategy that ``trainer.forward`` picks): the same cut as a plain step, with the count
    agreed across ranks; filler chunks are run in both passes and receive a zero gradient.
    """

    def __init__(self, fwd, family, texts: Sequence[str], is_query: bool) -> None:
        self.fwd, self.forward, self.device = fwd, fwd.module, fwd.device
        lengths, make_chunk = family.prepare(fwd.model, texts, is_query)
        plan, self.fillers = fwd.plan(lengths)
        self.chunks = fwd.features(plan, self.fillers, make_chunk, lengths)
        self.order = [i for idx in plan for i in idx]
        self.states = []
        parts = []
        with torch.no_grad():
            for chunk in self.chunks:
                self.states.append(_rng_state(self.device))
                parts.append(self._run(chunk))
        out = torch.cat(parts[: len(parts) - self.fillers])
        self.inverse = torch.empty(len(self.order), dtype=torch.long)
        self.inverse[torch.tensor(self.order)] = torch.arange(len(self.order))
        self.embeddings = out[self.inverse.to(out.device)]  # input order

    def _run(self, chunk) -> torch.Tensor:
        return self.fwd.call(chunk)  # the strategy's call: chunked as it is, or the backbone packed / bucketed

    def replay(self, grad: torch.Tensor, sync_last: bool) -> None:
        """Pass 2: re-embed each chunk with gradients and backpropagate its rows of ``grad``."""
        grad = grad[torch.tensor(self.order, device=grad.device)]  # chunk order
        at = 0
        for c, chunk in enumerate(self.chunks):
            last = sync_last and c == len(self.chunks) - 1
            no_sync = getattr(self.forward, "no_sync", None)  # DDP: all-reduce once, on the step's last chunk
            ctx = no_sync() if no_sync is not None and not last else nullcontext()
            with ctx:
                _set_rng_state(self.states[c], self.device)
                out = self._run(chunk)
                if c >= len(self.chunks) - self.fillers:  # a collective filler: a zero gradient, the same backward
                    torch.autograd.backward(out, torch.zeros_like(out))
                    continue
                n = chunk.rows
                torch.autograd.backward(out, grad[at : at + n].to(out.dtype))
            at += n


def cached_step(fwd, family, loss_fn: Callable[..., dict[str, torch.Tensor]], queries: Sequence[str],
                docs: Sequence[str], extra: Sequence[Any], keys: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The loss dict of one contrastive step computed GradCache-style (see the module docstring).

    Args:
        fwd: the step's :class:`ragr.families.forward.ChunkedForward` (module to call, model, device, chunk size).
        family: a family producing ``vectors`` with a ``prepare(model, texts, is_query)`` (the embedder).
        loss_fn: called as ``loss_fn(q_emb.float(), d_emb.float(), *extra, **keys)``.

    Returns:
        The loss dict; ``["loss"]`` has the plain loss's value, and its ``backward()`` re-embeds every
        chunk and accumulates the plain step's gradients into the parameters.
    """
    device = fwd.device
    dev_type = device.type
    autocast = (torch.is_autocast_enabled(dev_type), torch.get_autocast_dtype(dev_type))
    q_side = _Side(fwd, family, queries, True)
    d_side = _Side(fwd, family, docs, False)
    q = q_side.embeddings.detach().float().requires_grad_()
    d = d_side.embeddings.detach().float().requires_grad_()
    with torch.enable_grad():
        out = loss_fn(q, d, *extra, **(keys or {}))
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
    from ragr.train.health import vector_diagnostics  # the collapse signal of a plain step (health.py)

    return {**out, "loss": loss, **vector_diagnostics(q, d)}
