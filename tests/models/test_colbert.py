"""ColBERT: MaxSim against numpy loops, blockwise == naive, InfoNCE on MaxSim, bge-m3 layout save/load, scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragr.losses.infonce import InfoNCE
from ragr.models.colbert import ColBERT, _block_sizes, maxsim, maxsim_pairs, pad_vectors


def np_maxsim(q, q_mask, d, d_mask, normalize=True):
    """Plain loops: for each unmasked query token, the best dot product over unmasked document tokens."""
    out = np.zeros((q.shape[0], d.shape[0]))
    for i in range(q.shape[0]):
        for j in range(d.shape[0]):
            total, count = 0.0, 0
            for a in range(q.shape[1]):
                if not q_mask[i, a]:
                    continue
                count += 1
                best = None
                for b in range(d.shape[1]):
                    if d_mask[j, b]:
                        v = float(np.dot(q[i, a], d[j, b]))
                        best = v if best is None else max(best, v)
                total += best if best is not None else 0.0
            out[i, j] = total / max(count, 1) if normalize else total
    return out


def random_batch(seed, bq=3, n=5, lq=6, ld=9, dim=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(bq, lq, dim, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(n, ld, dim, generator=g), dim=-1)
    q_len = torch.randint(1, lq + 1, (bq,), generator=g)
    d_len = torch.randint(1, ld + 1, (n,), generator=g)
    q_mask = torch.arange(lq)[None] < q_len[:, None]
    d_mask = torch.arange(ld)[None] < d_len[:, None]
    q_mask[:, 0] = False if lq > 1 else True  # a masked leading (CLS) position as in the model
    q_mask[q_mask.sum(1) == 0, 1] = True
    d_mask[0, 2] = False  # a hole in the middle (e.g. masked punctuation)
    d_mask[0, 0] = True
    return q, q_mask, d, d_mask


@pytest.mark.parametrize("normalize", [True, False])
def test_maxsim_matches_numpy_loop(normalize):
    q, q_mask, d, d_mask = random_batch(0)
    expected = np_maxsim(q.numpy(), q_mask.numpy(), d.numpy(), d_mask.numpy(), normalize)
    np.testing.assert_allclose(maxsim(q, q_mask, d, d_mask, normalize).numpy(), expected, atol=1e-5)
    pairs = maxsim_pairs(q, q_mask, d[:3], d_mask[:3], normalize).numpy()
    np.testing.assert_allclose(pairs, np.diag(expected[:, :3]), atol=1e-5)


def test_maxsim_document_without_tokens_scores_zero():
    q, q_mask, d, d_mask = random_batch(1)
    d_mask[2] = False
    assert torch.all(maxsim(q, q_mask, d, d_mask)[:, 2] == 0)


@pytest.mark.parametrize("budget", [1, 54, 6 * 9 * 7, 10**9])
def test_blockwise_scores_and_gradients_equal_the_naive_computation(budget):
    q, q_mask, d, d_mask = random_batch(2, bq=4, n=12, lq=6, ld=9)
    q1, d1 = q.clone().requires_grad_(), d.clone().requires_grad_()
    q2, d2 = q.clone().requires_grad_(), d.clone().requires_grad_()
    # naive: the whole [Bq, N, Lq, Ld] tensor at once
    sim = torch.einsum("qid,njd->qnij", q2, d2).masked_fill(~d_mask[None, :, None, :], -1e9)
    naive = (sim.max(-1).values * q_mask[:, None, :]).sum(-1) / q_mask.sum(-1, keepdim=True)
    blocked = maxsim(q1, q_mask, d1, d_mask, max_elements=budget)
    torch.testing.assert_close(blocked, naive, atol=1e-6, rtol=0)
    weights = torch.randn(naive.shape, generator=torch.Generator().manual_seed(3))
    g1 = torch.autograd.grad((blocked * weights).sum(), [q1, d1])
    g2 = torch.autograd.grad((naive * weights).sum(), [q2, d2])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget", [54, 200, 1000])
def test_blockwise_memory_bound(budget):
    """Blocks respect the budget, and autograd keeps nothing block-sized (only inputs and [Bq, Lq, N] maxima)."""
    bq, n, lq, ld, dim = 4, 12, 6, 9, 2
    qc, dc = _block_sizes(bq, n, lq, ld, budget)
    assert qc * dc * lq * ld <= max(budget, lq * ld)
    q, q_mask, d, d_mask = random_batch(4, bq=bq, n=n, lq=lq, ld=ld, dim=dim)
    q.requires_grad_()
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        maxsim(q, q_mask, d, d_mask, max_elements=budget)
    assert max(saved) <= max(bq * n * lq, d.numel()) < bq * n * lq * ld


def test_infonce_on_colbert_scores_matches_numpy():
    b, g, tau = 3, 3, 0.05
    q, q_mask, d, d_mask = random_batch(5, bq=b, n=b * g)
    fn = torch.zeros(b, b * g, dtype=torch.bool)
    fn[1, 0] = True  # document 0 is also a positive of query 1: dropped from its softmax
    s = np_maxsim(q.numpy(), q_mask.numpy(), d.numpy(), d_mask.numpy()) / tau
    losses = []
    for i in range(b):
        keep = [j for j in range(b * g) if not fn[i, j]]
        logits = s[i, keep]
        target = keep.index(i * g)
        losses.append(-(logits[target] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
    loss = InfoNCE(temperature=tau).score_loss(maxsim(q, q_mask, d, d_mask), fn)["loss"]
    assert loss.item() == pytest.approx(float(np.mean(losses)), rel=1e-5)
    # without in-batch negatives: only each query's own group
    own = [-(s[i, i * g] - np.log(np.exp(s[i, i * g : (i + 1) * g]).sum())) for i in range(b)]
    loss = InfoNCE(temperature=tau, in_batch_negatives=False).score_loss(maxsim(q, q_mask, d, d_mask))["loss"]
    assert loss.item() == pytest.approx(float(np.mean(own)), rel=1e-5)


# ---- the model on a tiny BERT ---------------------------------------------------------------------

TEXTS_Q = ["what is the capital of france?", "who wrote hamlet?"]
TEXTS_D = ["Paris is the capital of France.", "Hamlet, by William Shakespeare!", "Spiders have eight legs."]


def hidden_states(path, texts, max_length):
    """The backbone's last hidden states and attention mask, straight from transformers."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    feats = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**feats).last_hidden_state.numpy()
    return h, feats["attention_mask"].numpy().astype(bool), feats["input_ids"].numpy()


def np_colbert_scores(path, weight, bias, queries, docs, max_q=16, max_d=32):
    """Independent ColBERT scores: numpy projection + normalization, CLS and padding dropped, MaxSim loop."""
    hq, mq, _ = hidden_states(path, queries, max_q)
    hd, md, _ = hidden_states(path, docs, max_d)
    project = lambda h: (lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True))(h @ weight.T + bias)  # noqa: E731
    mq[:, 0] = False
    md[:, 0] = False
    return np_maxsim(project(hq), mq, project(hd), md)


@pytest.fixture(scope="module")
def bge_m3_layout(tiny_bert_nodropout, tmp_path_factory):
    """A hand-made bge-m3-style folder: the tiny backbone plus a colbert_linear.pt projecting 32 -> 24."""
    import shutil

    path = tmp_path_factory.mktemp("m3-layout") / "model"
    shutil.copytree(tiny_bert_nodropout, path)
    g = torch.Generator().manual_seed(7)
    state = {"weight": torch.randn(24, 32, generator=g) * 0.2, "bias": torch.randn(24, generator=g) * 0.1}
    torch.save(state, path / "colbert_linear.pt")
    return path, state


def test_loads_bge_m3_layout_and_scores_like_numpy(bge_m3_layout):
    path, state = bge_m3_layout
    with pytest.warns(UserWarning, match="ignoring dim=128"):
        model = ColBERT.from_pretrained(str(path), dim=128, max_query_length=16, max_doc_length=32)
    assert model.dim == 24
    torch.testing.assert_close(model.linear.weight.data, state["weight"])
    q = model.encode(TEXTS_Q, is_query=True)
    d = model.encode(TEXTS_D, is_query=False)
    ours = maxsim(*pad_vectors(q), *pad_vectors(d)).numpy()
    expected = np_colbert_scores(path, state["weight"].numpy(), state["bias"].numpy(), TEXTS_Q, TEXTS_D)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_save_reload_gives_equal_scores(tiny_bert_nodropout, tmp_path):
    torch.manual_seed(0)
    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=16, max_query_length=12, max_doc_length=20,
                                    mask_punctuation=True, query_augmentation=True, normalize_by_query_length=False)
    with torch.no_grad():
        model.linear.bias.normal_()  # a non-zero bias must survive the round trip too
    model.save(tmp_path / "m")
    assert {"config.json", "colbert_linear.pt", "ragr.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    state = torch.load(tmp_path / "m" / "colbert_linear.pt", weights_only=True)
    assert set(state) == {"weight", "bias"} and tuple(state["weight"].shape) == (16, 32)
    meta = json.loads((tmp_path / "m" / "ragr.json").read_text())
    assert meta["family"] == "colbert" and meta["dim"] == 16 and meta["query_augmentation"] is True

    again = ColBERT.from_pretrained(str(tmp_path / "m"))  # the options come back from ragr.json
    assert again.options() == model.options() and again.dim == 16
    a = maxsim(*pad_vectors(model.encode(TEXTS_Q, True)), *pad_vectors(model.encode(TEXTS_D, False)), normalize=False)
    b = maxsim(*pad_vectors(again.encode(TEXTS_Q, True)), *pad_vectors(again.encode(TEXTS_D, False)), normalize=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_new_projection_is_initialized_with_the_requested_dim(tiny_bert_nodropout):
    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=20)
    assert model.dim == 20 and tuple(model.linear.weight.shape) == (20, 32)
    vecs = model.encode(["hello world"], is_query=False)[0]
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(len(vecs)))


def test_token_masks(tiny_bert_nodropout):
    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8, max_query_length=10, max_doc_length=16,
                                    mask_punctuation=True, query_augmentation=True)
    tok = model.tokenizer
    q = model.tokenize(["hi there", "a longer query with words"], is_query=True)
    assert q["input_ids"].shape == (2, 10)  # padded to max_query_length
    assert q["input_ids"][0, 0] == tok.cls_token_id and not q["token_mask"][:, 0].any()  # CLS masked
    first = q["input_ids"][0].tolist()
    n_real = int(q["attention_mask"][0].sum())
    assert first[n_real:] == [tok.mask_token_id] * (10 - n_real)  # [MASK] in place of padding ...
    assert q["token_mask"][0, 1:].all()  # ... and scored
    assert q["attention_mask"][0, n_real:].sum() == 0  # ... but not attended to

    d = model.tokenize(["Hello, world!", "x"], is_query=False)
    tokens = tok.convert_ids_to_tokens(d["input_ids"][0].tolist())
    kept = [t for t, m in zip(tokens, d["token_mask"][0].tolist()) if m]
    assert kept == ["hello", "world", "[SEP]"]  # CLS and punctuation dropped, SEP kept
    assert d["token_mask"][1].tolist() == [False, True, True, False, False, False]  # CLS x SEP pad...

    plain = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8, mask_query_cls=False, mask_doc_cls=False)
    assert plain.tokenize(["Hello, world!"], is_query=False)["token_mask"].all()
    assert plain.tokenize(["hi"], is_query=True)["token_mask"].all()


def test_forward_zeroes_masked_positions(tiny_bert_nodropout):
    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8).eval()
    feats = model.tokenize(["one", "one two three four"], is_query=False)
    vecs = model(**feats)
    norms = vecs.norm(dim=-1)
    torch.testing.assert_close(norms, feats["token_mask"].float())


# ---- inference --------------------------------------------------------------------------------------


def test_scorer_pairs_index_and_rank(bge_m3_layout):
    from ragr.infer.colbert import ColBERTScorer

    path, state = bge_m3_layout
    scorer = ColBERTScorer.load(str(path), max_length=32, max_query_length=16, batch_size=2)
    expected = np_colbert_scores(path, state["weight"].numpy(), state["bias"].numpy(), TEXTS_Q, TEXTS_D)
    pairs = [(q, d) for q in TEXTS_Q for d in TEXTS_D]
    got = scorer.score_pairs([p[0] for p in pairs], [p[1] for p in pairs])
    np.testing.assert_allclose(np.array(got).reshape(2, 3), expected, atol=1e-5)

    index = scorer.encode_docs(TEXTS_D)  # documents encoded once, many queries scored against them
    np.testing.assert_allclose(scorer.score_queries(TEXTS_Q, index).numpy(), expected, atol=1e-5)
    ranked = scorer.rank(TEXTS_Q[1], index, top_k=2)
    assert [i for i, _ in ranked] == list(np.argsort(-expected[1])[:2])
    assert ranked[0][1] == pytest.approx(expected[1].max(), abs=1e-5)
    assert scorer.score_pairs([], []) == []


def test_scorer_cache_reuses_vectors_within_its_budget(bge_m3_layout, monkeypatch):
    from ragr.infer.colbert import ColBERTScorer

    path, _ = bge_m3_layout
    scorer = ColBERTScorer.load(str(path), max_length=32, max_query_length=16, cache_elements=10**6)
    first = scorer.score_pairs(TEXTS_Q[:1] * 3, TEXTS_D)
    encoded: list[str] = []
    original = scorer.model.encode
    monkeypatch.setattr(scorer.model, "encode", lambda texts, **kw: encoded.extend(texts) or original(texts, **kw))
    assert scorer.score_pairs(TEXTS_Q[:1] * 3, TEXTS_D) == first and encoded == []
    scorer.score_pairs([TEXTS_Q[1]], [TEXTS_D[0]])
    assert encoded == [TEXTS_Q[1]]  # only the new query
    small = ColBERTScorer.load(str(path), max_length=32, max_query_length=16, cache_elements=24 * 12)
    np.testing.assert_allclose(small.score_pairs(TEXTS_Q[:1] * 3, TEXTS_D), first, atol=1e-6)
    assert small._cached <= 24 * 12 and sum(v.numel() for v in small._cache.values()) == small._cached


def test_reranker_api_detects_colbert_and_scores_like_numpy(bge_m3_layout, tmp_path):
    from ragr.infer import Reranker

    path, state = bge_m3_layout
    rr = Reranker(str(path), device="cpu", max_length=32, max_query_length=16, batch_size=2)
    assert rr.family == "colbert"
    expected = np_colbert_scores(path, state["weight"].numpy(), state["bias"].numpy(), TEXTS_Q, TEXTS_D)
    got = rr.score([(q, d) for q in TEXTS_Q for d in TEXTS_D])
    np.testing.assert_allclose(np.array(got).reshape(2, 3), expected, atol=1e-5)
    ranked = rr.rank(TEXTS_Q[0], TEXTS_D, top_k=1, normalize=True)
    assert ranked[0][0] == int(np.argmax(expected[0]))
    assert ranked[0][1] == pytest.approx((expected[0].max() + 1) / 2, abs=1e-5)
    # max-chunk: a long document is scored window by window and keeps the best window
    long_doc = " ".join(["filler words here"] * 20) + " " + TEXTS_D[0]
    chunked = Reranker(str(path), device="cpu", max_length=12, long_doc="max-chunk", overlap=2)
    windows = chunked.scorer.score_pairs([TEXTS_Q[0]] * 1, [long_doc])  # truncated: the filler only
    best = chunked.score([(TEXTS_Q[0], long_doc)])[0]
    assert best >= windows[0] - 1e-6


def test_evaluate_colbert_matches_metrics_on_numpy_scores(bge_m3_layout):
    from ragr.eval.metrics import rerank_metrics
    from ragr.eval.rerank import evaluate
    from ragr.infer.colbert import ColBERTScorer

    path, state = bge_m3_layout
    model = ColBERT.from_pretrained(str(path), max_query_length=16, max_doc_length=32)
    rows = [{"query": TEXTS_Q[0], "positive": [TEXTS_D[0]], "negative": TEXTS_D[1:]},
            {"query": TEXTS_Q[1], "positive": [TEXTS_D[1]], "negative": [TEXTS_D[2], TEXTS_D[0]]}]
    s = np_colbert_scores(path, state["weight"].numpy(), state["bias"].numpy(), TEXTS_Q, TEXTS_D)
    expected = rerank_metrics([list(s[0]), [s[1, 1], s[1, 2], s[1, 0]]], [[1, 0, 0], [1, 0, 0]], ks=(1, 3))
    got = evaluate(ColBERTScorer(model, cache_elements=0), rows, ks=(1, 3))
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-9), k
