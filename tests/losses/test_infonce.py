"""InfoNCE and MRL against plain numpy references on fixed embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragr.losses.infonce import InfoNCE
from ragr.losses.mrl import MatryoshkaLoss


def np_infonce(q, d, tau, in_batch=True, mask=None):
    """Mean over queries of -log softmax(q.d / tau)[positive], written as loops."""
    b, g = q.shape[0], d.shape[0] // q.shape[0]
    losses = []
    for i in range(b):
        cols = range(b * g) if in_batch else range(i * g, (i + 1) * g)
        cols = [j for j in cols if mask is None or not mask[i, j]]
        logits = np.array([q[i] @ d[j] / tau for j in cols])
        target = cols.index(i * g)
        m = logits.max()
        losses.append(-(logits[target] - m - np.log(np.exp(logits - m).sum())))
    return float(np.mean(losses))


def normed(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("tau", [0.02, 0.05, 1.0])
def test_infonce_matches_numpy(in_batch, tau):
    rng = np.random.default_rng(0)
    q, d = normed(rng, 4, 8), normed(rng, 12, 8)  # B=4, G=3
    got = InfoNCE(temperature=tau, in_batch_negatives=in_batch)(torch.tensor(q), torch.tensor(d))["loss"]
    assert got.item() == pytest.approx(np_infonce(q, d, tau, in_batch), rel=1e-5, abs=1e-6)


def test_false_negatives_are_removed_from_the_softmax():
    rng = np.random.default_rng(1)
    q, d = normed(rng, 3, 8), normed(rng, 6, 8)
    d[2] = q[0]  # a duplicate positive: unmasked, it would dominate query 0's softmax
    mask = np.zeros((3, 6), dtype=bool)
    mask[0, 2] = mask[2, 1] = True  # doc 2 is another positive of query 0, ...
    got = InfoNCE(0.05)(torch.tensor(q), torch.tensor(d), torch.tensor(mask))["loss"].item()
    assert got == pytest.approx(np_infonce(q, d, 0.05, True, mask), rel=1e-5)
    assert np_infonce(q, d, 0.05, True) > got + 1.0


def test_score_loss_equals_forward():
    rng = np.random.default_rng(2)
    q, d = torch.tensor(normed(rng, 4, 8)), torch.tensor(normed(rng, 8, 8))
    loss = InfoNCE(0.1)
    assert loss.score_loss(q @ d.T)["loss"].item() == pytest.approx(loss(q, d)["loss"].item(), rel=1e-6)


def test_mrl_matches_numpy_weighted_mean():
    rng = np.random.default_rng(3)
    q, d = rng.normal(size=(4, 16)), rng.normal(size=(8, 16))
    dims, weights = [4, 8, 16], [1.0, 2.0, 0.5]
    mrl = MatryoshkaLoss(InfoNCE(0.05), dims=dims, weights=weights, embed_dim=16)
    out = mrl(torch.tensor(q), torch.tensor(d))
    parts = []
    for k in dims:
        qk = q[:, :k] / np.linalg.norm(q[:, :k], axis=1, keepdims=True)
        dk = d[:, :k] / np.linalg.norm(d[:, :k], axis=1, keepdims=True)
        parts.append(np_infonce(qk, dk, 0.05))
        assert out[f"loss@{k}"].item() == pytest.approx(parts[-1], rel=1e-5)
    expected = sum(w * p for w, p in zip(weights, parts)) / sum(weights)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_mrl_at_the_full_dimension_equals_infonce():
    rng = np.random.default_rng(4)
    q, d = torch.tensor(normed(rng, 4, 16)), torch.tensor(normed(rng, 8, 16))
    inner = InfoNCE(0.02)
    assert MatryoshkaLoss(inner, dims=[16])(q, d)["loss"].item() == pytest.approx(inner(q, d)["loss"].item(), rel=1e-6)


def test_mrl_drops_dims_above_the_model_width():
    with pytest.warns(UserWarning, match="exceed"):
        mrl = MatryoshkaLoss(InfoNCE(), dims=[8, 16, 32], embed_dim=16)
    assert mrl.dims == [8, 16]


def test_mrl_gradients_flow_to_every_prefix():
    q = torch.randn(4, 16, requires_grad=True)
    d = torch.randn(8, 16, requires_grad=True)
    MatryoshkaLoss(InfoNCE(0.05), dims=[4, 16])(q, d)["loss"].backward()
    assert q.grad is not None and torch.all(q.grad[:, :4].abs().sum(0) > 0)
