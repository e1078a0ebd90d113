"""Stella/Jasper stage 3: distill teacher vectors into a student embedder (with a Dense head to their width).

``loss = w_cos * cosine + w_sim * similarity + w_hinge * hinge`` where, for a batch of ``B`` texts,

* ``cosine`` = mean over texts of ``1 - cos(student_i, teacher_i)`` (full width);
* ``similarity`` = MSE between the student's in-batch cosine-similarity matrix ``[B, B]`` and the
  teacher's (both normalized), averaged over the MRL prefix sizes ``dims`` (each prefix re-normalized);
* ``hinge`` = the relative-similarity (triplet) loss over pairs of in-batch similarities, averaged
  over ``dims``: take the ``P = B(B-1)/2`` similarities ``v_k`` of the text pairs ``i < j`` (row-major
  order); for every pair of pairs ``a < b`` the teacher's order gives ``y = +1`` if ``t_a > t_b``
  else ``-1``, and the student pays ``relu(y * (s_b - s_a) + margin)``; the mean is over the
  ``P(P-1)/2`` pairs of pairs.

Memory bound: the hinge never builds the ``[P, P]`` (= ``O(B^4)``) matrix of pairs of pairs. Sorting
the pairs by the teacher's similarity (ties kept in pair order, which reproduces the reference's tie
rule) turns it into ``sum over i < j of relu(u_i - u_j + margin)`` for the student's similarities
``u`` in that order, which a merge-sort style divide and conquer sums exactly: at each of the
``log2 P`` levels, every element of a right half counts (``searchsorted``) and sums (suffix sums)
the elements of its sorted left half that exceed ``u_j - margin``. Memory is ``O(P) = O(B^2)``
(a few vectors of ``2P`` values), time ``O(P log^2 P)``; the backward pass recomputes the counts
level by level instead of storing them.

References:
    Zhang et al., "Jasper and Stella: distillation of SOTA embedding models", 2024 (arXiv:2412.19048);
    RAG-Retrieval (NLPJCL), ``rag_retrieval/train/embedding/model_distill.py`` (weights 10 / 200 / 20,
    margin 0.015).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def upper_pairs(sim: torch.Tensor) -> torch.Tensor:
    """The entries ``sim[i, j]`` with ``i < j``, row-major: a vector of ``B(B-1)/2`` values."""
    b = sim.shape[0]
    i, j = torch.triu_indices(b, b, offset=1, device=sim.device)
    return sim[i, j]


def _padded(u: torch.Tensor, margin: float) -> tuple[torch.Tensor, int, float]:
    """``u`` padded to a power of two with one value above every ``u + margin`` (a pad never forms an active
    term with a real element; the ``n_pad(n_pad - 1)/2`` pad-pad terms are exactly ``margin`` each), and the
    width ``R`` of a value range that separates blocks: block ``b`` is shifted by ``b * R``."""
    n = u.shape[0]
    size = 1 << max(0, (n - 1).bit_length())
    top = float(u.max()) + margin + 1.0
    width = top - float(u.min()) + 2 * margin + 1.0
    if size > n:
        u = torch.cat([u, u.new_full((size - n,), top)])
    return u, n, width


def _levels(x: torch.Tensor, width: float):
    """Per merge level: ``(h, block offsets [nb, 1], left [nb, h], right [nb, h])``."""
    h = 1
    while h < x.shape[0]:
        halves = x.view(-1, 2, h)
        offsets = torch.arange(halves.shape[0], device=x.device, dtype=x.dtype)[:, None] * width
        yield h, offsets, halves[:, 0], halves[:, 1]
        h *= 2


def _count_above(sorted_blocks: torch.Tensor, offsets: torch.Tensor, queries: torch.Tensor, strict_above: bool):
    """Per query of block ``b``: global position in the block-shifted sorted array, and the block start.

    One 1-D ``searchsorted`` (fast on CPU and GPU) instead of one per block: shifting block ``b`` by
    ``b * width`` keeps the whole array sorted and every shifted query inside its own block.
    """
    nb, h = sorted_blocks.shape
    flat = (sorted_blocks + offsets).reshape(-1)
    pos = torch.searchsorted(flat, (queries + offsets).reshape(-1), right=strict_above).view(nb, h)
    start = torch.arange(nb, device=flat.device)[:, None] * h
    return pos, start


class _SortedPairHinge(torch.autograd.Function):
    """``sum_{i < j} relu(u_i - u_j + margin)`` by divide and conquer (see the module docstring)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, margin: float) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.margin = margin
        x, n, width = _padded(u, margin)
        n_pad = x.shape[0] - n
        total = x.new_zeros(())
        for h, offsets, left, right in _levels(x, width):
            ls = left.sort(-1).values
            prefix = torch.cat([ls.new_zeros(1), ls.reshape(-1).cumsum(0)])
            pos, start = _count_above(ls, offsets, right - margin, strict_above=True)  # left values > u_j - margin
            count = (start + h - pos).to(x.dtype)
            above = prefix[start + h] - prefix[pos]                                     # their sum
            total += (above + count * (margin - right)).sum()
        return total - margin * (n_pad * (n_pad - 1) // 2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (u,) = ctx.saved_tensors
        margin = ctx.margin
        x, n, width = _padded(u, margin)
        grad = torch.zeros_like(x)
        for h, offsets, left, right in _levels(x, width):
            g = grad.view(-1, 2, h)
            ls, rs = left.sort(-1).values, right.sort(-1).values
            pos, start = _count_above(ls, offsets, right - margin, strict_above=True)
            g[:, 1] -= (start + h - pos).to(x.dtype)   # d/du_j = -(number of active terms with j on the right)
            pos, start = _count_above(rs, offsets, left + margin, strict_above=False)
            g[:, 0] += (pos - start).to(x.dtype)       # d/du_i = +(number of right values below u_i + margin)
        return grad[:n] * grad_out, None


def pair_hinge(student_pairs: torch.Tensor, teacher_pairs: torch.Tensor, margin: float = 0.015) -> torch.Tensor:
    """Mean relative-similarity hinge over all pairs of pairs (see the module docstring); 0 when ``P < 2``.

    For pairs of pairs ``a < b``: ``y = +1`` if ``t_a > t_b`` else ``-1``; the term is
    ``relu(y * (s_b - s_a) + margin)``. Computed in float64 in ``O(P log^2 P)`` time and ``O(P)`` memory.
    """
    p = student_pairs.shape[0]
    n = p * (p - 1) // 2
    if n == 0:
        return student_pairs.sum() * 0.0
    order = torch.sort(teacher_pairs.detach(), stable=True).indices  # ties keep pair order: the reference's y = -1
    u = student_pairs.double()[order]
    return (_SortedPairHinge.apply(u, float(margin)) / n).to(student_pairs.dtype)


class StellaLoss(nn.Module):
    """Stella/Jasper stage-3 loss between student vectors and (concatenated) teacher vectors.

    Args:
        cosine_weight: ``w_cos`` (RAG-Retrieval: 10).
        similarity_weight: ``w_sim`` (200).
        hinge_weight: ``w_hinge`` (20).
        margin: hinge margin ``m`` (0.015).
        dims: MRL prefix sizes for the similarity and hinge parts; None or empty: the full width.
            Sizes above the student's width are dropped with a warning.
        embed_dim: the student's width (filled in by the builder).

    Inputs:
        student: ``[B, D]`` student vectors (Dense head output; normalized or not).
        teacher: ``[B, D]`` teacher vectors (normalized here).

    Returns:
        ``{"loss", "cosine", "similarity", "hinge"}`` (the parts unweighted).

    References:
        Zhang et al., "Jasper and Stella: distillation of SOTA embedding models", 2024.
    """

    runtime_args = ("embed_dim",)

    objective = "vectors"
    consumes = ("vectors",)
    targets = "teacher_vectors"

    def __init__(self, cosine_weight: float = 10.0, similarity_weight: float = 200.0, hinge_weight: float = 20.0,
                 margin: float = 0.015, dims: Sequence[int] | None = None, embed_dim: int | None = None) -> None:
        super().__init__()
        dims = [int(d) for d in (dims or [])]
        if any(d <= 0 for d in dims):
            raise ValueError("loss.dims must be positive")
        if embed_dim is not None:
            dropped = [d for d in dims if d > embed_dim]
            if dropped:
                warnings.warn(f"stella dims {dropped} exceed the student width {embed_dim}; dropped", stacklevel=2)
            dims = [d for d in dims if d <= embed_dim]
        self.dims = dims  # empty: the full width of whatever comes in
        self.cosine_weight, self.similarity_weight, self.hinge_weight = float(cosine_weight), float(similarity_weight), float(hinge_weight)
        self.margin = float(margin)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"student vectors {tuple(student.shape)} and teacher vectors {tuple(teacher.shape)} differ; "
                             "the student needs a Dense head to the teacher width")
        with torch.autocast(device_type=student.device.type, enabled=False):  # margin 0.015 < bf16 resolution near 1
            return self._forward(student.float(), F.normalize(teacher.float().to(student.device), dim=-1))

    def _forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        cosine = (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        t_sim = teacher @ teacher.T
        t_pairs = upper_pairs(t_sim)
        dims = self.dims or [student.shape[1]]
        similarity = student.new_zeros(())
        hinge = student.new_zeros(())
        for d in dims:
            s = F.normalize(student[:, :d], dim=-1)
            s_sim = s @ s.T
            similarity = similarity + F.mse_loss(s_sim, t_sim)
            hinge = hinge + pair_hinge(upper_pairs(s_sim), t_pairs, self.margin)
        similarity, hinge = similarity / len(dims), hinge / len(dims)
        loss = self.cosine_weight * cosine + self.similarity_weight * similarity + self.hinge_weight * hinge
        return {"loss": loss, "cosine": cosine.detach(), "similarity": similarity.detach(), "hinge": hinge.detach()}
