"""Rerank agreement: does ``ragr rerank --dtype bf16`` (or fp16) rank like fp32? (issue 9's quality target)

Scores every query group of a reranking dev set (default: the bundled demo ``dev.jsonl``, 154 queries of
about 20 candidates each) with ragr's ``Reranker`` once per dtype, on the same device, and compares each
low-precision run with fp32:

- top-10 identical: share of queries whose 10 best documents come in exactly the same order
  (ties keep input order, as ``Reranker.rank`` does);
- top-1 identical: share of queries with the same best document;
- top-10 set identical: the same 10 documents, in any order;
- top-10 labels identical: the same relevance labels at each of the 10 ranks (only swaps of equally
  labelled documents, which change no metric of that query);
- Kendall tau-b and Spearman rho between the fp32 and low-precision scores of a query, averaged over
  queries (numpy only, no scipy);
- max |score difference| over all pairs (raw logits);
- MRR@10 / nDCG@10 against the labels (``ragr.eval.metrics``, as ``ragr eval`` computes them), so a
  reordering can be judged by what it does to quality;
- the std of (score - fp32 score), and the top-10 identity that independent noise of that std would give
  on the fp32 scores' own gaps (if it matches the measured one, the drift is plain rounding noise
  against near-tied scores, not a systematic bias).

The target is a *trained* reranker: a random classification head gives near-tied scores and says
nothing. Pass ``--reranker DIR`` (a cross-encoder trained by ``ragr train task=reranker``, or any model
``Reranker`` opens), or ``--train`` to train a short MiniLM cross-encoder on the demo data first, into a
temp dir (10-20 minutes on a 2-core CPU). With neither, the script prints how to make one and exits 0
(so ``make bench``, which runs every script here with the same arguments, does not fail; the flag is not
``--model`` because ``serve_load.py`` takes that one with another meaning).

``--variants`` also measures ways of running the low-precision encoder that keep more in fp32 (patched
in this process only, ragr's code is unchanged), to find where the ranking drift comes from:

- ``ragr``: ragr as it is (encoder in the dtype; pooler and classifier in fp32);
- ``last-ln-fp32``: also the last layer's output LayerNorm in fp32 (the CLS state reaches the head unrounded);
- ``ln-fp32``: every LayerNorm in fp32 (output cast back to the dtype, except the last);
- ``autocast``: weights fp32, forward under ``torch.autocast(dtype)`` (matmuls in the dtype; LayerNorm,
  softmax and the residual stream in fp32);
- ``last-layer-fp32``: the last encoder layer (and everything after it) in fp32;
- ``rescore``: two-stage: every candidate scored in the dtype, then each query's best
  ``k + --rescore-margin`` re-scored in fp32 and ordered by those scores (the others keep their
  low-precision scores, capped below the re-scored ones); the share of pairs re-scored is printed.

Usage: python benchmarks/rerank_agreement.py --reranker /tmp/ce/model [--dtypes bf16,fp16] [--variants]
       python benchmarks/rerank_agreement.py --train [--train-steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: a short listwise MiniLM cross-encoder that learns in ~100 steps (lr 5e-5 barely moves its fresh head that fast)
TRAIN_OVERRIDES = ("task=reranker", "data.num_negatives=3", "model.max_length=128", "trainer.batch_size=16",
                   "trainer.lr=2e-4")
VARIANTS = ("ragr", "last-ln-fp32", "ln-fp32", "autocast", "last-layer-fp32", "rescore")


# ---- data -----------------------------------------------------------------------------------------
def load_groups(path: str) -> list[tuple[str, list[str], list[int]]]:
    """(query, candidates, labels) per line of an MTEB reranking JSONL (positives first, as ``ragr eval``)."""
    groups = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                cands = list(r["positive"]) + list(r["negative"])
                groups.append(((r.get("prompt") or "") + r["query"], cands,
                               [1] * len(r["positive"]) + [0] * len(r["negative"])))
    return groups


def default_dev() -> str:
    import importlib.resources

    return str(importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl")


# ---- statistics (numpy only) ----------------------------------------------------------------------
def order(scores) -> list[int]:
    """Indices by score, best first; ties keep input order (``Reranker.rank``'s order)."""
    import numpy as np

    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


def kendall_tau_b(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iu = np.triu_indices(len(a), 1)
    sa, sb = np.sign(a[:, None] - a[None, :])[iu], np.sign(b[:, None] - b[None, :])[iu]
    den = np.sqrt(float(np.count_nonzero(sa)) * float(np.count_nonzero(sb)))
    return float(np.sum(sa * sb) / den) if den else float("nan")


def _avg_ranks(x):
    """1-based ranks, tied values sharing their average rank."""
    import numpy as np

    _, inv, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inv]


def spearman(a, b) -> float:
    import numpy as np

    ra, rb = _avg_ranks(a), _avg_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / den) if den else float("nan")


def compare(ref: list[list[float]], other: list[list[float]], labels: list[list[int]], k: int) -> dict:
    """Agreement of ``other`` with ``ref`` (per-query score lists) and ``other``'s own quality."""
    import numpy as np

    from ragr.eval.metrics import rerank_metrics

    top_k = top_1 = top_set = top_labels = 0
    taus, rhos = [], []
    for r, o, y in zip(ref, other, labels):
        orr, oo = order(r), order(o)
        top_k += orr[:k] == oo[:k]
        top_1 += orr[0] == oo[0]
        top_set += set(orr[:k]) == set(oo[:k])
        top_labels += [y[i] for i in orr[:k]] == [y[i] for i in oo[:k]]  # same metrics for this query
        taus.append(kendall_tau_b(r, o))
        rhos.append(spearman(r, o))
    n = len(ref)
    diff = max(float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(o, np.float64)))) for r, o in zip(ref, other))
    m = rerank_metrics(other, labels, ks=(1, 10))
    return {"queries": n, "top_k": top_k / n, "top_k_count": top_k, "top_1": top_1 / n, "top_k_set": top_set / n,
            "top_k_labels": top_labels / n, "tau": float(np.nanmean(taus)),
            "rho": float(np.nanmean(rhos)), "max_diff": diff, "mrr@10": m["mrr@10"], "ndcg@10": m["ndcg@10"]}


def flip_report(ref: list[list[float]], other: list[list[float]], groups, k: int, name: str, show: int) -> None:
    """For each query whose top-k order differs: where, and how close the fp32 scores were."""
    import numpy as np

    rows = []
    for qi, (r, o) in enumerate(zip(ref, other)):
        orr, oo = order(r), order(o)
        if orr[:k] == oo[:k]:
            continue
        pos = next(p for p in range(k) if orr[p] != oo[p])  # first rank that differs (1-based below)
        a, b = orr[pos], oo[pos]  # fp32's and the other dtype's document at that rank
        rows.append((qi, pos + 1, r[a] - r[b], o[a] - o[b], groups[qi][2][a], groups[qi][2][b]))
    if not rows:
        return
    gaps = np.abs([x[2] for x in rows])
    print(f"\n{name}: {len(rows)} queries differ in the top-{k}; first differing rank "
          f"{sorted(x[1] for x in rows)}; fp32 score gap of the swapped pair: median {np.median(gaps):.3g}, "
          f"max {gaps.max():.3g}")
    for qi, rank, g32, gx, la, lb in rows[:show]:
        print(f"  query {qi} ({groups[qi][0][:50]!r}): rank {rank}: fp32 gap {g32:+.4f}, {name} gap {gx:+.4f}, "
              f"labels {la}/{lb}")


def expected_identity(ref: list[list[float]], sigma: float, k: int) -> float:
    """Share of queries expected to keep their top-k order if each score got independent N(0, sigma^2) noise.

    Only adjacent swaps are counted (P(no swap) = prod over ranks 1..k of Phi(gap / (sigma * sqrt 2))); a
    close match to the measured share says the drift is plain per-score noise against near-tied scores.
    """
    import math

    if sigma <= 0:
        return 1.0
    total = 0.0
    for r in ref:
        s = sorted(r, reverse=True)[: k + 1]
        p = 1.0
        for i in range(len(s) - 1):
            p *= 0.5 * (1.0 + math.erf((s[i] - s[i + 1]) / (2.0 * sigma)))
        total += p
    return total / len(ref)


def adjacent_gaps(ref: list[list[float]], k: int) -> list[float]:
    """fp32 score gaps between consecutive ranks 1..k+1 (where a swap changes the top-k order)."""
    out = []
    for r in ref:
        s = sorted(r, reverse=True)[: k + 1]
        out.extend(s[i] - s[i + 1] for i in range(len(s) - 1))
    return out


# ---- variants (patched here only) -----------------------------------------------------------------
def _upcast_pre(module, args, kwargs):
    import torch

    cast = lambda v: v.float() if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _downcast_post(dtype):
    def hook(module, args, out):
        return out.to(dtype) if hasattr(out, "to") else tuple(o.to(dtype) if hasattr(o, "to") else o for o in out)

    return hook


def build_reranker(path: str, dtype: str, variant: str, device: str, max_tokens: int | None):
    """A ``Reranker`` in ``dtype``; ``variant`` keeps more of the cross-encoder in fp32 (see the docstring)."""
    import torch
    from torch import nn

    from ragr.infer import Reranker
    from ragr.infer.reranker import DTYPES

    if dtype == "fp32" or variant == "ragr":
        return Reranker(path, device=device, dtype=dtype, max_tokens=max_tokens)
    low = DTYPES[dtype]
    if variant == "autocast":
        rr = Reranker(path, device=device, dtype="fp32", max_tokens=max_tokens)
        scorer = rr.scorer
        inner = scorer.score_tokenized

        def score_tokenized(features, _inner=inner):
            with torch.autocast(device_type=torch.device(device).type, dtype=low):
                return _inner(features)

        scorer.score_tokenized = score_tokenized
        return rr
    rr = Reranker(path, device=device, dtype=dtype, max_tokens=max_tokens)
    bb = rr.scorer.backbone
    layers = getattr(getattr(getattr(bb, bb.base_model_prefix, bb), "encoder", None), "layer", None)
    if layers is None:
        raise SystemExit(f"--variants: {type(bb).__name__} has no encoder.layer list (BERT-like models only)")
    last = layers[-1]
    if variant == "last-layer-fp32":
        last.float()
        last.register_forward_pre_hook(_upcast_pre, with_kwargs=True)
    elif variant in ("last-ln-fp32", "ln-fp32"):
        final_ln = [m for m in last.modules() if isinstance(m, nn.LayerNorm)][-1]  # output.LayerNorm
        lns = [final_ln] if variant == "last-ln-fp32" else [m for m in bb.modules() if isinstance(m, nn.LayerNorm)]
        for ln in lns:
            ln.float()
            ln.register_forward_pre_hook(_upcast_pre, with_kwargs=True)
            if ln is not final_ln:
                ln.register_forward_hook(_downcast_post(low))  # the next bf16 Linear wants its own dtype
        # the final LayerNorm's fp32 output is the last hidden state: the fp32 head takes it unrounded
    else:
        raise SystemExit(f"unknown variant {variant!r} ({', '.join(VARIANTS)})")
    return rr


def rescore(low: list[list[float]], groups, rr32, top: int) -> tuple[list[list[float]], int]:
    """Re-score each query's ``top`` best (by ``low``) with the fp32 ``rr32``; the rest stay below them."""
    picks = [order(s)[:top] for s in low]
    pairs = [(groups[qi][0], groups[qi][1][i]) for qi, p in enumerate(picks) for i in p]
    flat, at, out = rr32.score(pairs), 0, []
    for s, p in zip(low, picks):
        new = list(s)
        for i in p:
            new[i] = flat[at]
            at += 1
        floor = min(new[i] for i in p)
        chosen = set(p)
        for i in range(len(new)):
            if i not in chosen:
                new[i] = min(new[i], floor - 1e-3)  # a real two-stage ranker returns the re-scored ones first
        out.append(new)
    return out, len(pairs)


def score_groups(rr, groups) -> list[list[float]]:
    pairs = [(q, c) for q, cands, _ in groups for c in cands]
    flat = rr.score(pairs)
    out, at = [], 0
    for _, cands, _ in groups:
        out.append(flat[at : at + len(cands)])
        at += len(cands)
    return out


# ---- training -------------------------------------------------------------------------------------
def train(out_dir: Path, steps: int) -> Path:
    cmd = [str(Path(sys.executable).with_name("ragr")), "train", *TRAIN_OVERRIDES, f"trainer.max_steps={steps}",
           f"output_dir={out_dir}"]
    if not Path(cmd[0]).exists():
        cmd[:1] = [sys.executable, "-m", "ragr"]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out_dir / "model"


def how_to() -> None:
    print("rerank_agreement: no --reranker given; skipped. It needs a *trained* reranker, for example:\n"
          f"  ragr train {' '.join(TRAIN_OVERRIDES)} trainer.max_steps=100 output_dir=/tmp/ce\n"
          "  python benchmarks/rerank_agreement.py --reranker /tmp/ce/model\n"
          "or let it train one into a temp dir first (about 10-20 minutes on a 2-core CPU):\n"
          "  python benchmarks/rerank_agreement.py --train")


# ---- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", dest="model", default=None, help="a trained reranker (folder, alias or hub id)")
    ap.add_argument("--train", action="store_true", help="train a short MiniLM cross-encoder first (temp dir)")
    ap.add_argument("--train-steps", type=int, default=100, help="--train: trainer.max_steps")
    ap.add_argument("--data", default=None, help="MTEB reranking JSONL (default: the bundled demo dev.jsonl)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="bf16,fp16", help="low-precision dtypes to compare with fp32")
    ap.add_argument("--k", type=int, default=10, help="top-k whose order must be identical")
    ap.add_argument("--max-tokens", type=int, default=None, help="ragr: padded tokens per forward pass")
    ap.add_argument("--variants", nargs="?", const=",".join(VARIANTS), default="ragr",
                    help=f"comma-separated, or bare for all: {', '.join(VARIANTS)} (default: ragr)")
    ap.add_argument("--rescore-margin", type=int, default=5, help="variant rescore: re-score the best k + this in fp32")
    ap.add_argument("--show", type=int, default=5, help="queries to list per differing run")
    ap.add_argument("--json", default=None, help="also write the results here")
    a, unknown = ap.parse_known_args()  # `make bench` passes the same arguments to every benchmark
    if unknown:
        print(f"note: ignoring arguments meant for other benchmarks: {' '.join(unknown)}")
    if a.model is None and not a.train:
        how_to()
        return

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip() and d.strip() != "fp32"]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r} ({', '.join(VARIANTS)})")
    groups = load_groups(a.data or default_dev())
    labels = [g[2] for g in groups]
    n_pairs = sum(len(g[1]) for g in groups)

    with tempfile.TemporaryDirectory(prefix="ragr-agree-") as tmp:
        model = a.model or str(train(Path(tmp) / "ce", a.train_steps))
        print(f"\nmodel {model}; {len(groups)} queries, {n_pairs} pairs "
              f"(mean {n_pairs / len(groups):.1f} candidates); device {a.device}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads", flush=True)
        t0 = time.perf_counter()
        rr32 = build_reranker(model, "fp32", "ragr", a.device, a.max_tokens)
        ref = score_groups(rr32, groups)
        runs: dict[str, list[list[float]]] = {}
        for dt in dtypes:
            for v in variants:
                name = dt if v == "ragr" else f"{dt} {v}"
                try:
                    if v == "rescore":
                        low = runs.get(dt) or score_groups(build_reranker(model, dt, "ragr", a.device, a.max_tokens),
                                                           groups)
                        top = a.k + a.rescore_margin
                        name = f"{dt} + fp32 re-score of top {top}"
                        runs[name], n_re = rescore(low, groups, rr32, top)
                        print(f"note: {name}: {n_re} of {n_pairs} pairs ({n_re / n_pairs:.0%}) re-scored in fp32; "
                              f"with C candidates a query the share is about {top}/C")
                        continue
                    rr = build_reranker(model, dt, v, a.device, a.max_tokens)
                    runs[name] = score_groups(rr, groups)
                except (RuntimeError, NotImplementedError) as exc:  # a dtype the device cannot run
                    print(f"note: {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        secs = time.perf_counter() - t0

        from ragr.eval.metrics import rerank_metrics

        base = rerank_metrics(ref, labels, ks=(1, 10))
        k = a.k
        print(f"\n| run | queries | top-{k} order identical | top-1 identical | top-{k} set identical | "
              f"top-{k} labels identical | Kendall tau-b | Spearman | max abs score diff | MRR@10 | nDCG@10 |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| fp32 (reference) | {len(groups)} | - | - | - | - | - | - | - | {base['mrr@10']:.4f} | "
              f"{base['ndcg@10']:.4f} |")
        results = {"model": model, "queries": len(groups),
                   "fp32": {"mrr@10": base["mrr@10"], "ndcg@10": base["ndcg@10"]}}
        for name, sc in runs.items():
            c = compare(ref, sc, labels, k)
            results[name] = c
            print(f"| {name} | {c['queries']} | {c['top_k']:.1%} ({c['top_k_count']}) | {c['top_1']:.1%} | "
                  f"{c['top_k_set']:.1%} | {c['top_k_labels']:.1%} | {c['tau']:.4f} | {c['rho']:.4f} | "
                  f"{c['max_diff']:.3g} | {c['mrr@10']:.4f} | {c['ndcg@10']:.4f} |")
        gaps = np.asarray(adjacent_gaps(ref, k))
        all_scores = np.concatenate([np.asarray(s) for s in ref])
        print(f"\nfp32 scores: range {all_scores.min():.2f} .. {all_scores.max():.2f}; gaps between consecutive "
              f"ranks 1..{k + 1}: median {np.median(gaps):.3g}, {np.mean(gaps < 0.01):.1%} below 0.01, "
              f"{np.mean(gaps < 0.05):.1%} below 0.05, exact ties {int(np.sum(gaps == 0))}")
        for name, sc in runs.items():
            if "re-score" in name:  # part fp32, part capped: no single noise level
                continue
            d = np.concatenate([np.asarray(s, np.float64) - np.asarray(r, np.float64) for s, r in zip(sc, ref)])
            exp = expected_identity(ref, float(d.std()), k)
            results[name]["noise_std"], results[name]["expected_top_k"] = float(d.std()), exp
            print(f"{name}: score - fp32: mean {d.mean():+.3g}, std {d.std():.3g}; top-{k} identity expected from "
                  f"independent noise of that std: {exp:.1%} (measured {results[name]['top_k']:.1%})")
        for name, sc in runs.items():
            flip_report(ref, sc, groups, k, name, a.show)
        print(f"\n(scoring took {secs:.0f}s on a shared machine; not a performance figure)")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
