"""``ragr serve`` endpoints answer the official Cohere and OpenAI clients and the TEI/Jina request
shapes, with scores checked against transformers / sentence-transformers run directly."""

from __future__ import annotations

import base64

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

QUERY = "what does a panda eat?"
DOCS = [
    "The giant panda eats bamboo almost exclusively.",
    "Paris is the capital of France.",
    "Pandas are bears that live in the mountains of China.",
    "hi",
]


def reference_logits(ce_dir, query: str, docs: list[str]) -> np.ndarray:
    """Cross-encoder logits computed pair by pair with transformers (no padding, no ragr code)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ce_dir)
    model = AutoModelForSequenceClassification.from_pretrained(ce_dir).eval()
    out = []
    with torch.no_grad():
        for d in docs:
            enc = tok(query, d, truncation=True, max_length=512, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return np.array(out)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def st_embeddings(emb_dir, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(emb_dir), device="cpu").encode(texts, convert_to_numpy=True)


@pytest.fixture(scope="module")
def ce_ref(model_dirs):
    return reference_logits(model_dirs["ce"], QUERY, DOCS)


def test_cohere_v2_client_rerank(server, ce_ref):
    cohere = pytest.importorskip("cohere")

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    res = client.rerank(model="ce", query=QUERY, documents=DOCS, top_n=3)
    expected = sigmoid(ce_ref)
    assert [r.index for r in res.results] == list(np.argsort(-expected, kind="stable")[:3])
    for r in res.results:
        assert 0.0 <= r.relevance_score <= 1.0
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-5)
    assert res.id and res.meta.api_version.version == "2"


def test_cohere_v1_client_with_document_objects(server, ce_ref):
    cohere = pytest.importorskip("cohere")

    client = cohere.Client(api_key="unused", base_url=server.url)
    docs = [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": DOCS[3]}]
    res = client.rerank(model="ce", query=QUERY, documents=docs, return_documents=True)
    assert len(res.results) == 4
    for r in res.results:
        assert r.document.text == DOCS[r.index]
        assert r.relevance_score == pytest.approx(sigmoid(ce_ref[r.index]), abs=1e-5)
    scores = [r.relevance_score for r in res.results]
    assert scores == sorted(scores, reverse=True)


def test_tei_rerank_list_shape(server, ce_ref):
    res = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert isinstance(res, list) and len(res) == 4 and set(res[0]) == {"index", "score"}
    assert [r["index"] for r in res] == list(np.argsort(-ce_ref, kind="stable"))
    for r in res:
        assert r["score"] == pytest.approx(sigmoid(ce_ref[r["index"]]), abs=1e-5)
    raw = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True,
                                                  "return_text": True, "truncate": True}).json()
    for r in raw:
        assert r["score"] == pytest.approx(ce_ref[r["index"]], abs=1e-5)
        assert r["text"] == DOCS[r["index"]]


def test_jina_rerank_shape(server, ce_ref):
    res = httpx.post(f"{server.url}/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert res["model"] == "ce" and res["usage"]["total_tokens"] > 0
    assert len(res["results"]) == 2
    best = int(np.argmax(ce_ref))
    assert res["results"][0]["index"] == best and res["results"][0]["document"] == {"text": DOCS[best]}
    assert res["results"][0]["relevance_score"] == pytest.approx(sigmoid(ce_ref[best]), abs=1e-5)


def test_openai_client_embeddings(server, model_dirs):
    openai = pytest.importorskip("openai")

    client = openai.OpenAI(api_key="unused", base_url=f"{server.url}/v1")
    expected = st_embeddings(model_dirs["emb"], DOCS)
    res = client.embeddings.create(model="emb", input=DOCS)  # the client asks for base64 and decodes it
    assert res.object == "list" and res.model == "emb"
    assert [d.index for d in res.data] == [0, 1, 2, 3]
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), expected, atol=1e-5)
    assert res.usage.prompt_tokens > 0 and res.usage.total_tokens == res.usage.prompt_tokens

    one = client.embeddings.create(model="emb", input=DOCS[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-5)

    mrl = client.embeddings.create(model="emb", input=DOCS[:2], dimensions=8, encoding_format="float")
    cut = expected[:2, :8] / np.linalg.norm(expected[:2, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([d.embedding for d in mrl.data]), cut, atol=1e-5)


def test_base64_is_little_endian_float32(server, model_dirs):
    res = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["hi"], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(res["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, st_embeddings(model_dirs["emb"], ["hi"])[0], atol=1e-5)


def test_embedder_reranks_by_cosine(server, model_dirs):
    cohere = pytest.importorskip("cohere")

    emb = st_embeddings(model_dirs["emb"], [QUERY] + DOCS)
    cos = emb[1:] @ emb[0] / (np.linalg.norm(emb[1:], axis=1) * np.linalg.norm(emb[0]))
    res = cohere.ClientV2(api_key="unused", base_url=server.url).rerank(model="emb", query=QUERY, documents=DOCS)
    for r in res.results:
        assert r.relevance_score == pytest.approx((cos[r.index] + 1) / 2, abs=1e-5)


def test_models_health_and_openapi(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    cards = {m["id"]: m for m in models["data"]}
    assert models["object"] == "list" and set(cards) == {"ce", "emb"}
    assert cards["ce"]["family"] == "cross_encoder" and "/v1/embeddings" not in cards["ce"]["endpoints"]
    assert "/v1/embeddings" in cards["emb"]["endpoints"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"ce", "emb"}
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/embeddings", "/v1/models", "/health"} <= set(spec["paths"])
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v2/rerank", {"query": 5, "documents": ["a"]}, 422, "query"),
    ("/v2/rerank", {"query": "q"}, 422, "documents"),
    ("/v2/rerank", {"query": "q", "documents": "a"}, 422, "documents"),
    ("/v2/rerank", {"query": "q", "documents": ["a", 3]}, 422, "documents[1]"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v2/rerank", {"model": "cee", "query": "q", "documents": ["a"]}, 404, "did you mean 'ce'"),
    ("/v2/rerank", [1, 2], 422, "body"),
    ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 422, "documents[0]"),
    ("/rerank", {"query": "q"}, 422, "texts"),
    ("/rerank", {"query": "q", "texts": ["a"], "documents": ["b"]}, 422, "exactly one"),
    ("/v1/embeddings", {"model": "ce", "input": "x"}, 400, "cannot embed"),
    ("/v1/embeddings", {"model": "emb", "input": [[1, 2]]}, 422, "token arrays"),
    ("/v1/embeddings", {"model": "emb", "input": []}, 400, "input"),
    ("/v1/embeddings", {"model": "emb", "input": "x", "dimensions": 4096}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "emb", "input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
])
def test_bad_requests_are_4xx_naming_the_field(server, path, body, status, needle):
    res = httpx.post(f"{server.url}{path}", json=body)
    assert res.status_code == status, res.text
    err = res.json()
    assert needle in err["message"] and err["error"]["message"] == err["message"]


def test_invalid_json_is_400(server):
    res = httpx.post(f"{server.url}/v2/rerank", content=b'{"query": ', headers={"content-type": "application/json"})
    assert res.status_code == 400 and "invalid JSON" in res.json()["message"]


def test_empty_documents_give_empty_results(server):
    res = httpx.post(f"{server.url}/v2/rerank", json={"query": "q", "documents": []})
    assert res.status_code == 200 and res.json()["results"] == []


# ---- limits and auth (the `guarded` server: key "secret", 3 documents, 40 characters, 1500 bytes) -----
KEY = {"Authorization": "Bearer secret"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2VjcmV0"}])
def test_api_key_required(guarded, headers):
    res = httpx.post(f"{guarded.url}/v2/rerank", json={"query": "q", "documents": ["a"]}, headers=headers)
    assert res.status_code == 401 and "API key" in res.json()["message"]
    assert res.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{guarded.url}/v1/models", headers=headers).status_code == 401


def test_api_key_accepted_by_clients(guarded):
    cohere = pytest.importorskip("cohere")
    openai = pytest.importorskip("openai")

    res = cohere.ClientV2(api_key="secret", base_url=guarded.url).rerank(model="ce", query="q", documents=["a", "b"])
    assert len(res.results) == 2
    emb = openai.OpenAI(api_key="secret", base_url=f"{guarded.url}/v1").embeddings.create(model="emb", input="x")
    assert len(emb.data[0].embedding) == 32
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="nope", base_url=f"{guarded.url}/v1", max_retries=0).embeddings.create(model="emb", input="x")
    assert httpx.get(f"{guarded.url}/health").status_code == 200  # liveness needs no key


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v2/rerank", {"query": "q", "documents": ["a", "b", "c", "d"]}, 400, "--max-documents"),
    ("/v2/rerank", {"query": "q", "documents": ["a", "x" * 41]}, 400, "--max-text-length"),
    ("/v2/rerank", {"query": "q" * 41, "documents": ["a"]}, 400, "--max-text-length"),
    ("/rerank", {"query": "q", "texts": ["a"] * 4}, 400, "--max-documents"),
    ("/v1/embeddings", {"input": ["a"] * 4}, 400, "--max-documents"),
    ("/v1/embeddings", {"input": "y" * 41}, 400, "--max-text-length"),
    ("/v2/rerank", {"query": "q", "documents": ["z" * 30] * 60}, 413, "--max-request-bytes"),
])
def test_limits_answer_4xx_naming_the_limit(guarded, path, body, status, needle):
    res = httpx.post(f"{guarded.url}{path}", json=body, headers=KEY)
    assert res.status_code == status, res.text
    assert needle in res.json()["message"]


def test_chunked_body_over_the_limit_is_413(guarded):
    def chunks():
        for _ in range(20):
            yield b" " * 100

    res = httpx.post(f"{guarded.url}/v2/rerank", content=chunks(), headers={**KEY, "content-type": "application/json"})
    assert res.status_code == 413 and "--max-request-bytes" in res.json()["message"]


def test_long_doc_max_chunk_matches_ragr_rerank(model_dirs, live_server):
    from ragr.infer import Reranker
    from ragr.serve import create_app, load_model

    model = load_model("ce", str(model_dirs["ce"]), long_doc="max-chunk", max_length=32, overlap=4)
    live = live_server(create_app([model]))
    long_doc = " ".join(["the giant panda lives in bamboo forests of central china"] * 8)
    docs = [long_doc, "short one"]
    res = httpx.post(f"{live.url}/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True}).json()
    got = [r["score"] for r in sorted(res, key=lambda r: r["index"])]
    pairs = [(QUERY, d) for d in docs]
    chunked = Reranker(str(model_dirs["ce"]), device="cpu", long_doc="max-chunk", max_length=32, overlap=4).score(pairs)
    truncated = Reranker(str(model_dirs["ce"]), device="cpu", max_length=32).score(pairs)
    assert got == pytest.approx(chunked, abs=1e-6)
    assert chunked[0] != pytest.approx(truncated[0], abs=2e-6)  # the long document really was scored by windows
