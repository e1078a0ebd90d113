"""Reranker API on tiny cross-encoders and embedders: batching, long documents, ranking, dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ragr import Reranker
from ragr.errors import UserError

PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("who wrote hamlet?", "Hamlet"),
    ("how do I boil an egg?", "Place the egg in boiling water for nine minutes, then cool it in cold water."),
    ("why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue to us."),
    ("a", "b c d e f g h i j k l m n o p"),
]
LONG_DOC = " ".join(f"word{i} is here and the sky is blue because of scattering" for i in range(30))


def hf_scores(path, pairs, max_length=512):
    """Each pair scored alone by a plain transformers forward (no padding, no batching)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for q, d in pairs:
            f = tok(q, d, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**f).logits[0, 0].item())
    return out


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_length_sorted_batches_keep_input_order_and_equal_unbatched_scores(ce_dir, batch_size):
    got = Reranker(str(ce_dir), batch_size=batch_size).score(PAIRS)
    np.testing.assert_allclose(got, hf_scores(ce_dir, PAIRS), atol=1e-5)


def test_normalize_is_the_sigmoid_of_the_raw_score(ce_dir):
    rr = Reranker(str(ce_dir))
    raw = rr.score(PAIRS)
    np.testing.assert_allclose(rr.score(PAIRS, normalize=True), [1 / (1 + math.exp(-s)) for s in raw], atol=1e-7)


def test_rank_sorts_by_score_and_cuts_top_k(ce_dir):
    rr = Reranker(str(ce_dir))
    docs = [d for _, d in PAIRS]
    want = hf_scores(ce_dir, [("why is the sky blue?", d) for d in docs])
    ranked = rr.rank("why is the sky blue?", docs, top_k=3)
    assert [i for i, _, _ in ranked] == list(np.argsort(-np.array(want))[:3])
    for i, s, d in ranked:
        assert d == docs[i] and s == pytest.approx(want[i], abs=1e-5)
    assert rr.rank("q", []) == []


def test_rescore_puts_the_exact_models_order_and_scores_on_the_re_scored_head(ce_dir):
    docs = [d for _, d in PAIRS] + [LONG_DOC[: 40 * i] for i in range(1, 6)]
    query = "why is the sky blue?"
    exact = hf_scores(ce_dir, [(query, d) for d in docs])  # plain transformers fp32, one pair at a time
    fast = Reranker(str(ce_dir), dtype="bf16")
    low = fast.score([(query, d) for d in docs])
    low_order = list(np.argsort(-np.array(low), kind="stable"))
    k, margin = 3, 2
    ranked = fast.rank(query, docs, top_k=k, rescore=Reranker(str(ce_dir)), rescore_margin=margin)
    head = low_order[: k + margin]  # what bf16 put first: re-scored in fp32 and ordered by those scores
    assert [i for i, _, _ in ranked] == sorted(head, key=lambda i: -exact[i])[:k]
    for i, s, _ in ranked:
        assert s == pytest.approx(exact[i], abs=1e-5)
    # re-scoring every document gives exactly the fp32 ranking
    full = fast.rank(query, docs, top_k=len(docs), rescore=Reranker(str(ce_dir)), rescore_margin=0)
    assert [i for i, _, _ in full] == list(np.argsort(-np.array(exact), kind="stable"))
    with pytest.raises(UserError, match="top_k"):
        fast.rank(query, docs, rescore=fast)


def test_max_chunk_on_a_short_document_equals_truncate(ce_dir):
    trunc = Reranker(str(ce_dir), max_length=64).score(PAIRS)
    chunk = Reranker(str(ce_dir), max_length=64, long_doc="max-chunk", overlap=8).score(PAIRS)
    np.testing.assert_allclose(chunk, trunc, atol=1e-6)


@pytest.mark.parametrize("overlap", [0, 6])
def test_max_chunk_on_a_long_document_is_the_max_over_its_windows(ce_dir, overlap):
    from transformers import AutoTokenizer

    q, max_length = "why is the sky blue?", 40
    tok = AutoTokenizer.from_pretrained(ce_dir)
    # windows computed here from the definition: doc tokens that fit beside the query and 3 special tokens
    size = max_length - len(tok(q, add_special_tokens=False)["input_ids"]) - 3
    offsets = tok(LONG_DOC, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    windows, start = [], 0
    while True:
        end = min(start + size, len(offsets))
        windows.append(LONG_DOC[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
        start += size - overlap
    assert len(windows) > 3
    want = max(hf_scores(ce_dir, [(q, w) for w in windows], max_length=max_length))
    got = Reranker(str(ce_dir), max_length=max_length, long_doc="max-chunk", overlap=overlap, batch_size=4).score([(q, LONG_DOC)])
    assert got[0] == pytest.approx(want, abs=1e-5)
    trunc = Reranker(str(ce_dir), max_length=max_length).score([(q, LONG_DOC)])[0]
    assert trunc == pytest.approx(hf_scores(ce_dir, [(q, LONG_DOC)], max_length=max_length)[0], abs=1e-5)


def test_bf16_scores_are_fp32_floats_close_to_fp32(ce_dir):
    ref = Reranker(str(ce_dir)).score(PAIRS)
    got = Reranker(str(ce_dir), dtype="bf16").score(PAIRS)
    assert all(type(s) is float for s in got)
    np.testing.assert_allclose(got, ref, atol=5e-2)
    with pytest.raises(UserError, match="dtype"):
        Reranker(str(ce_dir), dtype="int8")


def test_embedder_family_scores_the_cosine_of_sentence_transformers_embeddings(embedder_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(embedder_dir), device="cpu")
    q = st.encode([q for q, _ in PAIRS])
    d = st.encode([d for _, d in PAIRS])
    want = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(q, d)]
    rr = Reranker(str(embedder_dir), batch_size=2)
    assert rr.family == "embedder"
    np.testing.assert_allclose(rr.score(PAIRS), want, atol=1e-5)


def test_bad_options_are_user_errors(ce_dir):
    with pytest.raises(UserError, match="long_doc"):
        Reranker(str(ce_dir), long_doc="split")
    with pytest.raises(UserError, match="no such model directory"):
        Reranker("./does/not/exist")
    with pytest.raises(UserError, match="unknown reranker family"):
        Reranker(str(ce_dir), family="cross_encodr")
