"""Hard-negative mining: retrieve with an embedder (optionally rescored by a reranker), keep a rank window.

For every query of a pair/triplet file, the corpus is searched exactly (:func:`ragr.eval.retrieval.exact_search`);
the query's positives and the query itself are removed from the ranking (compared on whitespace- and
case-normalized text), and ``n`` negatives are drawn from ranks ``lo..hi`` (1-based, inclusive, counted
after that removal). A candidate whose score is within ``margin`` of the best positive's score
(``score >= best_positive_score - margin``) is skipped as a likely false negative. With a reranker, the
window candidates are rescored by it (normalized scores in [0, 1]) and ranks, positive score and
margin all use the reranker's scores.

:func:`pick_negatives` is the selection step on its own (the demo data builder uses it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragr.errors import DataError, UserError

__all__ = ["MineStats", "load_corpus", "mine_file", "mine_records", "norm_text", "parse_rank_range", "pick_negatives"]


def norm_text(text: str) -> str:
    """The text identity used to keep positives out: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def parse_rank_range(text: str) -> tuple[int, int]:
    """``"10:100"`` -> ``(10, 100)`` (1-based, inclusive); also accepts ``10-100``."""
    sep = ":" if ":" in text else "-"
    parts = text.split(sep)
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"rank range must look like LO:HI (for example 10:100), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise UserError(f"rank range needs 1 <= LO <= HI, got {text!r}")
    return lo, hi


def pick_negatives(
    ranked: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    n: int,
    rank_range: tuple[int, int],
    *,
    forbidden: Container[int] = (),
    pos_score: float | None = None,
    margin: float | None = None,
    reject: Callable[[np.ndarray], np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    sample: str = "random",
) -> list[int]:
    """Choose up to ``n`` negatives from a ranked candidate list.

    Args:
        ranked: candidate ids, best first.
        scores: the score of each entry of ``ranked`` (same length).
        n: how many negatives to return at most.
        rank_range: ``(lo, hi)``, 1-based inclusive ranks counted after ``forbidden`` ids are removed.
        forbidden: ids that are never returned and do not take a rank (the query's positives).
        pos_score: the positive's score, for the false-negative guard.
        margin: with ``pos_score``, keep only candidates with ``score < pos_score - margin``; None: no guard.
        reject: optional extra guard: given the window's ids, returns a boolean mask of ids to skip.
        rng: random generator for ``sample="random"`` (default: seeded with 0).
        sample: ``random`` (uniform without replacement from the guarded window) or ``top`` (hardest first).

    Returns:
        The chosen ids, sorted by score descending (then id).
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    scores = np.asarray(scores)
    if ranked.shape != scores.shape:
        raise ValueError(f"ranked and scores differ in shape: {ranked.shape} vs {scores.shape}")
    if sample not in ("random", "top"):
        raise ValueError(f"sample must be 'random' or 'top', got {sample!r}")
    lo, hi = rank_range
    if forbidden:
        keep = np.fromiter((int(i) not in forbidden for i in ranked), dtype=bool, count=len(ranked))
        ranked, scores = ranked[keep], scores[keep]
    window, wscores = ranked[lo - 1 : hi], scores[lo - 1 : hi]
    ok = np.ones(len(window), dtype=bool)
    if margin is not None and pos_score is not None:
        ok &= wscores < pos_score - margin
    if reject is not None and len(window):
        ok &= ~np.asarray(reject(window), dtype=bool)
    cands, cscores = window[ok], wscores[ok]
    k = min(n, len(cands))
    if sample == "top":
        chosen = cands[:k].tolist()
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        chosen = rng.choice(cands, size=k, replace=False).tolist() if k else []
    at = {int(c): float(s) for c, s in zip(cands, cscores)}
    return sorted((int(c) for c in chosen), key=lambda i: (-at[i], i))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def load_corpus(path: str | os.PathLike, columns=None) -> list[str]:
    """Distinct texts of a corpus: ``{"text"[, "title"]}`` per record (BEIR ``corpus.jsonl`` works; any
    :mod:`ragr.data.sources` source), deduplicated on normalized text, first occurrence kept."""
    from ragr.data.sources import open_source

    src = open_source(path, columns)
    texts, seen = [], set()
    for lineno, obj in src.records():
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(src.label, lineno, "missing or not a string (a corpus record is {\"text\": ...})", field="text")
        title = obj.get("title")
        if isinstance(title, str) and title.strip():
            text = f"{title.strip()} {text}"
        key = norm_text(text)
        if key and key not in seen:
            seen.add(key)
            texts.append(text)
    if not texts:
        raise DataError(src.label, 0, "no documents")
    return texts


def corpus_from_records(records: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct positives and negatives of the input records (normalized-text dedup, first seen kept)."""
    texts, seen = [], set()
    for r in records:
        for t in list(r["pos"]) + list(r.get("neg") or []):
            key = norm_text(t)
            if key not in seen:
                seen.add(key)
                texts.append(t)
    return texts


def _seed_for(seed: int, query: str) -> list[int]:
    h = hashlib.sha256(query.encode("utf-8")).digest()
    return [seed, int.from_bytes(h[:8], "big")]


@dataclass
class MineStats:
    """What a mining run did."""

    queries: int = 0
    written: int = 0
    skipped_no_negative: int = 0
    negatives: int = 0
    short_rows: int = 0                  # rows with fewer than n negatives
    rejected_by_margin: int = 0          # window candidates dropped by the false-negative guard
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


def mine_records(
    embedder: Any,
    records: Sequence[dict[str, Any]],
    corpus: Sequence[str],
    *,
    n: int = 8,
    rank_range: tuple[int, int] = (10, 100),
    margin: float | None = 0.05,
    reranker: Any = None,
    batch_size: int = 64,
    seed: int = 42,
    sample: str = "random",
    chunk_size: int = 1024,
    corpus_emb: Any = None,
    stats: MineStats | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one triplet per record: the record with ``"neg"`` replaced by mined negatives.

    Args:
        embedder: ``encode(texts, is_query, batch_size) -> [N, dim]`` (a ragr Embedder).
        records: ``{"query", "pos": [...][, "neg", "prompt", ...]}`` dicts.
        corpus: candidate texts (a text repeated after normalization is a candidate once).
        n: negatives per query.
        rank_range: ``(lo, hi)`` 1-based inclusive, after removing positives and the query.
        margin: false-negative guard (None disables it); in the reranker's normalized scores with one.
        reranker: optional :class:`ragr.infer.Reranker` rescoring the window's candidates and the positives.
        batch_size: texts per encoder batch.
        seed: sampling seed (each query's generator is seeded with ``seed`` and the query text).
        sample: ``random`` or ``top``.
        chunk_size: queries embedded and searched at a time (bounds memory).
        corpus_emb: precomputed corpus embeddings (else computed here).
        stats: filled with counts when given.
        progress: called with the number of queries done.

    Records left with no negative are not yielded (counted in ``stats.skipped_no_negative``).
    """
    from ragr.eval.retrieval import exact_search

    stats = stats if stats is not None else MineStats()
    lo, hi = rank_range
    corpus = list(corpus)
    if not corpus:
        raise UserError("the corpus is empty")
    at: dict[str, list[int]] = {}
    for i, t in enumerate(corpus):
        at.setdefault(norm_text(t), []).append(i)
    duplicates = {i for ids in at.values() for i in ids[1:]}  # a text is a candidate once (its first copy)
    if corpus_emb is None:
        corpus_emb = embedder.encode(corpus, is_query=False, batch_size=batch_size)
    corpus_emb = np.asarray(corpus_emb, dtype=np.float32)
    for start in range(0, len(records), chunk_size):
        chunk = records[start : start + chunk_size]
        q_texts = [(r.get("prompt") or "") + r["query"] for r in chunk]
        q_emb = np.asarray(embedder.encode(q_texts, is_query=True, batch_size=batch_size), dtype=np.float32)
        pos_texts = list(dict.fromkeys(p for r in chunk for p in r["pos"]))
        p_at = {t: i for i, t in enumerate(pos_texts)}
        p_emb = np.asarray(embedder.encode(pos_texts, is_query=False, batch_size=batch_size), dtype=np.float32)
        depth = min(len(corpus), hi + len(duplicates) + max(
            sum(len(at.get(norm_text(t), ())) for t in list(r["pos"]) + [r["query"]]) for r in chunk))
        s_all, i_all = exact_search(q_emb, corpus_emb, depth, backend="torch")
        for row, r in enumerate(chunk):
            stats.queries += 1
            forbidden = duplicates | {i for t in list(r["pos"]) + [r["query"]] for i in at.get(norm_text(t), ())}
            keep = np.fromiter((int(i) not in forbidden for i in i_all[row]), dtype=bool, count=i_all.shape[1])
            ranked, scores = i_all[row][keep][:hi], s_all[row][keep][:hi]
            pos_scores = p_emb[[p_at[p] for p in r["pos"]]] @ q_emb[row]
            if reranker is not None and len(ranked):
                pairs = [(q_texts[row], corpus[i]) for i in ranked] + [(q_texts[row], p) for p in r["pos"]]
                rs = np.asarray(reranker.score(pairs, normalize=True), dtype=np.float64)
                order = np.lexsort((ranked, -rs[: len(ranked)]))
                ranked, scores = ranked[order], rs[: len(ranked)][order]
                pos_scores = rs[len(ranked):]
            best_pos = float(np.max(pos_scores))
            if margin is not None:
                window = scores[lo - 1 : hi]
                stats.rejected_by_margin += int(np.sum(window >= best_pos - margin))
            rng = np.random.default_rng(_seed_for(seed, r["query"]))
            chosen = pick_negatives(ranked, scores, n, (lo, hi), pos_score=best_pos, margin=margin, rng=rng, sample=sample)
            if progress is not None:
                progress(1)
            if not chosen:
                stats.skipped_no_negative += 1
                continue
            out = {k: v for k, v in r.items() if k not in ("neg", "neg_scores")}
            out["neg"] = [corpus[i] for i in chosen]
            stats.written += 1
            stats.negatives += len(chosen)
            stats.short_rows += int(len(chosen) < n)
            yield out


class _LazyRecords(Sequence):
    """Records of a validated source, read from its index on access (a big input is never held whole)."""

    def __init__(self, index) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.index[j] for j in range(*i.indices(len(self)))]
        return self.index[i]


def read_pairs(path: str, columns=None) -> Sequence[dict[str, Any]]:
    """Validated pair / triplet / scored records of ``path`` (see :mod:`ragr.data.formats`), read lazily."""
    from ragr.data.formats import load_training_file

    index, _ = load_training_file(path, "auto", columns=columns)
    return _LazyRecords(index)


def mine_file(
    embedder: Any,
    input_path: str,
    output_path: str,
    *,
    corpus_path: str | None = None,
    n: int = 8,
    rank_range: tuple[int, int] = (10, 100),
    margin: float | None = 0.05,
    reranker: Any = None,
    batch_size: int = 64,
    seed: int = 42,
    sample: str = "random",
    console: Any = None,
    columns: dict[str, Any] | None = None,
) -> MineStats:
    """Mine ``input_path`` (pairs or triplets) into ``output_path`` (triplets JSONL), written atomically.

    The input is any :mod:`ragr.data.sources` source (``columns`` maps its column names). The corpus is
    ``corpus_path`` (``{"text"}`` per record) or, when None, the distinct positives and negatives of the
    input itself.
    """
    import contextlib

    records = read_pairs(input_path, columns)
    corpus = load_corpus(corpus_path) if corpus_path else corpus_from_records(records)
    stats = MineStats(extra={"corpus_size": len(corpus)})

    def bar(desc: str, total: int):
        return console.progress(desc, total) if console is not None else contextlib.nullcontext(lambda k=1: None)

    with bar("embed corpus", len(corpus)) as advance:
        corpus_emb = embedder.encode(corpus, is_query=False, batch_size=batch_size, progress=advance)
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with bar("mine", len(records)) as advance, open(tmp, "w", encoding="utf-8") as f:
            for row in mine_records(embedder, records, corpus, n=n, rank_range=rank_range, margin=margin,
                                    reranker=reranker, batch_size=batch_size, seed=seed, sample=sample,
                                    corpus_emb=corpus_emb, stats=stats, progress=advance):
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")  # default: a table's dates, ...
        if stats.written == 0:
            raise UserError(f"no query got a negative (corpus of {len(corpus)} texts, rank range {rank_range[0]}:"
                            f"{rank_range[1]}, margin {margin}); widen --rank-range, lower --margin or add documents")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return stats
