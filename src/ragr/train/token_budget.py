"""Token-budget batching (``trainer.max_tokens_per_batch``): each micro-batch takes as many examples
as fit a token budget, instead of a fixed ``batch_size``.

Determinism (exact resume, every rank agreeing) works as with fixed batches: epoch ``e`` visits the
examples in the seeded permutation ``rng(seed, e)`` (the same one the engine uses), and that order
is cut greedily into *packs*: a pack takes examples while their summed cost stays within the budget
(an example over the budget gets a pack of its own); packs never cross an epoch boundary. The
packs of all epochs, in order, form one sequence; optimizer step ``s`` takes packs
``(s * grad_accum + a) * world + rank``, for each micro-step ``a`` and rank. So a step is a function
of ``(seed, s)`` alone, and a resumed run reads exactly what the uninterrupted run would.

Step and epoch accounting: epoch ``e`` has ``K_e`` packs (it varies a little from epoch to epoch,
since the cut depends on the order). The run has ``max_steps`` steps or, when that is unset,
``floor(sum of K_e over the epochs / (grad_accum * world))``; a step whose packs run past an epoch
continues into the next epoch's packs. The ``epoch`` the engine logs is nominal
(``step // steps_per_epoch`` with ``steps_per_epoch = K_0 // (grad_accum * world)``); the dataset is
always set to each pack's true epoch.

An example's cost is its expected token count (see :meth:`ragr.train.tasks.EmbedderTask.example_costs`):
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
        budget: tokens per micro-batch (``trainer.max_tokens_per_batch``), per process.
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
        """Example indices of each pack of ``epoch`` (computed once, in epoch order)."""
        while len(self._packs) <= epoch:
            e = len(self._packs)
            perm = self.permutation(e)
            self._packs.append([perm[p] for p in pack(self.costs[perm], self.budget)])
            self._starts.append(self._starts[-1] + len(self._packs[-1]))
        return self._packs[epoch]

    @property
    def per_step(self) -> int:
        return self.grad_accum * self.world

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
        m = (step * self.grad_accum + a) * self.world + rank
        epoch = 0
        while True:
            packs = self.packs(epoch)
            if m < self._starts[epoch + 1]:
                return epoch, [int(i) for i in packs[m - self._starts[epoch]]]
            epoch += 1
