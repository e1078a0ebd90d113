"""Retrieval evaluation on the BEIR layout: exact top-k search with an embedder, optional rerank, metrics per stage.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id  corpus-id  score``, with a header line).
The corpus is embedded in batches, every query is searched *exactly* (batched matrix products, or a
faiss ``IndexFlatIP`` when faiss is installed and chosen), and the top-k hits can be re-scored by any
:class:`ragr.infer.Reranker`.

Metrics follow ``trec_eval`` on the run (see :func:`run_metrics`): unlike the candidate-list metrics
of :mod:`ragr.eval.metrics`, the denominators count *every* relevant document of the qrels, retrieved
or not, so recall@k and MAP fall when relevant documents are missed by the first stage.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragr.errors import DataError, UserError
from ragr.eval.metrics import aggregate

__all__ = ["BeirData", "evaluate_retrieval", "evaluate_sparse_retrieval", "exact_search", "inverted_index", "load_beir",
           "run_metrics", "sparse_search", "write_trec_run"]

SEARCH_BACKENDS = ("auto", "torch", "faiss")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class BeirData:
    """A BEIR dataset in memory: the corpus as parallel id / text lists, queries and qrels by id."""

    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str
    path: str

    @property
    def query_ids(self) -> list[str]:
        """The queries evaluated: those with a qrels entry (in qrels order)."""
        return list(self.qrels)


def _read_jsonl_records(path: Path, what: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    from ragr.data.jsonl import iter_jsonl

    for lineno, _, obj in iter_jsonl(path):
        if "_id" not in obj:
            raise DataError(str(path), lineno, "missing", field="_id")
        rid = obj["_id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataError(str(path), lineno, f"must be a string or an integer, got {json.dumps(rid)[:60]}", field="_id")
        for key in ("text", "title") if what == "corpus" else ("text",):
            value = obj.get(key)
            if key == "text" and value is None:
                raise DataError(str(path), lineno, "missing", field="text")
            if value is not None and not isinstance(value, str):
                raise DataError(str(path), lineno, f"must be a string, got {json.dumps(value)[:60]}", field=key)
        yield lineno, str(rid), obj


def _choose_split(qrels_dir: Path, split: str | None) -> Path:
    available = sorted(p.stem for p in qrels_dir.glob("*.tsv"))
    if not available:
        raise UserError(f"{qrels_dir} holds no <split>.tsv qrels file")
    if split is None:
        split = "test" if "test" in available else (available[0] if len(available) == 1 else None)
        if split is None:
            raise UserError(f"{qrels_dir} holds several splits ({', '.join(available)}); choose one with data.split=NAME")
    if split not in available:
        from ragr.errors import did_you_mean

        raise UserError(f"no qrels split '{split}' in {qrels_dir}{did_you_mean(split, available)}; "
                        f"available: {', '.join(available)}")
    return qrels_dir / f"{split}.tsv"


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR/TREC-style qrels TSV: ``query-id <tab> corpus-id <tab> score`` (an optional header line).

    Four-column TREC qrels (``qid 0 docid rel``, whitespace separated) are accepted too.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) not in (3, 4):
                parts = line.split()
            if len(parts) == 4:  # TREC qrels: qid iteration docid rel
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise DataError(str(path), lineno, "expected 3 tab-separated columns (query-id, corpus-id, score), "
                                                   f"got {len(parts)}")
            qid, did, rel = (p.strip() for p in parts)
            try:
                value = float(rel)
            except ValueError:
                if first:  # the header line (query-id  corpus-id  score)
                    first = False
                    continue
                raise DataError(str(path), lineno, f"score must be a number, got {rel!r}") from None
            first = False
            if not qid or not did or value != int(value):
                raise DataError(str(path), lineno, f"expected a query id, a corpus id and an integer score, got {line.strip()!r}")
            qrels.setdefault(qid, {})[did] = int(value)
    if not qrels:
        raise DataError(str(path), 0, "no judgments")
    return qrels


def load_beir(path: str | Path, split: str | None = None) -> BeirData:
    """Load a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Args:
        path: the folder.
        split: the qrels split; None: ``test`` when present, else the only one.

    Returns:
        The corpus (a document's text is ``title + " " + text`` when it has a title, as BEIR does),
        the queries and the qrels of the split.

    Raises:
        UserError / DataError: missing files, malformed lines (naming file and line), duplicate ids,
            or qrels naming a query that ``queries.jsonl`` lacks.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"BEIR folder not found: {root} (expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
        if not (root / name).exists():
            raise UserError(f"{root} is not a BEIR folder: {name} is missing "
                            "(expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    qrels_file = _choose_split(root / "qrels", split)
    qrels = read_qrels(qrels_file)

    doc_ids: list[str] = []
    doc_texts: list[str] = []
    seen: set[str] = set()
    corpus_path = root / "corpus.jsonl"
    for lineno, did, obj in _read_jsonl_records(corpus_path, "corpus"):
        if did in seen:
            raise DataError(str(corpus_path), lineno, f"duplicate document id {did!r}", field="_id")
        seen.add(did)
        title = (obj.get("title") or "").strip()
        text = obj["text"]
        doc_ids.append(did)
        doc_texts.append(f"{title} {text}".strip() if title else text)
    if not doc_ids:
        raise DataError(str(corpus_path), 0, "no documents")

    queries: dict[str, str] = {}
    queries_path = root / "queries.jsonl"
    for lineno, qid, obj in _read_jsonl_records(queries_path, "queries"):
        if qid in queries:
            raise DataError(str(queries_path), lineno, f"duplicate query id {qid!r}", field="_id")
        queries[qid] = obj["text"]
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataError(str(qrels_file), 0, f"{len(missing)} query ids are not in queries.jsonl "
                                            f"(first: {missing[0]!r})")
    return BeirData(doc_ids, doc_texts, queries, qrels, qrels_file.stem, str(root))


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def exact_search(queries: Any, docs: Any, top_k: int, *, backend: str = "auto", query_batch: int = 256,
                 doc_batch: int = 65536, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search (cosine for normalized vectors).

    Args:
        queries: ``[Q, dim]`` vectors (numpy or torch); computed in fp32.
        docs: ``[N, dim]`` vectors.
        top_k: hits per query (capped at ``N``).
        backend: ``torch`` (batched matrix products, a running top-k over document blocks), ``faiss``
            (``IndexFlatIP``; faiss must be installed) or ``auto`` (faiss when importable, else torch).
        query_batch: queries per block (torch backend).
        doc_batch: documents per block (torch backend): memory is ``query_batch x doc_batch`` floats.
        progress: called with the number of queries done after each block.

    Returns:
        ``(scores, indices)``, both ``[Q, min(top_k, N)]``, best first; scores fp32, indices int64.
        Equal scores are ordered by document index, also at the top-k cut (torch backend).
    """
    import torch

    if backend not in SEARCH_BACKENDS:
        raise UserError(f"search backend must be one of {', '.join(SEARCH_BACKENDS)}, got {backend!r}")
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries).float()
    d = torch.as_tensor(np.asarray(docs) if not isinstance(docs, torch.Tensor) else docs).float()
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"queries and docs must be [Q, dim] and [N, dim], got {tuple(q.shape)} and {tuple(d.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, d.shape[0])
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise UserError("eval.search=faiss needs the faiss package (pip install faiss-cpu or faiss-gpu); "
                        "eval.search=torch gives the same exact results")
    if faiss is not None:
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(np.ascontiguousarray(d.cpu().numpy(), dtype=np.float32))
        scores, idx = index.search(np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32), k)
        if progress is not None:
            progress(q.shape[0])
        return _tie_sorted(np.asarray(scores, dtype=np.float32), np.asarray(idx, dtype=np.int64))

    from ragr.device import default_device

    device = str(default_device())
    d = d.to(device)
    all_s, all_i = [], []
    for qs in range(0, q.shape[0], query_batch):
        qb = q[qs : qs + query_batch].to(device)
        best_s = torch.empty(qb.shape[0], 0, device=device)
        best_i = torch.empty(qb.shape[0], 0, dtype=torch.long, device=device)
        for ds in range(0, d.shape[0], doc_batch):
            s = qb @ d[ds : ds + doc_batch].T
            ts, ti = _topk_stable(s, min(k, s.shape[1]))
            # merge with the running best: order by document index, then a stable sort by score
            cat_s, cat_i = torch.cat([best_s, ts], 1), torch.cat([best_i, ti + ds], 1)
            by_doc = torch.argsort(cat_i, dim=1)
            cat_s, cat_i = torch.gather(cat_s, 1, by_doc), torch.gather(cat_i, 1, by_doc)
            sel_s, sel = torch.sort(cat_s, dim=1, descending=True, stable=True)
            best_s, best_i = sel_s[:, :k], torch.gather(cat_i, 1, sel[:, :k])
        all_s.append(best_s.cpu())
        all_i.append(best_i.cpu())
        if progress is not None:
            progress(qb.shape[0])
    scores = torch.cat(all_s).numpy().astype(np.float32) if all_s else np.zeros((0, k), np.float32)
    idx = torch.cat(all_i).numpy().astype(np.int64) if all_i else np.zeros((0, k), np.int64)
    return _tie_sorted(scores, idx)


def _topk_stable(s, k: int):
    """The top ``k`` of each row of ``s``; ties at the cut go to the lowest positions (a stable sort for rows
    that need it). The order inside the selection is not defined."""
    import torch

    ts, ti = torch.topk(s, k, dim=1)
    tied = (s >= ts[:, -1:]).sum(1) > k
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        ss, si = torch.sort(s[rows], dim=1, descending=True, stable=True)
        ts[rows], ti[rows] = ss[:, :k], si[:, :k]
    return ts, ti


def _tie_sorted(scores: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row ordered by score descending, then document index ascending (deterministic ties)."""
    out_s, out_i = np.empty_like(scores), np.empty_like(idx)
    for r in range(scores.shape[0]):
        order = np.lexsort((idx[r], -scores[r].astype(np.float64)))
        out_s[r], out_i[r] = scores[r][order], idx[r][order]
    return out_s, out_i


# ---------------------------------------------------------------------------------------------
# Metrics on a run
# ---------------------------------------------------------------------------------------------


def query_run_metrics(scores: Sequence[float], labels: Sequence[float], judged: Sequence[float],
                      ks: Sequence[int]) -> dict[str, float] | None:
    """trec_eval metrics of one query's retrieved list.

    Args:
        scores: scores of the retrieved documents.
        labels: their qrels labels (0 when unjudged).
        judged: every qrels label of the query (retrieved or not): the denominators of MAP and
            recall and the ideal ranking of nDCG.
        ks: cutoffs.

    Returns:
        None when the query has no relevant document (skipped); else the same keys as
        :func:`ragr.eval.metrics.query_metrics`. An empty retrieved list scores 0 everywhere.
    """
    from ragr.eval.metrics import _check_ks, rank_order

    ks = _check_ks(ks)
    all_labels = np.maximum(np.asarray(judged, dtype=np.float64), 0.0)
    num_rel = int((all_labels > 0).sum())
    if num_rel == 0:
        return None
    y = np.maximum(np.asarray(labels, dtype=np.float64), 0.0)
    if len(y):
        order = rank_order(scores, y)
        gains = y[order]
    else:
        gains = y
    hits = gains > 0
    n = len(gains)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits)
    hit_ranks = ranks[hits]
    first = int(hit_ranks[0]) if len(hit_ranks) else None
    out: dict[str, float] = {
        "map": float(np.sum(cum_hits[hits] / hit_ranks) / num_rel) if len(hit_ranks) else 0.0,
        "mrr": 1.0 / first if first else 0.0,
    }
    ideal = np.sort(all_labels)[::-1]
    for k in ks:
        m = min(k, n)
        hits_k = int(cum_hits[m - 1]) if m else 0
        disc = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        dcg = float(np.sum(gains[:m] * disc[:m]))
        mi = min(k, len(ideal))
        idcg = float(np.sum(ideal[:mi] * disc[:mi]))
        out[f"mrr@{k}"] = 1.0 / first if first and first <= k else 0.0
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"recall@{k}"] = hits_k / num_rel
        out[f"p@{k}"] = hits_k / k
    return out


def run_metrics(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                ks: Sequence[int] = (1, 3, 5, 10, 100)) -> dict[str, float | int]:
    """Mean trec_eval metrics of a run over the queries of the qrels.

    Policy: every query of ``qrels`` with at least one relevant document (label > 0) is averaged in;
    one the run does not retrieve for scores 0. Queries with no relevant document are skipped and
    counted in ``num_skipped``. Ties are pessimistic (as in :mod:`ragr.eval.metrics`), then by document id.

    Args:
        run: ``{query_id: {doc_id: score}}``.
        qrels: ``{query_id: {doc_id: label}}``.
        ks: cutoffs.
    """
    per_query = []
    for qid, judged in qrels.items():
        hits = run.get(qid, {})
        docs = sorted(hits)
        per_query.append(query_run_metrics([hits[d] for d in docs], [judged.get(d, 0) for d in docs],
                                           list(judged.values()), ks))
    return aggregate(per_query)


def write_trec_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "ragr") -> None:
    """Write a run in TREC format (``qid Q0 docid rank score tag``), for checking with trec_eval."""
    from ragr.fileio import atomic_write_text

    lines = []
    for qid, hits in run.items():
        ranked = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.extend(f"{qid} Q0 {did} {r} {score:.8g} {tag}" for r, (did, score) in enumerate(ranked, start=1))
    atomic_write_text(Path(path), "\n".join(lines) + ("\n" if lines else ""))


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _progress(console: Any, description: str, total: int):
    if console is None:
        return contextlib.nullcontext(lambda n=1: None)
    return console.progress(description, total)


def _encode_sides(encode: Callable, data: BeirData, top_k: int, rerank_top_k: int, batch_size: int, console: Any,
                  verb: str):
    """``(query ids, query texts, query outputs, corpus outputs)`` of ``encode(texts, is_query, batch_size, progress)``,
    after checking that the rerank depth fits the retrieval depth."""
    if rerank_top_k > top_k:
        raise UserError(f"eval.rerank_top_k ({rerank_top_k}) cannot exceed eval.top_k ({top_k})")
    qids = data.query_ids
    q_texts = [data.queries[q] for q in qids]
    with _progress(console, f"{verb} corpus", len(data.doc_texts)) as advance:
        d = encode(data.doc_texts, is_query=False, batch_size=batch_size, progress=advance)
    with _progress(console, f"{verb} queries", len(q_texts)) as advance:
        q = encode(q_texts, is_query=True, batch_size=batch_size, progress=advance)
    return qids, q_texts, q, d


def evaluate_retrieval(embedder: Any, data: BeirData, *, top_k: int = 100, ks: Sequence[int] = (1, 3, 5, 10, 100),
                       batch_size: int = 64, reranker: Any = None, rerank_top_k: int = 100, search: str = "auto",
                       console: Any = None) -> dict[str, Any]:
    """Retrieve the top ``top_k`` documents of every qrels query, optionally rerank, and score each stage.

    Args:
        embedder: anything with ``encode(texts, is_query, batch_size, progress) -> [N, dim]``
            (a :class:`ragr.models.embedder.Embedder`).
        data: from :func:`load_beir`.
        top_k: documents retrieved per query (the run the retrieval metrics are computed on).
        ks: metric cutoffs.
        batch_size: texts per encoder batch.
        reranker: an optional :class:`ragr.infer.Reranker` that re-scores the first ``rerank_top_k`` hits.
        rerank_top_k: hits per query given to the reranker (at most ``top_k``).
        search: ``auto`` | ``torch`` | ``faiss`` (see :func:`exact_search`).
        console: a :class:`ragr.ui.Console` for progress bars (None: silent).

    Returns:
        ``{"stages": {"retrieval": metrics[, "rerank": metrics]}, "runs": {stage: {qid: {doc_id: score}}}}``.
    """
    qids, q_texts, q_emb, d_emb = _encode_sides(embedder.encode, data, top_k, rerank_top_k, batch_size, console, "embed")
    with _progress(console, "search", len(qids)) as advance:
        scores, idx = exact_search(q_emb, d_emb, top_k, backend=search, progress=advance)
    hits = [(scores[r], idx[r]) for r in range(len(qids))]
    stages, runs = _score_stages(data, qids, q_texts, hits, ks, reranker, rerank_top_k, console)
    return {"stages": stages, "runs": runs}


def _score_stages(data: BeirData, qids: list[str], q_texts: list[str], hits: Sequence[tuple[Any, Any]],
                  ks: Sequence[int], reranker: Any, rerank_top_k: int, console: Any):
    """The retrieval run from each query's ``(scores, doc indices)`` hits, the reranker's re-scoring of the first
    ``rerank_top_k`` of them when there is one, and the metrics of each stage: ``(stages, runs)``."""
    runs: dict[str, dict[str, dict[str, float]]] = {"retrieval": {}}
    for qid, (scores, idx) in zip(qids, hits):
        runs["retrieval"][qid] = {data.doc_ids[j]: float(s) for s, j in zip(scores, idx)}
    stages = {"retrieval": run_metrics(runs["retrieval"], data.qrels, ks)}
    if reranker is not None:
        pairs = [(q_texts[r], data.doc_texts[j]) for r, (_, idx) in enumerate(hits) for j in idx[:rerank_top_k]]
        with _progress(console, "rerank", len(pairs)) as advance:
            flat = reranker.score(pairs, progress=advance)
        rerank: dict[str, dict[str, float]] = {}
        at = 0
        for qid, (_, idx) in zip(qids, hits):
            depth = min(rerank_top_k, len(idx))
            rerank[qid] = {data.doc_ids[j]: float(flat[at + c]) for c, j in enumerate(idx[:depth])}
            at += depth
        runs["rerank"] = rerank
        stages["rerank"] = run_metrics(rerank, data.qrels, ks)
    return stages, runs


# ---------------------------------------------------------------------------------------------
# Sparse (SPLADE) retrieval: an inverted index as a scipy CSR matrix
# ---------------------------------------------------------------------------------------------


def inverted_index(docs: Any):
    """The postings of a ``[N, V]`` sparse document matrix: ``[V, N]`` CSR, row ``t`` = the documents holding term ``t``
    and their weights (scipy's ``tocsr`` of the transpose sorts them by document)."""
    import scipy.sparse as sp

    return sp.csr_matrix(docs, dtype=np.float32).T.tocsr()


def sparse_search(queries: Any, docs: Any, top_k: int, *, query_batch: int = 1024,
                  progress: Callable[[int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k by sparse dot product through an inverted index (the CSR product walks the postings of each
    query term, as a search engine does).

    Args:
        queries: ``[Q, V]`` scipy sparse (or dense) term weights; docs: ``[N, V]``.
        top_k: hits per query.
        query_batch: queries per CSR product (memory: their accumulators over the matched documents).

    Returns:
        Per query, ``(scores fp32, document indices int64)``, best first, ties by document index; only documents
        sharing at least one term with the query are hits (a query may get fewer than ``top_k``).
    """
    import scipy.sparse as sp

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    q = sp.csr_matrix(queries, dtype=np.float32)
    postings = inverted_index(docs)
    if q.shape[1] != postings.shape[0]:
        raise ValueError(f"queries have {q.shape[1]} terms and documents {postings.shape[0]}")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, q.shape[0], query_batch):
        block = (q[start : start + query_batch] @ postings).tocsr()  # [b, N]: a stored entry per matched document
        block.sort_indices()
        for r in range(block.shape[0]):
            lo, hi = block.indptr[r], block.indptr[r + 1]
            idx, scores = block.indices[lo:hi].astype(np.int64), block.data[lo:hi].astype(np.float32)
            order = np.lexsort((idx, -scores.astype(np.float64)))[:top_k]
            out.append((scores[order], idx[order]))
        if progress is not None:
            progress(block.shape[0])
    return out


def evaluate_sparse_retrieval(model: Any, data: BeirData, *, top_k: int = 100, ks: Sequence[int] = (1, 3, 5, 10, 100),
                              batch_size: int = 32, reranker: Any = None, rerank_top_k: int = 100,
                              console: Any = None) -> dict[str, Any]:
    """:func:`evaluate_retrieval` for a sparse model: encode the corpus into term weights, search through an inverted
    index (:func:`sparse_search`), optionally rerank, and score each stage.

    Args:
        model: anything with ``encode_sparse(texts, is_query, batch_size, progress) -> scipy [N, V]``
            (a :class:`ragr.families.splade.Splade`).

    Returns:
        ``{"stages", "runs", "active_dims": {"query", "doc"}}`` (mean nonzero terms per query / document, also in
        the retrieval stage's metrics as ``active_dims_query`` / ``active_dims_doc``).
    """
    qids, q_texts, q, d = _encode_sides(model.encode_sparse, data, top_k, rerank_top_k, batch_size, console, "encode")
    with _progress(console, "search (inverted index)", len(qids)) as advance:
        hits = sparse_search(q, d, top_k, progress=advance)
    stages, runs = _score_stages(data, qids, q_texts, hits, ks, reranker, rerank_top_k, console)
    q.eliminate_zeros()
    d.eliminate_zeros()
    active = {"query": float(q.getnnz(axis=1).mean()) if q.shape[0] else 0.0,
              "doc": float(d.getnnz(axis=1).mean()) if d.shape[0] else 0.0}
    stages["retrieval"].update(active_dims_query=active["query"], active_dims_doc=active["doc"])
    return {"stages": stages, "runs": runs, "active_dims": active}
