"""Stella/Jasper stage-3 loss: each part and the total against numpy loops; the hinge without O(B^4) memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ragr.losses import build_loss
from ragr.losses.stella import StellaLoss, pair_hinge, upper_pairs


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_upper(sim):
    b = sim.shape[0]
    return np.array([sim[i, j] for i in range(b) for j in range(i + 1, b)])


def np_hinge(s_pairs, t_pairs, margin):
    """The O(P^2) = O(B^4) loop over pairs of pairs a < b, as RAG-Retrieval's get_score_diff + triplet loss."""
    total, n = 0.0, 0
    p = len(s_pairs)
    for a in range(p):
        for b in range(a + 1, p):
            y = 1.0 if t_pairs[b] - t_pairs[a] < 0 else -1.0
            total += max(0.0, y * (s_pairs[b] - s_pairs[a]) + margin)
            n += 1
    return total / n if n else 0.0


def np_stella(student, teacher, dims, w=(10.0, 200.0, 20.0), margin=0.015):
    s_full, tn = np_normalize(student), np_normalize(teacher)
    cosine = np.mean(1 - np.sum(s_full * tn, -1))
    t_sim = tn @ tn.T
    sims, hinges = [], []
    for d in dims:
        s = np_normalize(student[:, :d])
        s_sim = s @ s.T
        sims.append(np.mean((s_sim - t_sim) ** 2))
        hinges.append(np_hinge(np_upper(s_sim), np_upper(t_sim), margin))
    sim, hinge = np.mean(sims), np.mean(hinges)
    return {"cosine": cosine, "similarity": sim, "hinge": hinge, "loss": w[0] * cosine + w[1] * sim + w[2] * hinge}


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(7, 12))
    student = teacher + 0.8 * rng.normal(size=(7, 12))  # correlated, so the hinge is partly satisfied
    return student, teacher


def test_pair_hinge_equals_the_naive_o_b4_loop_in_value_and_gradient(batch):
    student, teacher = batch
    s_pairs = np_upper(np_normalize(student) @ np_normalize(student).T)
    t_pairs = np_upper(np_normalize(teacher) @ np_normalize(teacher).T)
    for margin in (0.015, 0.3):
        want = np_hinge(s_pairs, t_pairs, margin)
        s = torch.tensor(s_pairs, dtype=torch.float64, requires_grad=True)
        got = pair_hinge(s, torch.tensor(t_pairs), margin)
        assert float(got.detach()) == pytest.approx(want, rel=1e-6)
        got.backward()
        # gradient of the naive form, by autograd on the full [P, P] matrix
        s2 = torch.tensor(s_pairs, dtype=torch.float64, requires_grad=True)
        t2 = torch.tensor(t_pairs, dtype=torch.float64)
        y = torch.where(t2[None, :] - t2[:, None] < 0, 1.0, -1.0).double()
        upper = torch.triu(torch.ones(len(s_pairs), len(s_pairs), dtype=torch.bool), 1)
        torch.relu(y * (s2[None, :] - s2[:, None]) + margin)[upper].mean().backward()
        assert torch.allclose(s.grad.double(), s2.grad, atol=1e-6)


def test_hinge_ties_in_the_teacher_follow_the_reference_convention():
    s = np.array([0.3, 0.5, 0.1])
    tt = np.array([0.2, 0.2, 0.9])  # pairs 0 and 1 tie in the teacher
    got = float(pair_hinge(torch.tensor(s), torch.tensor(tt), 0.015))
    assert got == pytest.approx(np_hinge(s, tt, 0.015), rel=1e-6)


@pytest.mark.parametrize("dims", [[4, 8, 12], [12], [6]])
def test_parts_and_total_with_the_documented_defaults(batch, dims):
    student, teacher = batch
    loss = StellaLoss(dims=dims)
    assert (loss.cosine_weight, loss.similarity_weight, loss.hinge_weight, loss.margin) == (10.0, 200.0, 20.0, 0.015)
    got = loss(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32))
    want = np_stella(student, teacher, dims)
    for key in ("cosine", "similarity", "hinge", "loss"):
        assert float(got[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_weights_and_margin_are_configurable(batch):
    student, teacher = batch
    loss = build_loss({"name": "stella", "cosine_weight": 1.0, "similarity_weight": 2.0, "hinge_weight": 3.0,
                       "margin": 0.1, "dims": [6, 12]}, embed_dim=12)
    got = loss(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32))
    want = np_stella(student, teacher, [6, 12], w=(1.0, 2.0, 3.0), margin=0.1)
    assert float(got["loss"]) == pytest.approx(want["loss"], rel=1e-4)


def test_empty_or_oversized_mrl_dims_do_not_divide_by_zero(batch):
    student, teacher = batch
    s, t = torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32)
    want = np_stella(student, teacher, [12])["loss"]
    for dims in (None, []):
        assert float(StellaLoss(dims=dims)(s, t)["loss"]) == pytest.approx(want, rel=1e-4)
    with pytest.warns(UserWarning, match="exceed"):
        loss = StellaLoss(dims=[64, 128], embed_dim=12)  # every dim dropped: the full width is used
    assert torch.isfinite(loss(s, t)["loss"]) and float(loss(s, t)["loss"]) == pytest.approx(want, rel=1e-4)


def test_tiny_batches_have_no_pairs_of_pairs():
    s = torch.randn(2, 8, requires_grad=True)  # one text pair: no pair of pairs
    out = StellaLoss()(s, torch.randn(2, 8))
    assert float(out["hinge"]) == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(s.grad).all()


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_memory_stays_o_b2_never_o_b4():
    """B = 256: P = 32640 text pairs, so a [P, P] tensor would hold 1.07e9 floats (4 GiB); the largest tensor
    of the forward and backward passes is a vector of the pairs padded to a power of two."""
    b, dim = 256, 16
    p = b * (b - 1) // 2
    student = torch.randn(b, dim, requires_grad=True)
    loss = StellaLoss(dims=[8, 16])
    with LargestTensor() as probe:
        out = loss(student, torch.randn(b, dim))
        out["loss"].backward()
    bound = max(2 * p + 2, b * b, b * dim)  # padded pair vectors (+ suffix-sum column), similarity matrices
    assert probe.largest <= bound, (probe.largest, bound)
    assert probe.largest < p * p / 100
    assert torch.isfinite(student.grad).all()


def test_upper_pairs_is_row_major():
    sim = torch.arange(16.0).view(4, 4)
    assert upper_pairs(sim).tolist() == [1.0, 2.0, 3.0, 6.0, 7.0, 11.0]


def test_autocast_does_not_round_the_similarities(batch):
    student, teacher = batch
    s, t = torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32)
    want = np_stella(student, teacher, [12])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = StellaLoss()(s, t)
    assert float(got["hinge"]) == pytest.approx(want["hinge"], rel=1e-4)
    assert float(got["similarity"]) == pytest.approx(want["similarity"], rel=1e-4)
