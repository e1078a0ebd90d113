"""Hard-negative mining: never a positive, only from the rank range, never within the margin of the positive."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.data.mine import corpus_from_records, load_corpus, mine_records, norm_text, parse_rank_range, pick_negatives
from ragr.errors import UserError

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# The selection step
# ---------------------------------------------------------------------------------------------


def eligible_by_loop(ranked, scores, forbidden, lo, hi, pos_score, margin):
    """Reference: walk the ranking once, counting ranks only for allowed ids."""
    out, rank = [], 0
    for i, s in zip(ranked, scores):
        if i in forbidden:
            continue
        rank += 1
        if lo <= rank <= hi and (margin is None or s < pos_score - margin):
            out.append(int(i))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_pick_negatives_respects_forbidden_rank_range_and_margin(seed):
    rng = np.random.default_rng(seed)
    n_cand = int(rng.integers(1, 80))
    ranked = rng.permutation(1000)[:n_cand]
    scores = np.sort(rng.random(n_cand))[::-1]
    forbidden = set(rng.choice(ranked, size=int(rng.integers(0, n_cand + 1)), replace=False).tolist())
    lo = int(rng.integers(1, 20))
    hi = lo + int(rng.integers(0, 40))
    pos_score = float(rng.random())
    margin = None if seed % 5 == 0 else float(rng.random() * 0.2)
    n = int(rng.integers(1, 12))
    ok = eligible_by_loop(ranked, scores, forbidden, lo, hi, pos_score, margin)
    at = dict(zip(ranked.tolist(), scores.tolist()))

    got = pick_negatives(ranked, scores, n, (lo, hi), forbidden=forbidden, pos_score=pos_score, margin=margin,
                         rng=np.random.default_rng(seed))
    assert set(got) <= set(ok)
    assert len(got) == min(n, len(ok)) == len(set(got))
    assert not set(got) & forbidden
    if margin is not None:
        assert all(at[i] < pos_score - margin for i in got)
    assert [at[i] for i in got] == sorted((at[i] for i in got), reverse=True)  # hardest first

    top = pick_negatives(ranked, scores, n, (lo, hi), forbidden=forbidden, pos_score=pos_score, margin=margin, sample="top")
    assert top == ok[:n]


def test_pick_negatives_extra_reject_guard_and_seeded_sampling():
    ranked = np.arange(20)
    scores = np.linspace(1, 0, 20)
    got = pick_negatives(ranked, scores, 30, (1, 20), reject=lambda ids: ids % 2 == 0)
    assert got == list(range(1, 20, 2))
    a = pick_negatives(ranked, scores, 3, (1, 20), rng=np.random.default_rng(7))
    b = pick_negatives(ranked, scores, 3, (1, 20), rng=np.random.default_rng(7))
    assert a == b


def test_parse_rank_range():
    assert parse_rank_range("10:100") == (10, 100)
    assert parse_rank_range("3-50") == (3, 50)
    for bad in ("0:5", "9:3", "x", "1:2:3"):
        with pytest.raises(UserError):
            parse_rank_range(bad)


# ---------------------------------------------------------------------------------------------
# Mining with a transparent embedder
# ---------------------------------------------------------------------------------------------

TOPICS = ["paris", "spider", "hamlet", "python", "moon", "vaccine"]


def _unit(key: str, dim: int = 24) -> np.ndarray:
    v = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")).normal(size=dim)
    return v / np.linalg.norm(v)


class TopicEmbedder:
    """Vector = topic (first word) direction + a little of the normalized text's own direction.

    Texts that are equal after normalization get the same vector, so a positive's near-duplicates
    rank at the very top unless they are excluded by text.
    """

    def encode(self, texts, is_query=False, batch_size=64, progress=None):
        out = []
        for t in texts:
            key = norm_text(t)
            v = _unit(key.split()[0]) + 0.4 * _unit(key)
            out.append(v / np.linalg.norm(v))
            if progress is not None:
                progress(1)
        return np.asarray(out, dtype=np.float32)


def make_records_and_corpus():
    records, corpus = [], []
    for t in TOPICS:
        pos = f"{t} the answer"
        records.append({"query": f"{t} question?", "pos": [pos]})
        corpus += [pos, f"  {t.upper()}   THE answer ", f"{t} question?"]  # the positive, a variant, the query
        corpus += [f"{t} filler {j}" for j in range(8)]
        corpus += [f"{t} other {j}" for j in range(4)]
    return records, corpus


def reference_ranks(emb, record, corpus):
    """Independent ranking: numpy scores over the whole corpus, positives/query removed by text, stable order."""
    q = emb.encode([record["query"]])[0]
    d = emb.encode(corpus)
    s = d.astype(np.float64) @ q.astype(np.float64)
    banned = {norm_text(p) for p in record["pos"]} | {norm_text(record["query"])}
    first = {}
    for i, t in enumerate(corpus):  # a text repeated after normalization counts once (its first copy)
        first.setdefault(norm_text(t), i)
    order = [i for i in np.lexsort((np.arange(len(corpus)), -s))
             if norm_text(corpus[i]) not in banned and first[norm_text(corpus[i])] == i]
    best_pos = max(float(emb.encode([p])[0].astype(np.float64) @ q) for p in record["pos"])
    return {norm_text(corpus[i]): (r + 1, s[i]) for r, i in enumerate(order)}, best_pos


@pytest.mark.parametrize("rank_range,margin", [((1, 5), None), ((1, 40), 0.05), ((3, 12), 0.0), ((2, 30), 0.3)])
def test_mining_never_emits_a_positive_and_respects_rank_range_and_margin(rank_range, margin):
    emb = TopicEmbedder()
    records, corpus = make_records_and_corpus()
    rows = list(mine_records(emb, records, corpus, n=4, rank_range=rank_range, margin=margin, seed=1, chunk_size=4))
    assert rows
    lo, hi = rank_range
    for row in rows:
        rec = next(r for r in records if r["query"] == row["query"])
        assert row["pos"] == rec["pos"]
        ranks, best_pos = reference_ranks(emb, rec, corpus)
        positives = {norm_text(p) for p in rec["pos"]}
        assert 1 <= len(row["neg"]) <= 4
        for neg in row["neg"]:
            assert norm_text(neg) not in positives
            assert norm_text(neg) != norm_text(rec["query"])
            rank, score = ranks[norm_text(neg)]
            assert lo <= rank <= hi
            if margin is not None:
                assert score < best_pos - margin + 1e-6


def test_mining_rescored_by_a_reranker_uses_its_ranks():
    from ragr.infer.reranker import Reranker

    class ShortFirst:
        """Prefers short documents; normalized score = 1 / (1 + len)."""

        family = "test"
        tokenizer = None

        def score_pairs(self, queries, docs):
            return [float(len(d)) for d in docs]

        def normalize(self, s):
            return 1.0 / (1.0 + s)

    emb = TopicEmbedder()
    records, corpus = make_records_and_corpus()
    rr = Reranker.from_scorer(ShortFirst())
    rows = list(mine_records(emb, records, corpus, n=2, rank_range=(1, 6), margin=None, reranker=rr, sample="top",
                             seed=0))
    assert len(rows) == len(records)
    first = {}
    for i, t in enumerate(corpus):
        first.setdefault(norm_text(t), i)
    for row in rows:
        rec = next(r for r in records if r["query"] == row["query"])
        ranks, _ = reference_ranks(emb, rec, corpus)
        pool = [t for t, (r, _) in ranks.items() if r <= 6]  # the embedder's top 6 ...
        shortest = sorted(pool, key=lambda t: (len(corpus[first[t]]), first[t]))[:2]  # ... reranked: shortest first
        assert [norm_text(n) for n in row["neg"]] == shortest


def test_corpus_helpers(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [{"text": "a b"}, {"title": "T", "text": "x"}, {"text": " A  B "}]))
    assert load_corpus(path) == ["a b", "T x"]
    assert corpus_from_records([{"query": "q", "pos": ["p", "P"], "neg": ["n"]}]) == ["p", "n"]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_ragr_mine_writes_valid_triplets(tiny_bert, data_dir, tmp_path):
    from ragr.data.formats import load_training_file

    out = tmp_path / "triplets.jsonl"
    res = runner.invoke(app, ["mine", "--model", tiny_bert, "--input", str(data_dir / "pairs.jsonl"), "--corpus-from-data",
                              "--output", str(out), "--n", "3", "--rank-range", "2:8", "--margin", "0.0", "--quiet"])
    assert res.exit_code == 0, res.output
    index, fmt = load_training_file(str(out), "auto")
    assert fmt == "triplet" and len(index) >= 1
    pairs = {json.loads(line)["query"]: json.loads(line)["pos"] for line in (data_dir / "pairs.jsonl").read_text().splitlines()}
    for i in range(len(index)):
        row = index[i]
        assert row["pos"] == pairs[row["query"]]
        assert 1 <= len(row["neg"]) <= 3
        assert not {norm_text(n) for n in row["neg"]} & {norm_text(p) for p in row["pos"]}


def test_ragr_mine_usage_errors(tiny_bert, data_dir, tmp_path):
    base = ["mine", "--model", tiny_bert, "--input", str(data_dir / "pairs.jsonl"), "--output", str(tmp_path / "o.jsonl")]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "--corpus" in res.stderr
    res = runner.invoke(app, base + ["--corpus-from-data", "--rank-range", "5:1"])
    assert res.exit_code == 2 and "rank range" in res.stderr
    res = runner.invoke(app, base + ["--corpus-from-data", "--rank-range", "500:600"])
    assert res.exit_code == 2 and "no query got a negative" in res.stderr
    assert not (tmp_path / "o.jsonl").exists()
