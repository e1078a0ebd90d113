"""Reranker losses against numpy loops written from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ragr.losses import build_loss
from ragr.losses.rerank import ListwiseLoss, PairwiseLoss, PointwiseLoss

RNG = np.random.default_rng(0)
SCORES = RNG.normal(size=(3, 4))
GRADED = np.array([[3.0, 1.0, 0.0, 1.0], [2.0, 2.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
ONE_HOT = np.array([[1.0, 0, 0, 0]] * 3)


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("label_max", [1.0, 3.0])
def test_pointwise_bce_matches_numpy(label_max):
    want = []
    for s, y in zip(SCORES.ravel(), GRADED.ravel()):
        t = min(max(y / label_max, 0.0), 1.0)
        p = sigmoid(s)
        want.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
    got = PointwiseLoss(label_max=label_max)(_t(SCORES), _t(GRADED))["loss"]
    assert got.item() == pytest.approx(np.mean(want), rel=1e-5)


def test_pointwise_mse_on_sigmoid_matches_numpy():
    want = np.mean([(sigmoid(s) - min(y / 3.0, 1.0)) ** 2 for s, y in zip(SCORES.ravel(), GRADED.ravel())])
    got = PointwiseLoss(label_max=3.0, mode="mse_sigmoid")(_t(SCORES), _t(GRADED))["loss"]
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("weighting", ["gap", "none"])
def test_pairwise_ranknet_matches_numpy(weighting):
    num = den = 0.0
    for s, y in zip(SCORES, GRADED):
        for i in range(4):
            for j in range(4):
                if y[i] > y[j]:
                    w = (y[i] - y[j]) if weighting == "gap" else 1.0
                    num += w * math.log(1 + math.exp(-2.0 * (s[i] - s[j])))
                    den += w
    got = PairwiseLoss(sigma=2.0, weighting=weighting)(_t(SCORES), _t(GRADED))["loss"]
    assert got.item() == pytest.approx(num / den, rel=1e-5)


def test_pairwise_without_any_ordered_pair_is_zero_and_differentiable():
    s = _t(SCORES).requires_grad_()
    loss = PairwiseLoss()(s, torch.ones(3, 4))["loss"]
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


def test_listwise_one_positive_is_softmax_cross_entropy():
    want = np.mean([-(s[0] / 0.5 - math.log(np.exp(s / 0.5).sum())) for s in SCORES])
    got = ListwiseLoss(temperature=0.5)(_t(SCORES), _t(ONE_HOT))["loss"]
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_listwise_sigmoid_activation_is_st_mnrl_scoring():
    """sentence-transformers' cross-encoder MNRL: cross-entropy over sigmoid(logit) * 10, positive first."""
    def mnrl(s):
        z = 10.0 / (1.0 + np.exp(-s))
        return -(z[0] - math.log(np.exp(z).sum()))

    want = np.mean([mnrl(s) for s in SCORES])
    got = ListwiseLoss(temperature=0.1, activation="sigmoid")(_t(SCORES), _t(ONE_HOT))["loss"]
    assert got.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError):
        ListwiseLoss(activation="tanh")
    with pytest.raises(ValueError):
        ListwiseLoss(in_batch_negatives=-1)


def test_listwise_graded_labels_normalized_and_softmax_targets():
    def logsoftmax(v):
        return v - math.log(np.exp(v).sum())

    want_norm = np.mean([-(y / y.sum() * logsoftmax(s)).sum() for s, y in zip(SCORES, GRADED)])
    got = ListwiseLoss()(_t(SCORES), _t(GRADED))["loss"]
    assert got.item() == pytest.approx(want_norm, rel=1e-5)
    want_soft = np.mean([-(np.exp(y / 0.7) / np.exp(y / 0.7).sum() * logsoftmax(s)).sum() for s, y in zip(SCORES, GRADED)])
    got = ListwiseLoss(label_temperature=0.7)(_t(SCORES), _t(GRADED))["loss"]
    assert got.item() == pytest.approx(want_soft, rel=1e-5)


def test_listwise_skips_groups_without_relevant_candidate():
    labels = GRADED.copy()
    labels[1] = 0.0
    want = ListwiseLoss()(_t(SCORES[[0, 2]]), _t(labels[[0, 2]]))["loss"]
    assert ListwiseLoss()(_t(SCORES), _t(labels))["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_losses_build_from_config_nodes():
    assert isinstance(build_loss({"name": "pointwise", "label_max": 4.0, "mode": "bce"}), PointwiseLoss)
    assert isinstance(build_loss({"name": "pairwise", "sigma": 1.0, "weighting": "gap"}), PairwiseLoss)
    assert isinstance(build_loss({"name": "listwise", "temperature": 1.0, "label_temperature": None}), ListwiseLoss)
    with pytest.raises(ValueError):
        PointwiseLoss(mode="hinge")
