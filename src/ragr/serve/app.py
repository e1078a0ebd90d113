"""The ``ragr serve`` web app: Cohere, TEI/Jina and OpenAI-compatible endpoints over served models.

Scores: Cohere's and Jina's ``relevance_score`` and TEI's ``score`` are in [0, 1] (the model's raw
score through the family's normalization, as ``ragr rerank --normalize``: the sigmoid of a logit,
(cos + 1) / 2 for embedders), unless the request sets ``raw_scores: true`` (TEI, Jina), which gives the
raw score of ``ragr rerank``. Ranking is the same either way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import uuid
from typing import Any, Optional, Union

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ragr import __version__
from ragr.errors import did_you_mean
from ragr.serve.batching import DOCUMENT, QUERY, RERANK, SPARSE_DOCUMENT, SPARSE_QUERY, BatchQueue
from ragr.serve.limits import (
    ApiError,
    BodyLimitMiddleware,
    ClientGone,
    ServeSettings,
    api_key_dependency,
    check_texts,
    install_error_handlers,
)
from ragr.serve.models import ServedModel
from ragr.serve.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbedSparseRequest,
    ErrorResponse,
    JinaRerankResponse,
    ModelList,
    RerankRequest,
    SparseValue,
    TeiResult,
)

DESCRIPTION = """Rerank and embed with ragr models behind the APIs RAG clients already speak.

* Cohere rerank: `POST /v2/rerank`, `POST /v1/rerank` (`relevance_score` in [0, 1]).
* TEI rerank: `POST /rerank` with `texts` (list of `{index, score}`; `raw_scores: true` for raw scores);
  Jina rerank: `POST /rerank` with `documents`.
* OpenAI embeddings: `POST /v1/embeddings` (`dimensions` truncates Matryoshka embeddings and renormalizes).
* TEI sparse embeddings: `POST /embed_sparse` with `inputs` (SPLADE models): `[[{index, value}]]` per input.

With `--api-key`, send `Authorization: Bearer <key>`. A model whose queue is full (`--max-queue`)
answers 503 with `Retry-After` (seconds).
"""

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 424, 500, 503)}


# ---- token costs (run in a thread: tokenizing is CPU work) ---------------------------------------------
def pair_costs(model: ServedModel, query: str, docs: list[str]) -> tuple[list[int], int]:
    """Padded-size estimate of each (query, doc) pair in tokens, and the request's token count."""
    q = model.count_tokens([query])[0]
    lengths = model.count_tokens(docs)
    limit = model.max_length
    costs = []
    for n in lengths:
        full = min(q + n + 4, limit)
        windows = 1
        if model.long_doc == "max-chunk":
            windows = max(1, math.ceil(n / max(1, limit - q - 4)))
        costs.append(windows * full)
    return costs, q * max(1, len(docs)) + sum(lengths)


def text_costs(model: ServedModel, texts: list[str], is_query: bool) -> tuple[list[int], int]:
    emb = model.embedder
    limit = emb.max_query_length if is_query else emb.max_doc_length
    lengths = model.count_tokens(texts)
    return [min(n + 2, limit) for n in lengths], sum(lengths)


# ---- helpers ------------------------------------------------------------------------------------------
async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)  # defensive: a server that replays body messages must not spin


async def run_or_drop(request: Request, queue: BatchQueue, kind: str, items: list, costs: list[int]) -> list:
    """Queue a job and wait for it; if the client disconnects first, cancel the job (ClientGone)."""
    work = asyncio.ensure_future(queue.submit(kind, items, costs))
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        watch.cancel()
        raise
    if work in done:
        watch.cancel()
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    raise ClientGone()


def _texts(docs: list[Any]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in docs]


def _order(scores: list[float], top_n: int | None) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order[:top_n] if top_n is not None else order


def create_app(models: list[ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (by name) under ``settings``; queues start with the app."""
    settings = settings or ServeSettings()
    by_name = {m.name: m for m in models}
    queues = {m.name: BatchQueue(m, settings.max_batch_tokens, settings.batch_size, settings.max_queue)
              for m in models}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for queue in queues.values():
            queue.start()
        try:
            yield
        finally:
            for queue in queues.values():
                await run_in_threadpool(queue.stop)

    app = FastAPI(title="ragr serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.models, app.state.queues, app.state.settings = by_name, queues, settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    auth = [Depends(api_key_dependency(settings.api_key))]

    def pick(name: Optional[str], embed: bool) -> ServedModel:
        able = [m for m in models if m.can_embed or not embed]
        if name is None:
            if not able:
                served = ", ".join(f"{m.name} ({m.family})" for m in models)
                raise ApiError(400, f"no served model can embed (served: {served}); serve an embedder", param="model")
            return able[0]
        if name not in by_name:
            raise ApiError(404, f"model '{name}' is not served{did_you_mean(name, list(by_name))} "
                           f"(served: {', '.join(by_name)})", param="model", code="model_not_found")
        model = by_name[name]
        if embed and not model.can_embed:
            raise ApiError(400, f"model '{name}' is a {model.family} reranker and cannot embed; "
                           "/v1/embeddings needs an embedder model", param="model")
        return model

    async def scores_for(request: Request, model_name: Optional[str], query: str, docs: list[str],
                         field: str) -> tuple[ServedModel, list[float], int]:
        check_texts([query], "query", settings, count=False)
        check_texts(docs, field, settings)
        model = pick(model_name, embed=False)
        queues[model.name].check_capacity()  # a full queue refuses before the tokenizing work
        costs, tokens = await run_in_threadpool(pair_costs, model, query, docs)
        raw = await run_or_drop(request, queues[model.name], RERANK, [(query, d) for d in docs], costs)
        return model, raw, tokens

    # ---- Cohere --------------------------------------------------------------------------------------
    async def cohere(body: CohereRerankRequest, request: Request, version: str) -> JSONResponse:
        docs = _texts(body.documents)
        model, raw, tokens = await scores_for(request, body.model, body.query, docs, "documents")
        norm = [model.reranker.scorer.normalize(s) for s in raw]
        results = []
        for i in _order(raw, body.top_n):  # rank by the raw score: a sigmoid can tie distinct logits
            item: dict[str, Any] = {"index": i, "relevance_score": norm[i]}
            if body.return_documents:
                item["document"] = {"text": docs[i]}
            results.append(item)
        out: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"api_version": {"version": version}, "billed_units": {"search_units": max(1, math.ceil(len(docs) / 100))},
                     "tokens": {"input_tokens": tokens, "output_tokens": 0}},
        }
        if version == "1":
            out.update(model=model.name, usage={"prompt_tokens": tokens, "total_tokens": tokens})
        return JSONResponse(out)

    @app.post("/v2/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
              tags=["rerank"], dependencies=auth, responses=ERRORS, summary="Rerank (Cohere v2)")
    async def rerank_v2(body: CohereRerankRequest, request: Request):
        """Cohere's v2 rerank: results best first with `relevance_score` in [0, 1]."""
        return await cohere(body, request, "2")

    @app.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
              tags=["rerank"], dependencies=auth, responses=ERRORS, summary="Rerank (Cohere v1, Jina)")
    async def rerank_v1(body: CohereRerankRequest, request: Request):
        """Cohere's v1 rerank (documents may be objects with `text`); also carries Jina's `model` and `usage`."""
        return await cohere(body, request, "1")

    # ---- TEI / Jina ----------------------------------------------------------------------------------
    @app.post("/rerank", response_model=Union[list[TeiResult], JinaRerankResponse], response_model_exclude_none=True,
              tags=["rerank"], dependencies=auth, responses=ERRORS, summary="Rerank (TEI texts, Jina documents)")
    async def rerank_tei(body: RerankRequest, request: Request):
        """TEI: `{query, texts}` -> `[{index, score}]` best first. Jina: `{query, documents}` -> `{model, usage, results}`.

        Scores are in [0, 1] unless `raw_scores` is true.
        """
        if (body.texts is None) == (body.documents is None):
            which = "both" if body.texts is not None else "neither"
            raise ApiError(422, f"texts: give exactly one of 'texts' (TEI) or 'documents' (Jina), got {which}", param="texts")
        field = "texts" if body.texts is not None else "documents"
        docs = body.texts if body.texts is not None else _texts(body.documents or [])
        model, raw, tokens = await scores_for(request, body.model, body.query, docs, field)
        scores = raw if body.raw_scores else [model.reranker.scorer.normalize(s) for s in raw]
        order = _order(raw, body.top_n)
        if body.texts is not None:
            return JSONResponse([{"index": i, "score": scores[i], **({"text": docs[i]} if body.return_text else {})}
                                 for i in order])
        results = [{"index": i, "relevance_score": scores[i], **({"document": {"text": docs[i]}} if body.return_documents else {})}
                   for i in order]
        return JSONResponse({"model": model.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results})

    # ---- OpenAI embeddings ---------------------------------------------------------------------------
    @app.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["embeddings"], dependencies=auth,
              responses=ERRORS, summary="Embeddings (OpenAI)")
    async def embeddings(body: EmbeddingRequest, request: Request):
        """OpenAI's embeddings: `input` a string or a list of strings; `dimensions` keeps the first N
        dimensions and renormalizes (Matryoshka models); `encoding_format` float or base64."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not isinstance(t, str) for t in texts):
            raise ApiError(422, "input: token arrays are not supported, send strings (LangChain's OpenAIEmbeddings: "
                           "check_embedding_ctx_length=False)", param="input")
        if not texts:
            raise ApiError(400, "input: must not be empty", param="input")
        check_texts(texts, "input", settings)
        model = pick(body.model, embed=True)
        dim = model.embedder.dim
        if body.dimensions is not None and body.dimensions > dim:
            raise ApiError(400, f"dimensions: {body.dimensions} is more than the model's {dim}", param="dimensions")
        is_query = body.input_type in ("query", "search_query")
        queues[model.name].check_capacity()
        costs, tokens = await run_in_threadpool(text_costs, model, texts, is_query)
        vectors = await run_or_drop(request, queues[model.name], QUERY if is_query else DOCUMENT, texts, costs)
        matrix = np.stack(vectors).astype(np.float32)
        if body.dimensions is not None and body.dimensions < dim:
            matrix = matrix[:, : body.dimensions]
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.maximum(norms, 1e-12)
        if body.encoding_format == "base64":
            data = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in matrix]
        else:
            data = matrix.tolist()
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await run_in_threadpool(JSONResponse, payload)  # rendering many floats is CPU work: off the loop

    # ---- TEI sparse embeddings -------------------------------------------------------------------------
    @app.post("/embed_sparse", response_model=list[list[SparseValue]], tags=["embeddings"], dependencies=auth,
              responses=ERRORS, summary="Sparse embeddings (TEI)")
    async def embed_sparse(body: EmbedSparseRequest, request: Request):
        """TEI's sparse embeddings: `inputs` a string or a list; per input, its nonzero terms `[{index, value}]`
        (vocabulary ids, heaviest first). `prompt_name: "query"` weights the texts as queries."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise ApiError(400, "inputs: must not be empty", param="inputs")
        check_texts(texts, "inputs", settings)
        sparse = [m for m in models if m.can_embed_sparse]
        if body.model is None and not sparse:
            served = ", ".join(f"{m.name} ({m.family})" for m in models)
            raise ApiError(424, f"no served model gives sparse embeddings (served: {served}); serve a SPLADE model",
                           param="model")
        model = pick(body.model, embed=False) if body.model is not None else sparse[0]
        if not model.can_embed_sparse:
            raise ApiError(424, f"model '{model.name}' is a {model.family} model, not a sparse (SPLADE) one", param="model")
        is_query = body.prompt_name == "query"
        queues[model.name].check_capacity()
        lengths = await run_in_threadpool(model.count_tokens, texts)
        limit = model.max_length
        terms = await run_or_drop(request, queues[model.name], SPARSE_QUERY if is_query else SPARSE_DOCUMENT, texts,
                                  [min(n + 2, limit) for n in lengths])
        return JSONResponse([[{"index": i, "value": v} for i, v in t.items()] for t in terms])

    # ---- info ----------------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList, tags=["info"], dependencies=auth, summary="Served models")
    async def list_models():
        """The served models (OpenAI's list shape), with each one's family and endpoints."""
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "ragr", "family": m.family,
             "endpoints": m.endpoints} for m in models]}

    @app.get("/health", tags=["info"], summary="Liveness and queue counters")
    async def health():
        """200 while the server is up; per model: family, queued jobs, the queue bound and counters
        (``refused``: requests answered 503 because the queue was full). No API key needed."""
        return {"status": "ok", "models": {
            name: {"family": by_name[name].family, "pending": q.pending, "max_queue": q.max_pending, **q.stats}
            for name, q in queues.items()}}

    return app
