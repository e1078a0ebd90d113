"""ONNX and int8 reranking on CPU: throughput beside sentence-transformers, and what int8 does to the ranking (issue 16).

One cross-encoder, trained briefly with ragr (``ragr train task=reranker``: the bundled MiniLM-L6 backbone
on the bundled demo data, ``--train-steps`` steps; or ``--reranker DIR``), exported once with
``ragr export --format onnx --quantize int8`` (the int8 preset of this CPU), then:

1. Throughput, on the same pairs (chatterbot-corpus queries with mixed-length documents, as
   ``rerank_throughput.py`` builds them), every system in this process, interleaved, ``--repeats`` times
   after a warm-up; pairs/s (median) and the ratio to sentence-transformers fp32:
   sentence-transformers ``CrossEncoder.predict`` fp32 (PyTorch), ragr torch fp32, ragr torch bf16,
   ragr onnx fp32 (``onnx/model.onnx``), ragr onnx int8. ``--with-st-onnx`` adds sentence-transformers'
   own ``backend="onnx"`` on the same files where optimum-onnx imports (its releases pin transformers<4.58).
2. Agreement, on the demo dev set (``--dev``, MTEB reranking JSONL; ``--dev-queries`` first queries):
   ragr onnx int8 against ragr onnx fp32: share of queries with an identical top-10 (same documents in
   the same order), Spearman's rho (pooled over all pairs, and the mean over queries), max |score
   difference|, nDCG@10 of each against the labels (``ragr.eval.metrics``) and their difference; plus
   onnx fp32 against torch fp32 (max |score difference|: the export itself).

Targets (issue 16): int8 at least 3x sentence-transformers fp32 pairs/s; identical top-10 on at least
95% of queries; nDCG@10 within 0.01 of fp32. Each is printed with PASS / MISS.

Usage: python benchmarks/onnx_rerank.py [--pairs 1000] [--repeats 5] [--train-steps 300] [--reranker DIR]
       python benchmarks/onnx_rerank.py --quick        # a smoke run: ~1-2 minutes, numbers not meaningful
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rerank_agreement  # noqa: E402  (same folder: demo dev groups, the short reranker recipe, stable order)
import rerank_throughput  # noqa: E402  (same folder: the mixed-length corpus pairs)

TARGET_SPEEDUP, TARGET_TOP10, TARGET_NDCG = 3.0, 0.95, 0.01


def train(out_dir: Path, steps: int, quick: bool) -> Path:
    """``ragr train`` with rerank_agreement's short listwise MiniLM recipe; the saved model folder."""
    overrides = list(rerank_agreement.TRAIN_OVERRIDES)
    if quick:  # a smoke run: smaller steps (the numbers mean nothing then)
        overrides = [o for o in overrides if not o.startswith(("trainer.batch_size=", "model.max_length="))]
        overrides += ["trainer.batch_size=4", "model.max_length=64", "trainer.eval_after=false"]
    ragr = Path(sys.executable).with_name("ragr")
    cmd = [str(ragr)] if ragr.exists() else [sys.executable, "-m", "ragr"]
    cmd += ["train", "--quiet", *overrides, f"trainer.max_steps={steps}", "trainer.eval_before=false", f"output_dir={out_dir}"]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out_dir / "model"


def systems(model: str, export: str, a) -> dict:
    """name -> scoring function over a list of pairs (raw logits)."""
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from ragr.infer import Reranker

    ident = torch.nn.Identity()
    st = STCrossEncoder(model, device="cpu")
    out = {"sentence-transformers fp32": lambda pairs: list(st.predict(pairs, activation_fn=ident, batch_size=a.st_batch_size,
                                                                        show_progress_bar=False))}
    for name, kw in (("ragr torch fp32", {"path": model, "backend": "torch", "dtype": "fp32"}),
                     ("ragr torch bf16", {"path": model, "backend": "torch", "dtype": "bf16"}),
                     ("ragr onnx fp32", {"path": export, "backend": "onnx", "file_name": "onnx/model.onnx"}),
                     ("ragr onnx int8", {"path": export, "backend": "onnx"})):
        path = kw.pop("path")
        out[name] = Reranker(path, device="cpu", max_tokens=a.max_tokens, **kw).score
    if a.with_st_onnx:
        meta = json.loads((Path(export) / "ragr.json").read_text())["onnx"]
        try:
            for label, file_name in (("fp32", "onnx/model.onnx"), ("int8", meta["file_name"])):
                m = STCrossEncoder(export, device="cpu", backend="onnx", model_kwargs={"file_name": file_name})
                out[f"sentence-transformers onnx {label}"] = (
                    lambda m: lambda pairs: list(m.predict(pairs, activation_fn=ident, batch_size=a.st_batch_size,
                                                           show_progress_bar=False)))(m)
        except Exception as exc:  # noqa: BLE001 - optimum-onnx missing or incompatible
            print(f"note: --with-st-onnx skipped: sentence-transformers' ONNX backend cannot load here "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    return out


def throughput(model: str, export: str, a) -> dict[str, float]:
    """Print the pairs/s table; return each system's median pairs/s."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    groups = rerank_throughput.make_groups(tok, a.pairs, a.docs_per_query)
    pairs = [(q, d) for q, docs in groups for d in docs]
    lengths = [len(x) for x in tok([q for q, _ in pairs], [d for _, d in pairs], truncation="longest_first",
                                   max_length=tok.model_max_length if tok.model_max_length < 10**6 else 512)["input_ids"]]
    runners = systems(model, export, a)
    for fn in runners.values():  # warm-up: sessions, allocator, kernels
        fn(pairs[:64])
    secs: dict[str, list[float]] = {k: [] for k in runners}
    scores: dict[str, list[float]] = {}
    for _ in range(a.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            scores[name] = [float(s) for s in fn(pairs)]
            secs[name].append(time.perf_counter() - t0)
            print(f"  repeat {len(secs[name])}/{a.repeats} {name}: {len(pairs) / secs[name][-1]:,.1f} pairs/s", flush=True)
    import platform

    import numpy as np
    import onnxruntime
    import sentence_transformers
    import transformers

    from ragr.infer.onnx import default_int8_target

    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers "
          f"{sentence_transformers.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, int8 preset "
          f"{default_int8_target()}")
    print(f"\nReranking {len(pairs)} pairs ({len(groups)} queries x {a.docs_per_query} documents), mean "
          f"{sum(lengths) / len(pairs):.0f} tokens a pair (max {max(lengths)}), median of {a.repeats}\n")
    rates = {k: statistics.median(len(pairs) / s for s in ss) for k, ss in secs.items()}
    base = rates["sentence-transformers fp32"]
    print("| system | pairs/s (median) | min-max | x sentence-transformers fp32 |\n|---|---|---|---|")
    for name, ss in secs.items():
        ps = [len(pairs) / s for s in ss]
        print(f"| {name} | {rates[name]:,.1f} | {min(ps):,.1f}-{max(ps):,.1f} | {rates[name] / base:.2f}x |")
    st = np.array(scores["sentence-transformers fp32"])
    for name in ("ragr torch fp32", "ragr onnx fp32"):
        print(f"{name} vs sentence-transformers fp32: max |score difference| {np.abs(np.array(scores[name]) - st).max():.2e}")
    return rates


def agreement(model: str, export: str, a) -> dict[str, float]:
    """int8 vs fp32 (both ONNX) on the dev groups; prints the table and returns the figures."""
    import numpy as np
    from scipy.stats import spearmanr

    from ragr.eval.metrics import rerank_metrics
    from ragr.infer import Reranker

    groups = rerank_agreement.load_groups(a.dev)[: a.dev_queries]
    pairs = [(q, c) for q, cands, _ in groups for c in cands]
    runs = {"torch fp32": Reranker(model, backend="torch", dtype="fp32"),
            "onnx fp32": Reranker(export, backend="onnx", file_name="onnx/model.onnx"),
            "onnx int8": Reranker(export, backend="onnx")}
    flat = {k: np.array(rr.score(pairs), dtype=np.float64) for k, rr in runs.items()}
    cuts = np.cumsum([0] + [len(c) for _, c, _ in groups])
    per = {k: [v[cuts[i] : cuts[i + 1]] for i in range(len(groups))] for k, v in flat.items()}
    labels = [y for _, _, y in groups]
    order = rerank_agreement.order
    top10 = float(np.mean([order(a8)[:10] == order(a32)[:10] for a8, a32 in zip(per["onnx int8"], per["onnx fp32"])]))
    top10_set = float(np.mean([set(order(a8)[:10]) == set(order(a32)[:10])
                               for a8, a32 in zip(per["onnx int8"], per["onnx fp32"])]))
    overlap10 = float(np.mean([len(set(order(a8)[:10]) & set(order(a32)[:10])) / min(10, len(a8))
                               for a8, a32 in zip(per["onnx int8"], per["onnx fp32"])]))
    top1 = float(np.mean([order(a8)[0] == order(a32)[0] for a8, a32 in zip(per["onnx int8"], per["onnx fp32"])]))
    rho_q = [spearmanr(a8, a32).statistic for a8, a32 in zip(per["onnx int8"], per["onnx fp32"]) if len(a8) > 2]
    ndcg = {k: rerank_metrics(per[k], labels)["ndcg@10"] for k in per}
    out = {"queries": len(groups), "pairs": len(pairs), "top10_identical": top10, "top10_same_set": top10_set,
           "top10_overlap": overlap10, "top1_same": top1,
           "spearman_pooled": float(spearmanr(flat["onnx int8"], flat["onnx fp32"]).statistic),
           "spearman_mean_per_query": float(np.nanmean(rho_q)),
           "max_diff_int8": float(np.abs(flat["onnx int8"] - flat["onnx fp32"]).max()),
           "max_diff_export": float(np.abs(flat["onnx fp32"] - flat["torch fp32"]).max()),
           "score_std_fp32": float(flat["onnx fp32"].std()),
           **{f"ndcg@10 {k}": float(v) for k, v in ndcg.items()}}
    out["ndcg@10 diff"] = out["ndcg@10 onnx int8"] - out["ndcg@10 onnx fp32"]
    # the documented remedy (Reranker.rank(..., rescore=fp32 reranker)): int8 scores every candidate, fp32
    # re-scores (and orders) the int8 top 10 + margin; computed from the scores above, no extra model calls
    head = 10 + a.rescore_margin
    two_stage = []
    for a8, a32 in zip(per["onnx int8"], per["onnx fp32"]):
        o = order(a8)
        two_stage.append(sorted(o[:head], key=lambda i: -a32[i]) + o[head:])
    out["rescore_top10_identical"] = float(np.mean([o[:10] == order(a32)[:10] for o, a32 in zip(two_stage, per["onnx fp32"])]))
    out["rescore_share"] = sum(min(head, len(c)) for _, c, _ in groups) / len(pairs)
    ranked = [np.argsort(o, kind="stable").astype(np.float64) * -1.0 for o in two_stage]  # rank -> a score
    out["ndcg@10 rescore"] = float(rerank_metrics(ranked, labels)["ndcg@10"])
    print(f"\nint8 vs fp32 (ONNX) on {len(groups)} dev queries ({len(pairs)} pairs; fp32 score std "
          f"{out['score_std_fp32']:.2f})\n")
    print("| top-10 identical (order) | top-10 same set | top-10 overlap | top-1 same | Spearman (pooled) | Spearman (mean per query) | max abs diff | nDCG@10 fp32 | "
          "nDCG@10 int8 | diff |\n|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {top10:.1%} | {top10_set:.1%} | {overlap10:.1%} | {top1:.1%} | {out['spearman_pooled']:.4f} | {out['spearman_mean_per_query']:.4f} | "
          f"{out['max_diff_int8']:.3g} | {out['ndcg@10 onnx fp32']:.4f} | {out['ndcg@10 onnx int8']:.4f} | "
          f"{out['ndcg@10 diff']:+.4f} |")
    print(f"int8, then fp32 re-scoring its top {head} (rescore=, {out['rescore_share']:.0%} of pairs scored twice): "
          f"top-10 identical {out['rescore_top10_identical']:.1%}, nDCG@10 {out['ndcg@10 rescore']:.4f}")
    print(f"onnx fp32 vs torch fp32 (the export): max |score difference| {out['max_diff_export']:.2e}; "
          f"nDCG@10 torch fp32 {out['ndcg@10 torch fp32']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", default=None, help="a trained cross-encoder folder (default: train one, --train-steps)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--docs-per-query", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=None, help="ragr: padded tokens per forward pass (default: ragr's)")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers predict batch size (its default)")
    ap.add_argument("--dev", default=None, help="MTEB reranking JSONL for the agreement (default: the bundled demo dev.jsonl)")
    ap.add_argument("--dev-queries", type=int, default=None, help="use the first N dev queries (default: all)")
    ap.add_argument("--rescore-margin", type=int, default=1, help="two-stage row: fp32 re-scores int8's top 10 + this many")
    ap.add_argument("--with-st-onnx", action="store_true", help="also time sentence-transformers' backend='onnx' (needs optimum-onnx)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 training steps, 100 pairs, 1 repeat, 20 dev queries")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a, unknown = ap.parse_known_args()  # `make bench` passes the same arguments to every benchmark
    if unknown:
        print(f"note: ignoring arguments meant for other benchmarks: {' '.join(unknown)}")
    if a.quick:
        a.train_steps, a.pairs, a.repeats = min(a.train_steps, 10), min(a.pairs, 100), 1
        a.dev_queries = min(a.dev_queries or 20, 20)
    a.dev = a.dev or rerank_agreement.default_dev()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from ragr.infer.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="ragr-onnx-bench-") as tmp:
        model = a.reranker or str(train(Path(tmp) / "run", a.train_steps, a.quick))
        export = str(Path(tmp) / "onnx")
        t0 = time.perf_counter()
        info = export_onnx(model, export, quantize="int8")
        print(f"exported {model} -> {info['files']} ({time.perf_counter() - t0:.0f} s; int8 preset {info['int8_target']})")
        rates = throughput(model, export, a)
        agree = agreement(model, export, a)
    speedup = rates["ragr onnx int8"] / rates["sentence-transformers fp32"]
    checks = [(f"int8 throughput {speedup:.2f}x sentence-transformers fp32 (target >= {TARGET_SPEEDUP:.0f}x)",
               speedup >= TARGET_SPEEDUP),
              (f"top-10 identical on {agree['top10_identical']:.1%} of queries (target >= {TARGET_TOP10:.0%})",
               agree["top10_identical"] >= TARGET_TOP10),
              (f"nDCG@10 int8 - fp32 = {agree['ndcg@10 diff']:+.4f} (target within {TARGET_NDCG})",
               abs(agree["ndcg@10 diff"]) <= TARGET_NDCG)]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}: {text}")
    if a.quick:
        print("(--quick: a smoke run on a barely trained model and few pairs; run without --quick for the figures)")
    if a.json:
        Path(a.json).write_text(json.dumps({"pairs_per_s": rates, "agreement": agree, "quick": a.quick,
                                            "train_steps": None if a.reranker else a.train_steps}, indent=2))


if __name__ == "__main__":
    main()
