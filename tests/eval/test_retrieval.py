"""Retrieval evaluation: exact search vs brute-force numpy, trec_eval metrics vs pytrec_eval, BEIR loading."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from ragr.errors import DataError, UserError
from ragr.eval.metrics import rerank_metrics
from ragr.eval.retrieval import (
    evaluate_retrieval,
    exact_search,
    load_beir,
    query_run_metrics,
    read_qrels,
    run_metrics,
    write_trec_run,
)

KS = (1, 3, 5, 10, 20)


def brute_force(q: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every score in float64, one full stable sort per query (index breaks ties)."""
    s = q.astype(np.float64) @ d.astype(np.float64).T
    idx = np.stack([np.lexsort((np.arange(d.shape[0]), -row))[:k] for row in s])
    return np.take_along_axis(s, idx, 1), idx


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 64, 1000])
@pytest.mark.parametrize("blocks", [(4, 50), (256, 65536)])
def test_exact_search_equals_brute_force_numpy(k, blocks):
    rng = np.random.default_rng(k)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    d = rng.normal(size=(503, 16)).astype(np.float32)
    scores, idx = exact_search(q, d, k, backend="torch", query_batch=blocks[0], doc_batch=blocks[1])
    ref_s, ref_i = brute_force(q, d, min(k, 503))
    assert idx.shape == ref_i.shape == (37, min(k, 503))
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=1e-5)
    assert scores.dtype == np.float32 and idx.dtype == np.int64


@pytest.mark.parametrize("doc_batch", [1, 2, 3, 100])
def test_exact_search_orders_ties_by_document_index_also_at_the_cut(doc_batch):
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    scores, idx = exact_search(q, d, 3, backend="torch", doc_batch=doc_batch)
    assert idx.tolist() == [[5, 1, 3], [0, 2, 1]]
    assert scores.tolist() == [[2.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


@pytest.mark.parametrize("doc_batch", [7, 64, 1000])
def test_exact_search_with_many_ties_equals_brute_force(doc_batch):
    rng = np.random.default_rng(doc_batch)
    q = rng.integers(-1, 2, size=(25, 4)).astype(np.float32)  # small integers: exact scores, many ties
    d = rng.integers(-1, 2, size=(300, 4)).astype(np.float32)
    scores, idx = exact_search(q, d, 20, backend="torch", query_batch=6, doc_batch=doc_batch)
    ref_s, ref_i = brute_force(q, d, 20)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_exact_search_accepts_torch_tensors_and_reports_progress():
    import torch

    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(10, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    done = []
    _, idx = exact_search(torch.from_numpy(q), torch.from_numpy(d), 5, backend="torch", query_batch=3, progress=done.append)
    assert sum(done) == 10
    np.testing.assert_array_equal(idx, brute_force(q, d, 5)[1])


def _fake_faiss(calls: list[str]) -> types.ModuleType:
    """A stand-in faiss module (numpy inner products) to exercise the faiss code path."""
    mod = types.ModuleType("faiss")

    class IndexFlatIP:
        def __init__(self, dim):
            self.dim, self.x = dim, np.zeros((0, dim), np.float32)

        def add(self, x):
            calls.append("add")
            self.x = np.concatenate([self.x, x])

        def search(self, q, k):
            calls.append("search")
            s = q @ self.x.T
            idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(s, idx, 1), idx

    mod.IndexFlatIP = IndexFlatIP
    return mod


def test_faiss_backend_is_used_when_importable(monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "faiss", _fake_faiss(calls))
    rng = np.random.default_rng(2)
    q, d = rng.normal(size=(9, 8)).astype(np.float32), rng.normal(size=(60, 8)).astype(np.float32)
    _, idx = exact_search(q, d, 6, backend="auto")
    assert calls == ["add", "search"]
    np.testing.assert_array_equal(idx, brute_force(q, d, 6)[1])


def test_faiss_backend_without_faiss_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(UserError, match="faiss"):
        exact_search(np.ones((1, 2)), np.ones((3, 2)), 1, backend="faiss")
    _, idx = exact_search(np.ones((1, 2)), np.eye(2), 1, backend="auto")  # auto falls back to torch
    assert idx.shape == (1, 1)


# ---------------------------------------------------------------------------------------------
# Metrics on runs
# ---------------------------------------------------------------------------------------------


def test_run_metrics_hand_worked_example():
    # relevant: d1 (1), d2 (1), d3 (2); the run retrieves d9, d1, d8 -> one hit at rank 2, two relevant missed
    m = query_run_metrics([0.9, 0.8, 0.7], [0, 1, 0], [1, 1, 2], ks=(1, 3))
    assert m["map"] == pytest.approx((1 / 2) / 3)
    assert m["mrr"] == pytest.approx(0.5) and m["mrr@1"] == 0.0 and m["mrr@3"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1 / 3)
    assert m["p@3"] == pytest.approx(1 / 3)
    idcg3 = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg3)
    assert m["ndcg@1"] == 0.0


def test_run_metrics_policies_for_unretrieved_and_positive_free_queries():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}, "c": {"d3": 0}}
    run = {"a": {"d1": 1.0, "d5": 0.5}}  # b: nothing retrieved; c: no relevant document
    m = run_metrics(run, qrels, ks=(1, 10))
    assert m["num_queries"] == 2 and m["num_skipped"] == 1
    assert m["map"] == pytest.approx(0.5)  # a: 1.0, b: 0.0
    assert m["recall@10"] == pytest.approx(0.5)


def test_run_metrics_ties_are_pessimistic():
    m = run_metrics({"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {"q": {"b": 1}}, ks=(1,))
    assert m["mrr"] == pytest.approx(1 / 3)


def test_run_metrics_equal_candidate_list_metrics_when_every_judged_doc_is_retrieved():
    rng = np.random.default_rng(3)
    run, qrels, scores, labels = {}, {}, [], []
    for qi in range(20):
        n = int(rng.integers(2, 15))
        s = rng.normal(size=n)
        y = rng.integers(0, 3, size=n)
        run[f"q{qi}"] = {f"d{j}": float(s[j]) for j in range(n)}
        qrels[f"q{qi}"] = {f"d{j}": int(y[j]) for j in range(n)}
        scores.append(s)
        labels.append(y)
    a, b = run_metrics(run, qrels, KS), rerank_metrics(scores, labels, KS)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_run_metrics_match_pytrec_eval_on_random_runs(seed):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(200)]
    qrels, run = {}, {}
    for qi in range(40):
        judged = rng.choice(200, size=int(rng.integers(1, 30)), replace=False)
        qrels[f"q{qi}"] = {docs[j]: int(rng.integers(0, 4)) for j in judged}
        retrieved = rng.choice(200, size=int(rng.integers(1, 60)), replace=False)
        scores = rng.permutation(len(retrieved)).astype(float) + rng.random()  # distinct: no ties
        run[f"q{qi}"] = {docs[j]: float(s) for j, s in zip(retrieved, scores)}
    measures = {"map", "recip_rank"} | {f"{m}.{','.join(map(str, KS))}" for m in ("ndcg_cut", "recall", "P")}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    rows = []
    for qid in qrels:
        ours = query_run_metrics(list(run[qid].values()), [qrels[qid].get(d, 0) for d in run[qid]],
                                 list(qrels[qid].values()), KS)
        if ours is None:
            assert all(v <= 0 for v in qrels[qid].values())
            continue
        r = ref[qid]
        assert ours["map"] == pytest.approx(r["map"], abs=1e-9)
        assert ours["mrr"] == pytest.approx(r["recip_rank"], abs=1e-9)
        for k in KS:
            assert ours[f"ndcg@{k}"] == pytest.approx(r[f"ndcg_cut_{k}"], abs=1e-9), (qid, k)
            assert ours[f"recall@{k}"] == pytest.approx(r[f"recall_{k}"], abs=1e-9), (qid, k)
            assert ours[f"p@{k}"] == pytest.approx(r[f"P_{k}"], abs=1e-9), (qid, k)
        rows.append(r["map"])
    mean = run_metrics(run, qrels, KS)
    assert mean["num_queries"] == len(rows)
    assert mean["map"] == pytest.approx(float(np.mean(rows)), abs=1e-9)


def test_trec_run_file_round_trips_through_pytrec_eval(tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run = {"q1": {"a": 0.5, "b": 0.9, "c": 0.1}, "q2": {"x": 2.0}}
    qrels = {"q1": {"a": 1, "c": 2}, "q2": {"x": 1, "y": 1}}
    path = tmp_path / "run.trec"
    write_trec_run(path, run)
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "b", "1", "0.9", "ragr"]
    parsed: dict = {}
    for line in lines:
        qid, _, did, _, score, _ = line.split()
        parsed.setdefault(qid, {})[did] = float(score)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"map"}).evaluate(parsed)
    ours = run_metrics(run, qrels, ks=(1,))
    assert ours["map"] == pytest.approx(np.mean([ref[q]["map"] for q in qrels]), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# BEIR folders
# ---------------------------------------------------------------------------------------------


def write_beir(root, corpus, queries, qrels, split="test", header=True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for did, title, text in corpus:
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in queries:
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir_reads_the_layout(tmp_path):
    root = write_beir(tmp_path / "b", [("d1", "Title", "body one"), ("d2", "", "body two"), (3, "", "three")],
                      [("q1", "first?"), ("q2", "second?"), ("q3", "unjudged")],
                      [("q1", "d1", 1), ("q1", "3", 2), ("q2", "d2", 0)])
    data = load_beir(root)
    assert data.split == "test"
    assert data.doc_ids == ["d1", "d2", "3"]
    assert data.doc_texts == ["Title body one", "body two", "three"]
    assert data.query_ids == ["q1", "q2"]
    assert data.qrels == {"q1": {"d1": 1, "3": 2}, "q2": {"d2": 0}}


def test_load_beir_errors_name_the_file_and_line(tmp_path):
    root = write_beir(tmp_path / "b", [("d1", "", "x")], [("q1", "?")], [("q1", "d1", 1)], split="train")
    (root / "qrels" / "dev.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(UserError, match="several splits"):
        load_beir(root)
    assert load_beir(root, "dev").split == "dev"
    (root / "qrels" / "train.tsv").rename(root / "qrels" / "test.tsv")
    assert load_beir(root).split == "test"  # test is the default when present
    with pytest.raises(UserError, match="did you mean 'test'"):
        load_beir(root, "tset")
    (root / "qrels" / "dev.tsv").write_text("q1\td1\t1\nq1\td1\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2"):
        read_qrels(root / "qrels" / "dev.tsv")
    (root / "qrels" / "dev.tsv").write_text("q9\td1\t1\n")
    with pytest.raises(DataError, match="not in queries.jsonl"):
        load_beir(root, "dev")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d1", "text": "again"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2.*duplicate"):
        load_beir(root, "test")
    with pytest.raises(UserError, match="not a BEIR folder"):
        load_beir(tmp_path)


# ---------------------------------------------------------------------------------------------
# End to end with a transparent model
# ---------------------------------------------------------------------------------------------

VOCAB = ["cat", "dog", "fish", "bird", "tree", "car", "sun", "moon"]


class HashEmbedder:
    """A transparent 'embedder': a unit vector drawn from a generator seeded by the text (no ties but duplicates)."""

    def encode(self, texts, is_query=False, batch_size=64, progress=None):
        import hashlib

        import torch

        out = np.zeros((len(texts), 16), np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")).normal(size=16)
            out[i] = v / np.linalg.norm(v)
            if progress is not None:
                progress(1)
        return torch.from_numpy(out)


class LengthScorer:
    """A transparent reranker: prefers shorter documents."""

    family = "test"
    tokenizer = None

    def score_pairs(self, queries, docs):
        return [-float(len(d)) for d in docs]

    def normalize(self, s):
        return s


def test_evaluate_retrieval_stages_match_an_independent_computation(tmp_path):
    from ragr.infer.reranker import Reranker

    rng = np.random.default_rng(0)
    corpus = [(f"d{i}", "", " ".join(rng.choice(VOCAB, size=int(rng.integers(1, 6))))) for i in range(40)]
    queries = [(f"q{i}", " ".join(rng.choice(VOCAB, size=2))) for i in range(8)]
    qrels = [(f"q{i}", f"d{j}", int(rng.integers(1, 3))) for i in range(8) for j in rng.choice(40, 3, replace=False)]
    data = load_beir(write_beir(tmp_path / "b", corpus, queries, qrels))
    res = evaluate_retrieval(HashEmbedder(), data, top_k=10, ks=(1, 5, 10), reranker=Reranker.from_scorer(LengthScorer()),
                             rerank_top_k=5, search="torch")
    # independent: numpy brute force over the same vectors, then trec metrics by pytrec_eval when present
    emb = HashEmbedder()
    d = emb.encode(data.doc_texts).numpy()
    q = emb.encode([data.queries[x] for x in data.query_ids]).numpy()
    s, idx = brute_force(q, d, 10)
    expected_run = {qid: {data.doc_ids[j]: float(v) for v, j in zip(s[r], idx[r])} for r, qid in enumerate(data.query_ids)}
    assert res["runs"]["retrieval"].keys() == expected_run.keys()
    for qid in expected_run:
        assert res["runs"]["retrieval"][qid].keys() == expected_run[qid].keys()
    rerank_run = {qid: {data.doc_ids[j]: -float(len(data.doc_texts[j])) for j in idx[r, :5]}
                  for r, qid in enumerate(data.query_ids)}
    assert res["runs"]["rerank"] == rerank_run
    assert set(res["stages"]) == {"retrieval", "rerank"}
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ev = pytrec_eval.RelevanceEvaluator(data.qrels, {"recall.10", "recall.5"})
    ref = ev.evaluate(expected_run)
    assert res["stages"]["retrieval"]["recall@10"] == pytest.approx(np.mean([ref[x]["recall_10"] for x in ref]), abs=1e-9)
    ref = ev.evaluate(rerank_run)
    assert res["stages"]["rerank"]["recall@5"] == pytest.approx(np.mean([ref[x]["recall_5"] for x in ref]), abs=1e-9)


def test_rerank_depth_cannot_exceed_retrieval_depth(tmp_path):
    data = load_beir(write_beir(tmp_path / "b", [("d1", "", "cat")], [("q1", "cat")], [("q1", "d1", 1)]))
    with pytest.raises(UserError, match="rerank_top_k"):
        evaluate_retrieval(HashEmbedder(), data, top_k=5, reranker=object(), rerank_top_k=10)
