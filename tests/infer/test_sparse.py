"""SPLADE inference: inverted-index retrieval equals brute force, and every surface gives sentence-transformers'
vectors — rerank scores, `ragr eval` (reranking with active dims; BEIR retrieval), `ragr embed --sparse`, `/embed_sparse`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.eval.retrieval import sparse_search

QUERIES = ["how far is the moon?", "who wrote hamlet?", "what is python?"]
DOCS = ["The moon is about 384,400 kilometres away.", "Hamlet is a tragedy written by William Shakespeare.",
        "Python is a programming language known for readable code.", "Spiders have eight legs.",
        "Paris is the capital and largest city of France."]


def brute_force(q: np.ndarray, d: np.ndarray, top_k: int):
    """numpy: every document sharing a term with the query, by score then document index."""
    scores = q @ d.T
    shares = (q != 0).astype(np.int64) @ (d != 0).astype(np.int64).T > 0
    out = []
    for r in range(q.shape[0]):
        cand = np.flatnonzero(shares[r])
        order = sorted(cand, key=lambda j: (-scores[r, j], j))[:top_k]
        out.append((scores[r, order], np.array(order, dtype=np.int64)))
    return out


def test_inverted_index_search_equals_brute_force():
    d = sp.random(300, 50, density=0.08, random_state=1, dtype=np.float32).toarray()
    d[7] = d[3]  # exact ties, broken by document index
    d[200] = 0.0  # a document with no term is never a hit
    q = sp.random(40, 50, density=0.1, random_state=2, dtype=np.float32).toarray()
    q[5] = 0.0  # a query with no term gets no hit
    q[6] = -q[6]  # negative query weights (a learned query table) still rank exactly
    q[9] = d[3] * 5.0  # documents 3 and 7 tie near the top
    got = sparse_search(sp.csr_matrix(q), sp.csr_matrix(d), top_k=10, query_batch=7)
    want = brute_force(q, d, 10)
    assert len(got) == len(want)
    for r, ((gs, gi), (ws, wi)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(gi, wi, err_msg=f"query {r}")
        np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-6)
    assert len(got[5][1]) == 0
    order = list(got[9][1])
    assert order.index(7) == order.index(3) + 1 and got[9][0][order.index(3)] == got[9][0][order.index(7)]


@pytest.fixture(scope="module")
def splade_dir(tiny_mlm, tmp_path_factory):
    from ragr.families.splade import Splade

    path = tmp_path_factory.mktemp("splade") / "model"
    Splade.from_pretrained(tiny_mlm).save(path)
    return path


@pytest.fixture(scope="module")
def st_vectors(splade_dir):
    """sentence-transformers' own vectors of the saved folder: the reference everywhere below."""
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(str(splade_dir), device="cpu")

    def encode(texts, is_query):
        fn = st.encode_query if is_query else st.encode_document
        return fn(list(texts), convert_to_tensor=True).to_dense().cpu().numpy()

    return encode


def test_reranker_scores_are_sparse_dot_products(splade_dir, st_vectors):
    from ragr.infer import Reranker

    rr = Reranker(str(splade_dir))
    assert rr.family == "splade"
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    want = [float(st_vectors([q], True)[0] @ st_vectors([d], False)[0]) for q, d in pairs]
    np.testing.assert_allclose(rr.score(pairs), want, rtol=1e-5, atol=1e-5)


def test_eval_reports_rerank_metrics_and_active_dims(splade_dir, st_vectors, data_dir, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--quiet", f"model.name_or_path={splade_dir}", f"data.eval={data_dir / 'dev.jsonl'}",
                                   f"output_dir={tmp_path / 'ev'}"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["family"] == "splade"
    rows = [json.loads(x) for x in (data_dir / "dev.jsonl").read_text().splitlines()]
    qv = st_vectors([r["query"] for r in rows], True)
    texts = sorted({c for r in rows for c in r["positive"] + r["negative"]})
    dv = dict(zip(texts, st_vectors(texts, False)))
    mrr = []
    for r, v in zip(rows, qv):
        s = [float(v @ dv[c]) for c in r["positive"] + r["negative"]]
        rank = 1 + sum(x > s[0] for x in s[1:])
        mrr.append(1.0 / rank if rank <= 10 else 0.0)
    assert report["metrics"]["mrr@10"] == pytest.approx(float(np.mean(mrr)), abs=1e-6)
    assert report["metrics"]["active_dims_query"] == pytest.approx(float((qv != 0).sum(1).mean()))
    assert report["metrics"]["active_dims_doc"] == pytest.approx(float((np.stack(list(dv.values())) != 0).sum(1).mean()))


def test_eval_retrieval_through_the_inverted_index(splade_dir, st_vectors, tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(DOCS)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td2\t1\n")
    res = CliRunner().invoke(app, ["eval", "--quiet", f"model.name_or_path={splade_dir}", f"data.beir={root}",
                                   "eval.top_k=3", f"output_dir={tmp_path / 'ev'}"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["family"] == "splade"
    qv, dv = st_vectors(QUERIES, True), st_vectors(DOCS, False)
    want = brute_force(qv, dv, 3)
    run: dict[str, list[str]] = {}
    for line in (tmp_path / "ev" / "run.retrieval.trec").read_text().splitlines():
        qid, _, did, rank, score, _ = line.split()
        run.setdefault(qid, []).append(did)
    for r, (_, idx) in enumerate(want):
        assert run[f"q{r}"] == [f"d{j}" for j in idx]
    stage = report["stages"]["retrieval"]
    assert stage["active_dims_doc"] == pytest.approx(float((dv != 0).sum(1).mean()))
    assert stage["active_dims_query"] == pytest.approx(float((qv != 0).sum(1).mean()))


def test_embed_sparse_writes_the_terms_sparse_encoder_gives(splade_dir, st_vectors, tmp_path):
    from transformers import AutoTokenizer

    inp = tmp_path / "texts.jsonl"
    inp.write_text(json.dumps({"id": "a", "text": DOCS[0]}) + "\n" + json.dumps({"text": DOCS[1]}) + "\n")
    out = tmp_path / "terms.jsonl"
    res = CliRunner().invoke(app, ["embed", "--sparse", "--model", str(splade_dir), "--input", str(inp), "--output", str(out),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", 1]
    tok = AutoTokenizer.from_pretrained(splade_dir)
    for line, vec in zip(lines, st_vectors(DOCS[:2], False)):
        want = {tok.convert_ids_to_tokens(int(i)): float(vec[i]) for i in np.flatnonzero(vec)}
        assert line["terms"].keys() == want.keys()
        for t, w in want.items():
            assert line["terms"][t] == pytest.approx(w, rel=1e-5, abs=1e-6)
        assert list(line["terms"].values()) == sorted(line["terms"].values(), reverse=True)
    res = CliRunner().invoke(app, ["embed", "--sparse", "--model", str(splade_dir), "--input", str(inp), "--output",
                                   str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and ".jsonl" in res.output


def test_serve_answers_tei_embed_sparse(splade_dir, st_vectors):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ragr.serve import create_app, load_model

    model = load_model("splade", str(splade_dir))
    assert "/embed_sparse" in model.endpoints
    with TestClient(create_app([model])) as client:
        for body, is_query in (({"inputs": DOCS[:2]}, False), ({"inputs": QUERIES[0], "prompt_name": "query"}, True)):
            r = client.post("/embed_sparse", json=body)
            assert r.status_code == 200, r.text
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            got = r.json()
            assert len(got) == len(texts)
            for terms, vec in zip(got, st_vectors(texts, is_query)):
                dense = np.zeros_like(vec)
                for item in terms:
                    dense[item["index"]] = item["value"]
                np.testing.assert_allclose(dense, vec, rtol=1e-5, atol=1e-6)
        r = client.post("/rerank", json={"query": QUERIES[0], "texts": DOCS, "raw_scores": True})
        assert r.status_code == 200
        best = r.json()[0]["index"]
        assert best == int(np.argmax(st_vectors(DOCS, False) @ st_vectors(QUERIES[:1], True)[0]))
