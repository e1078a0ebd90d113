"""Token-budget batching (``trainer.max_tokens_per_batch``): each micro-batch takes as many examples
as fit a token budget, instead of a fixed ``batch_size``.

Determinism (exact resume, every rank agreeing) works as with fixed batches: epoch ``e`` visits the
examples in the seeded permutation ``rng(seed, e)`` (the same one the engine uses), taken in *units*
of ``world`` consecutive examples (one per rank; the last ``n % world`` examples of an epoch are left
out, as a distributed sampler drops its tail). That order is cut greedily into *packs*: a pack takes
units while their summed cost stays within ``budget * world`` (a unit over it gets a pack of its
own); packs never cross an epoch boundary. Rank ``r`` takes the ``r``-th example of every unit of a
pack, so all ranks get the same number of examples in every micro-batch (DDP needs the same number
of forward passes on every rank). The packs of all epochs, in order, form one sequence; optimizer
step ``s`` takes pack ``s * grad_accum + a`` for micro-step ``a``. So a step is a function of
``(seed, s)`` alone, and a resumed run reads exactly what the uninterrupted run would.

Step and epoch accounting: epoch ``e`` has ``K_e`` packs (it varies a little from epoch to epoch,
since the cut depends on the order). The run has ``max_steps`` steps or, when that is unset,
``floor(sum of K_e over the epochs / grad_accum)``; a step whose packs run past an epoch continues
into the next epoch's packs. The ``epoch`` the engine logs is nominal (``step // steps_per_epoch``
with ``steps_per_epoch = K_0 // grad_accum``); the dataset is always set to each pack's true epoch.

An example's cost is its expected token count (see :meth:`ragr.families.Family.example_costs`):
the query's tokens plus the group's size times the mean length of its candidate documents, each
truncated to the model's limits, so a step's real token count is close to (not bounded by) the budget.
"""

from __future__ import annotations

import numpy as np


def pack(costs: np.ndarray, budget: float) -> list[np.ndarray]:
    """Cut ``range(len(costs))`` in order into consecutive runs of summed cost <= ``budget`` (at least one each)."""
    cum = np.concatenate([[0.0], np.cumsum(costs, dtype=np.float64)])
    out, start, n = [], 0, len(costs)
    while start < n:
        end = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1  # last end with cum[end] - cum[start] <= budget
        end = min(n, max(end, start + 1))
        out.append(np.arange(start, end))
        start = end
    return out


class TokenBudgetPlan:
    """Which examples each micro-batch takes under a token budget (see the module docstring).

    Args:
        costs: ``[N]`` expected tokens of each example.
        budget: tokens per micro-batch and process (``trainer.max_tokens_per_batch``).
        seed: the run's seed.
        world: number of processes.
        grad_accum: micro-batches per optimizer step and process.
    """

    def __init__(self, costs, budget: int, seed: int, world: int = 1, grad_accum: int = 1) -> None:
        self.costs = np.asarray(costs, dtype=np.float64)
        if self.costs.ndim != 1 or len(self.costs) == 0:
            raise ValueError("token-budget batching needs at least one example")
        self.budget, self.seed, self.world, self.grad_accum = float(budget), seed, world, grad_accum
        self._packs: list[list[np.ndarray]] = []  # per epoch, example indices of each pack
        self._starts: list[int] = [0]             # global index of each epoch's first pack

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.costs))

    def packs(self, epoch: int) -> list[np.ndarray]:
        """Each pack of ``epoch`` as an array ``[units, world]`` of example indices (computed once, in epoch order)."""
        while len(self._packs) <= epoch:
            e = len(self._packs)
            perm = self.permutation(e)
            n_units = len(perm) // self.world
            if n_units == 0:  # fewer examples than ranks: every rank takes them all, in turn
                units = np.stack([np.roll(perm, -r) for r in range(self.world)], axis=1)[:1]
            else:
                units = perm[: n_units * self.world].reshape(n_units, self.world)
            self._packs.append([units[p] for p in pack(self.costs[units].sum(1), self.budget * self.world)])
            self._starts.append(self._starts[-1] + len(self._packs[-1]))
        return self._packs[epoch]

    @property
    def per_step(self) -> int:
        return self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        """Nominal: epoch 0's packs per optimizer step (at least 1)."""
        return max(1, len(self.packs(0)) // self.per_step)

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps that cover ``epochs`` epochs (the last partial step dropped, at least 1)."""
        self.packs(max(0, epochs - 1))
        return max(1, self._starts[epochs] // self.per_step)

    def micro_batch(self, step: int, a: int, rank: int) -> tuple[int, list[int]]:
        """``(epoch, example indices)`` of micro-step ``a`` of optimizer step ``step`` on ``rank``."""
        m = step * self.grad_accum + a
        epoch = 0
        while True:
            packs = self.packs(epoch)
            if m < self._starts[epoch + 1]:
                return epoch, [int(i) for i in packs[m - self._starts[epoch]][:, rank]]
            epoch += 1
