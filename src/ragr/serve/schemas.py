"""Request and response bodies of ``ragr serve``, named as the public APIs name them.

- Cohere rerank (``POST /v2/rerank``, ``POST /v1/rerank``): ``model``, ``query``, ``documents``, ``top_n``,
  ``return_documents`` -> ``id``, ``results[].index``, ``results[].relevance_score`` (in [0, 1]),
  ``results[].document.text``, ``meta``. ``/v1/rerank`` also carries Jina's ``model`` and ``usage``.
- TEI rerank (``POST /rerank`` with ``texts``): ``query``, ``texts``, ``raw_scores``, ``return_text`` ->
  ``[{"index", "score", "text"}]`` best first; Jina rerank (``POST /rerank`` with ``documents``).
- OpenAI embeddings (``POST /v1/embeddings``): ``model``, ``input``, ``dimensions``, ``encoding_format``
  -> ``object``, ``data[].embedding``, ``data[].index``, ``model``, ``usage``.
- TEI sparse embeddings (``POST /embed_sparse``): ``inputs`` (a string or a list), ``prompt_name`` ->
  ``[[{"index", "value"}, ...], ...]``, one list per input (a SPLADE model's nonzero terms).

Fields that the public APIs define but that do not apply to a local model (Cohere's
``max_tokens_per_doc``, ``priority``, TEI's ``truncate`` ...) are accepted and ignored; unknown fields
are ignored, so newer clients keep working.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextDocument(BaseModel):
    """A document given as an object (Cohere v1, Jina): its ``text`` is what is scored."""

    model_config = ConfigDict(extra="allow")
    text: str


Document = Union[str, TextDocument]


# ---- Cohere ---------------------------------------------------------------------------------------
class CohereRerankRequest(_Body):
    model: Optional[str] = Field(None, description="Name of a served model (GET /v1/models); default: the first reranker.")
    query: str = Field(..., description="The search query.")
    documents: list[Document] = Field(..., description="Texts to rank (strings, or objects with a 'text' field).")
    top_n: Optional[int] = Field(None, ge=1, description="Return only the N best results (default: all).")
    return_documents: bool = Field(False, description="Echo each document's text in results[].document.")
    max_tokens_per_doc: Optional[int] = Field(None, description="Accepted for compatibility; long documents follow --long-doc.")
    rank_fields: Optional[list[str]] = Field(None, description="Accepted for compatibility; objects are ranked by 'text'.")


class RerankDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float = Field(..., description="Normalized score in [0, 1] (sigmoid of the logit; (cos + 1) / 2 for embedders).")
    document: Optional[RerankDocument] = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult] = Field(..., description="Best first; ties keep input order.")
    meta: Meta
    model: Optional[str] = Field(None, description="The served model (Jina's field; /v1/rerank only).")
    usage: Optional[Usage] = Field(None, description="Token counts (Jina's field; /v1/rerank only).")


# ---- TEI / Jina -------------------------------------------------------------------------------------
class RerankRequest(_Body):
    """TEI (``texts``) or Jina (``documents``) rerank request; exactly one of the two."""

    model: Optional[str] = Field(None, description="Name of a served model; default: the first reranker.")
    query: str
    texts: Optional[list[str]] = Field(None, description="TEI: texts to rank; the answer is a list of {index, score}.")
    documents: Optional[list[Document]] = Field(None, description="Jina: texts to rank; the answer is {model, usage, results}.")
    raw_scores: bool = Field(False, description="Return the model's raw scores instead of scores in [0, 1].")
    return_text: bool = Field(False, description="TEI: echo each text in the results.")
    top_n: Optional[int] = Field(None, ge=1, description="Return only the N best results (default: all).")
    return_documents: bool = Field(True, description="Jina: echo each document in results[].document.")
    truncate: Optional[bool] = Field(None, description="Accepted for compatibility; long texts follow --long-doc.")
    truncation_direction: Optional[str] = Field(None, description="Accepted for compatibility.")


class TeiResult(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[RerankDocument] = None


class JinaRerankResponse(BaseModel):
    model: str
    usage: Usage
    results: list[JinaResult]


# ---- OpenAI embeddings ------------------------------------------------------------------------------
class EmbeddingRequest(_Body):
    model: Optional[str] = Field(None, description="Name of a served embedder; default: the first embedder.")
    input: Union[str, list[str], list[int], list[list[int]]] = Field(..., description="A string or a list of strings (token arrays are not supported).")
    dimensions: Optional[int] = Field(None, ge=1, description="Matryoshka: keep the first N dimensions and renormalize.")
    encoding_format: Optional[Literal["float", "base64"]] = Field(None, description="float (default) or base64 (little-endian float32).")
    user: Optional[str] = None
    input_type: Optional[Literal["query", "document", "search_query", "search_document"]] = Field(
        None, description="ragr extension: embed as queries (the model's query prompt) or documents (default).")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# ---- TEI sparse embeddings ------------------------------------------------------------------------------
class EmbedSparseRequest(_Body):
    inputs: Union[str, list[str]] = Field(..., description="A text or a list of texts.")
    model: Optional[str] = Field(None, description="ragr extension: name of a served SPLADE model; default: the first one.")
    prompt_name: Optional[str] = Field(None, description="'query' weights the texts as queries; anything else (or none): "
                                       "documents.")
    truncate: Optional[bool] = Field(None, description="Accepted for compatibility; texts are cut at the model's length.")
    truncation_direction: Optional[str] = Field(None, description="Accepted for compatibility (right).")


class SparseValue(BaseModel):
    index: int = Field(..., description="Vocabulary id of the term.")
    value: float = Field(..., description="Its weight (> 0 for an MLM side).")


# ---- misc ---------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragr"
    family: str = Field(..., description="Reranker family: cross_encoder, llm_seqcls, llm_yes, embedder, colbert ...")
    endpoints: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Any] = None


class ErrorResponse(BaseModel):
    """Every error: Cohere reads ``message``, OpenAI clients read ``error``."""

    message: str
    error: ErrorDetail
