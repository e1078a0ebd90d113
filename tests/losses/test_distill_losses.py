"""Score-distillation losses against numpy references on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragr.losses import build_loss
from ragr.losses.distill import BCEDistillLoss, KLDistillLoss, LLMPreferenceLoss, MSEDistillLoss

S = np.array([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 3.0, -0.4], [1.5, -2.0, 0.7, 0.0]])
T = np.array([[1.0, 2.0, -0.5, 0.0], [0.0, 0.3, 1.5, 0.2], [-1.0, 0.5, 2.5, 1.0]])
P = np.array([[0.9, 0.1, 0.3, 0.5], [0.2, 0.8, 0.6, 0.05], [0.5, 0.5, 0.99, 0.01]])
LABELS = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_kl_per_query(s, teacher, mask=None):
    """Mean over queries (>= 2 candidates) of KL(softmax(teacher) || softmax(s)), one loop per query."""
    vals = []
    for i in range(s.shape[0]):
        keep = np.ones(s.shape[1], bool) if mask is None else mask[i]
        if keep.sum() < 2:
            continue
        p, q = np_softmax(teacher[i][keep]), np_softmax(s[i][keep])
        vals.append(float(np.sum(p * (np.log(p) - np.log(q)))))
    return np.mean(vals)


def np_kl_across_batch(s, teacher):
    """What RAG-Retrieval's pair_kl_loss computes: one softmax over every pair of the batch."""
    p, q = np_softmax(teacher.ravel()), np_softmax(s.ravel())
    return float(np.sum(p * (np.log(p) - np.log(q))))


def np_listwise(s, labels):
    vals = []
    for i in range(s.shape[0]):
        target = labels[i] / labels[i].sum()
        logq = np.log(np_softmax(s[i]))
        vals.append(-np.sum(target * logq))
    return np.mean(vals)


@pytest.mark.parametrize("tau_s, tau_t", [(1.0, 1.0), (0.5, 2.0), (0.02, 0.1)])
def test_kl_is_per_query_with_temperatures(tau_s, tau_t):
    got = KLDistillLoss(temperature=tau_s, teacher_temperature=tau_t)(t(S), t(T))
    want = np_kl_per_query(S / tau_s, T / tau_t)
    assert float(got["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert float(got["distill"]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_per_query_kl_differs_from_kl_across_the_batch():
    """A case where the two disagree: the teacher prefers query 1 as a whole, which a per-query KL ignores."""
    s = np.array([[1.0, 0.0], [1.0, 0.0]])
    teacher = np.array([[1.0, 0.0], [11.0, 10.0]])  # same order and gaps within each query
    per_query = np_kl_per_query(s, teacher)
    across = np_kl_across_batch(s, teacher)
    assert per_query == pytest.approx(0.0, abs=1e-9) and across > 0.5
    got = float(KLDistillLoss(temperature=1.0)(t(s), t(teacher))["loss"])
    assert got == pytest.approx(per_query, abs=1e-6)
    assert abs(got - across) > 0.5
    got_pref = float(LLMPreferenceLoss(temperature=1.0, teacher_temperature=1.0)(t(s), t(teacher))["loss"])
    assert got_pref == pytest.approx(per_query, abs=1e-6)


def test_kl_respects_the_candidate_mask_and_skips_single_candidate_queries():
    mask = np.array([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    got = KLDistillLoss(temperature=0.7, teacher_temperature=1.3)(t(S), t(T), mask=torch.tensor(mask))
    want = np_kl_per_query(S / 0.7, T / 1.3, mask)
    assert float(got["loss"]) == pytest.approx(want, rel=1e-5)
    one = KLDistillLoss()(t(S[:, :1]), t(T[:, :1]))
    assert float(one["loss"]) == 0.0


def test_llm_preference_defaults_are_rag_retrievals_temperature():
    loss = LLMPreferenceLoss()
    sims = np.array([[0.8, 0.7, 0.1], [0.3, 0.9, 0.5]])
    scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.95]])
    want = np_kl_per_query(sims / 0.02, scores / 0.02)
    assert float(loss(t(sims), t(scores))["loss"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_mse_raw_and_prob(tau):
    raw = MSEDistillLoss(temperature=tau, space="raw")
    assert raw.teacher_space == "raw"
    assert float(raw(t(S), t(T))["loss"]) == pytest.approx(np.mean((S / tau - T) ** 2), rel=1e-5)
    prob = MSEDistillLoss(temperature=tau, space="prob")
    assert prob.teacher_space == "prob"
    sig = 1 / (1 + np.exp(-S / tau))
    assert float(prob(t(S), t(P))["loss"]) == pytest.approx(np.mean((sig - P) ** 2), rel=1e-5)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    got = raw(t(S), t(T), mask=torch.tensor(mask))
    assert float(got["loss"]) == pytest.approx(np.mean(((S / tau - T) ** 2)[mask]), rel=1e-5)


def test_bce_on_soft_labels():
    loss = BCEDistillLoss(temperature=0.5)
    assert loss.teacher_space == "prob"
    x = S / 0.5
    want = np.mean(-(P * np.log(1 / (1 + np.exp(-x))) + (1 - P) * np.log(1 - 1 / (1 + np.exp(-x)))))
    assert float(loss(t(S), t(P))["loss"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_mix_with_the_hard_label_loss(w):
    loss = KLDistillLoss(temperature=2.0, teacher_temperature=1.0, hard_weight=w)
    out = loss(t(S), t(T), labels=t(LABELS))
    kl = np_kl_per_query(S / 2.0, T)
    hard = np_listwise(S / 2.0, LABELS)
    assert float(out["loss"]) == pytest.approx((1 - w) * kl + w * hard, rel=1e-5)
    if w:
        assert float(out["hard"]) == pytest.approx(hard, rel=1e-5)


def test_hard_label_loss_on_pointwise_groups_is_bce():
    s, p, y = np.array([[1.2], [-0.3]]), np.array([[0.7], [0.2]]), np.array([[1.0], [0.0]])
    out = BCEDistillLoss(hard_weight=0.5)(t(s), t(p), labels=t(y))
    sig = 1 / (1 + np.exp(-s))
    bce = lambda target: np.mean(-(target * np.log(sig) + (1 - target) * np.log(1 - sig)))  # noqa: E731
    assert float(out["loss"]) == pytest.approx(0.5 * bce(p) + 0.5 * bce(y), rel=1e-5)


def test_gradients_flow_and_builder_fills_nothing_by_itself():
    s = t(S).requires_grad_()
    KLDistillLoss()(s, t(T))["loss"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    loss = build_loss({"name": "distill-kl", "temperature": None, "teacher_temperature": 1.0, "hard_weight": 0.0})
    assert loss.temperature == 1.0  # None is the reranker scale unless the distill task says otherwise


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"hard_weight": 1.5}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        KLDistillLoss(**kwargs)
