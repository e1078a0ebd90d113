"""Training throughput: ragr vs sentence-transformers on the same model, loss, data, batch and max length.

Each trainer runs in its own subprocess (so peak RSS is its own). Prints a markdown table.
Usage: python benchmarks/train_throughput.py [--samples 512] [--batch 32] [--repeats 3]
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


def run_ragr(data: str, batch: int, max_len: int, steps: int, out: str) -> dict:
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    cfg = compose_config("train", [f"data.train={data}", "data.eval=null", "data.num_negatives=1", f"trainer.batch_size={batch}",
                                   f"trainer.max_steps={steps}", f"model.max_query_length={max_len}",
                                   f"model.max_doc_length={max_len}", "loss.temperature=0.02", f"output_dir={out}",
                                   "trainer.log_every=1000", "trainer.save_total_limit=1"])
    t0 = time.perf_counter()
    run_local(cfg, quiet=True)
    return {"seconds": time.perf_counter() - t0}


def run_st(data: str, batch: int, max_len: int, steps: int, out: str) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from ragr.config.resolvers import bundled

    rows = [json.loads(l) for l in open(data)]
    ds = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows],
                            "negative": [r["neg"][0] for r in rows]})
    model = SentenceTransformer(bundled("minilm"), device="cpu")
    model.max_seq_length = max_len
    args = SentenceTransformerTrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                                learning_rate=5e-5, warmup_ratio=0.1, report_to=[], save_strategy="no",
                                                logging_steps=1000, use_cpu=True, dataloader_drop_last=True, seed=42)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=50.0))
    t0 = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - t0}


def child(kind: str, data: str, batch: int, max_len: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        res = (run_ragr if kind == "ragr" else run_st)(data, batch, max_len, steps, out)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.batch, a.max_len, a.samples // a.batch)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(a.samples, Path(tmp))
        results: dict[str, list[dict]] = {"ragr": [], "sentence-transformers": []}
        for _ in range(a.repeats):
            for kind in results:
                cmd = [sys.executable, __file__, "--child", "ragr" if kind == "ragr" else "st", str(data),
                       "--batch", str(a.batch), "--max-len", str(a.max_len), "--samples", str(a.samples)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[kind].append(json.loads(out.split("RESULT ", 1)[1]))
    print(f"\nTraining MiniLM-L6, {a.samples} triplets, batch {a.batch}, max length {a.max_len}, InfoNCE tau 0.02 "
          f"(MNRL scale 50), fp32, median of {a.repeats}\n")
    print("| trainer | samples/s | peak RSS (GB) |\n|---|---|---|")
    med = {}
    for kind, rs in results.items():
        sps = statistics.median(a.samples / r["seconds"] for r in rs)
        rss = statistics.median(r["peak_rss_gb"] for r in rs)
        med[kind] = (sps, rss)
        print(f"| {kind} | {sps:.2f} | {rss:.2f} |")
    print(f"\nragr / sentence-transformers: {med['ragr'][0] / med['sentence-transformers'][0]:.2f}x samples/s, "
          f"{med['ragr'][1] / med['sentence-transformers'][1]:.2f}x peak memory")


if __name__ == "__main__":
    main()
