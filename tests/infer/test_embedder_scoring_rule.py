"""One scoring rule for embedders everywhere: the model's own normalisation. Explicit settings beat folder defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragr.families import get_family
from ragr.models.embedder import Embedder

PAIRS = [("how far is the moon?", "The moon is about 384,400 kilometres away."), ("who wrote hamlet?", "Eggs boil.")]


@pytest.fixture(scope="module")
def unnormalized(tiny_bert_nodropout, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("raw-embedder")
    Embedder.from_pretrained(tiny_bert_nodropout, pooling="mean", normalize=False).save(path)
    return str(path)


def mean_pooled(path: str, text: str) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0)


def test_rerank_and_evaluation_score_a_model_without_normalize_the_same_way(unnormalized):
    from ragr.infer.reranker import Reranker

    model = Embedder.from_pretrained(unnormalized)
    assert model.normalize is False  # the folder has no Normalize module
    want = [float(mean_pooled(unnormalized, q) @ mean_pooled(unnormalized, d)) for q, d in PAIRS]  # raw dot products
    rerank = Reranker(unnormalized).score(PAIRS)
    groups = get_family("embedder").scorer(model).score_groups([q for q, _ in PAIRS], [[d] for _, d in PAIRS])
    np.testing.assert_allclose(rerank, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([g[0] for g in groups], want, rtol=1e-4, atol=1e-4)


def test_an_explicit_setting_wins_over_the_folder(unnormalized):
    assert Embedder.from_pretrained(unnormalized, normalize=True).normalize is True
    assert Embedder.from_pretrained(unnormalized, pooling="cls").pooling == "cls"
    assert Embedder.from_pretrained(unnormalized).pooling == "mean"  # no setting: the folder's
