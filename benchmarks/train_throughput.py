"""Training throughput: ragr vs sentence-transformers on the same model, loss, data, batch and max length.

Each trainer runs in its own subprocess (so peak RSS is its own). Prints a markdown table.
Usage: python benchmarks/train_throughput.py [--samples 512] [--batch 32] [--repeats 3]

Large batches in bounded memory: ``--grad-cache`` trains ragr with ``trainer.grad_cache=true`` and
sentence-transformers with CachedMultipleNegativesRankingLoss (both GradCache, chunks of ``--chunk-size``);
e.g. ``--batch 1024 --samples 1024 --repeats 1 --grad-cache --only ragr`` shows one batch-1024 step's peak RSS.

Same training, same result: ``--quality`` trains each trainer for ``--quality-steps`` steps on the demo's training
set (linear schedule, no weight decay in both) once per seed in ``--quality-seeds`` (the seed orders the data), logs
the loss every step, scores the bundled demo dev set (154 queries, ~20 candidates each) with one evaluator (ragr's,
cosine) on every saved model, and prints mean losses per 10-step window and the dev metrics, mean and range.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_data(n: int, out: Path) -> Path:
    import importlib.resources

    src = importlib.resources.files("ragr") / "resources" / "demo" / "train.jsonl"
    rows = [json.loads(l) for l in src.read_text().splitlines()]
    rows = (rows * (n // len(rows) + 1))[:n]
    path = out / "triplets.jsonl"
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"query": r["query"], "pos": r["pos"][:1], "neg": r["neg"][:1]}) + "\n")
    return path


def run_ragr(data: str, batch: int, max_len: int, steps: int, out: str, grad_cache: bool = False, chunk: int = 32,
             quality: bool = False, seed: int = 42) -> dict:
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    extra = ["trainer.log_every=1", "trainer.scheduler=linear", "trainer.weight_decay=0.0"] if quality else \
        ["trainer.log_every=1000"]
    cfg = compose_config("train", [f"data.train={data}", "data.eval=null", "data.num_negatives=1", f"trainer.batch_size={batch}",
                                   f"trainer.max_steps={steps}", f"model.max_query_length={max_len}",
                                   f"model.max_doc_length={max_len}", "loss.temperature=0.02", f"output_dir={out}",
                                   "trainer.save_total_limit=1", f"trainer.chunk_size={chunk}",
                                   f"trainer.grad_cache={str(grad_cache).lower()}", f"seed={seed}", *extra])
    t0 = time.perf_counter()
    results = run_local(cfg, quiet=True)
    res = {"seconds": time.perf_counter() - t0}
    if quality:
        metrics = Path(results["run_dir"]) / "metrics.jsonl"
        res["losses"] = [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
        res["dev"] = dev_metrics(results["model_dir"])
    return res


def dev_metrics(model_dir: str) -> dict:
    """The bundled demo dev set scored by ragr's evaluator (cosine), whatever trained the model."""
    import importlib.resources

    from ragr.data.formats import load_rerank_file
    from ragr.eval.rerank import evaluate
    from ragr.families import get_family
    from ragr.models.embedder import Embedder

    dev = importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl"
    m = evaluate(get_family("embedder").scorer(Embedder.from_pretrained(model_dir)), load_rerank_file(str(dev)))
    return {k: m[k] for k in ("map", "mrr@10", "ndcg@10", "recall@10")}


def run_st(data: str, batch: int, max_len: int, steps: int, out: str, grad_cache: bool = False, chunk: int = 32,
           quality: bool = False, seed: int = 42) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from ragr.config.resolvers import bundled

    rows = [json.loads(l) for l in open(data)]
    ds = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows],
                            "negative": [r["neg"][0] for r in rows]})
    model = SentenceTransformer(bundled("minilm"), device="cpu")
    model.max_seq_length = max_len
    args = SentenceTransformerTrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                                learning_rate=5e-5, warmup_ratio=0.1, report_to=[], save_strategy="no",
                                                logging_steps=1 if quality else 1000, use_cpu=True,
                                                dataloader_drop_last=True, seed=seed)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=CachedMultipleNegativesRankingLoss(model, scale=50.0, mini_batch_size=chunk)
                                         if grad_cache else MultipleNegativesRankingLoss(model, scale=50.0))
    t0 = time.perf_counter()
    trainer.train()
    res = {"seconds": time.perf_counter() - t0}
    if quality:
        res["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        model.save(f"{out}/model")
        res["dev"] = dev_metrics(f"{out}/model")
    return res


def child(kind: str, data: str, batch: int, max_len: int, steps: int, grad_cache: bool = False, chunk: int = 32,
          quality: bool = False, seed: int = 42) -> None:
    with tempfile.TemporaryDirectory() as out:
        res = (run_ragr if kind == "ragr" else run_st)(data, batch, max_len, steps, out, grad_cache, chunk, quality, seed)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grad-cache", action="store_true", help="GradCache in both trainers (see the docstring)")
    ap.add_argument("--chunk-size", type=int, default=32, help="ragr trainer.chunk_size / ST mini_batch_size")
    ap.add_argument("--only", choices=("ragr", "sentence-transformers"), help="run one trainer")
    ap.add_argument("--quality", action="store_true", help="loss curves and dev metrics after the same steps (see the docstring)")
    ap.add_argument("--quality-steps", type=int, default=40)
    ap.add_argument("--quality-seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a, unknown = ap.parse_known_args()  # `make bench` passes the same arguments to every benchmark
    if a.child:
        steps = a.quality_steps if a.quality else a.samples // a.batch
        child(a.child[0], a.child[1], a.batch, a.max_len, steps, a.grad_cache, a.chunk_size, a.quality, a.seed)
        return
    if a.quality:
        quality(a)
        return
    if unknown:
        print(f"note: ignoring arguments meant for other benchmarks: {' '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(a.samples, Path(tmp))
        results: dict[str, list[dict]] = {k: [] for k in ("ragr", "sentence-transformers") if a.only in (None, k)}
        for _ in range(a.repeats):
            for kind in results:
                cmd = [sys.executable, __file__, "--child", "ragr" if kind == "ragr" else "st", str(data),
                       "--batch", str(a.batch), "--max-len", str(a.max_len), "--samples", str(a.samples),
                       "--chunk-size", str(a.chunk_size)] + (["--grad-cache"] if a.grad_cache else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[kind].append(json.loads(out.split("RESULT ", 1)[1]))
    print(f"\nTraining MiniLM-L6, {a.samples} triplets, batch {a.batch}, max length {a.max_len}, InfoNCE tau 0.02 "
          f"(MNRL scale 50), fp32, median of {a.repeats}"
          f"{f', GradCache in chunks of {a.chunk_size}' if a.grad_cache else ''}\n")
    print("| trainer | samples/s | peak RSS (GB) |\n|---|---|---|")
    med = {}
    for kind, rs in results.items():
        sps = statistics.median(a.samples / r["seconds"] for r in rs)
        rss = statistics.median(r["peak_rss_gb"] for r in rs)
        med[kind] = (sps, rss)
        print(f"| {kind} | {sps:.2f} | {rss:.2f} |")
    if len(med) == 2:
        print(f"\nragr / sentence-transformers: {med['ragr'][0] / med['sentence-transformers'][0]:.2f}x samples/s, "
              f"{med['ragr'][1] / med['sentence-transformers'][1]:.2f}x peak memory")


def quality(a) -> None:
    """Train each trainer once per seed on the whole demo training set; compare losses and dev metrics."""
    import importlib.resources

    import numpy as np

    src = importlib.resources.files("ragr") / "resources" / "demo" / "train.jsonl"
    n = len(src.read_text().splitlines())
    res: dict[str, list[dict]] = {"ragr": [], "sentence-transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(n, Path(tmp))
        for seed in a.quality_seeds:
            for kind, flag in (("ragr", "ragr"), ("sentence-transformers", "st")):
                cmd = [sys.executable, __file__, "--child", flag, str(data), "--batch", str(a.batch), "--max-len",
                       str(a.max_len), "--chunk-size", str(a.chunk_size), "--quality", "--quality-steps",
                       str(a.quality_steps), "--seed", str(seed)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[kind].append(json.loads(out.split("RESULT ", 1)[1]))
    print(f"\nSame training, same result: MiniLM-L6, the demo's {n} triplets, batch {a.batch}, {a.quality_steps} steps, "
          f"InfoNCE tau 0.02 = MNRL scale 50, AdamW 5e-5, linear schedule with 10% warm-up, fp32, "
          f"seeds {' '.join(map(str, a.quality_seeds))}\n")
    names = list(res)
    print(f"| mean loss, steps | {' | '.join(names)} |\n|---|---|---|")
    for lo in range(0, a.quality_steps, 10):
        cells = [f"{np.mean([np.mean(r['losses'][lo:lo + 10]) for r in res[k]]):.3f}" for k in names]
        print(f"| {lo + 1}-{min(lo + 10, a.quality_steps)} | {' | '.join(cells)} |")
    print(f"\n| dev (154 queries): mean [min, max] over seeds | {' | '.join(names)} |\n|---|---|---|")
    for m in res["ragr"][0]["dev"]:
        cells = []
        for k in names:
            v = [r["dev"][m] for r in res[k]]
            cells.append(f"{np.mean(v):.4f} [{min(v):.4f}, {max(v):.4f}]")
        print(f"| {m} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
