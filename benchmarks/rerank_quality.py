"""Reranker training quality: ragr vs sentence-transformers' CrossEncoderTrainer, same triplets, same steps.

Both train a cross-encoder on the bundled all-MiniLM-L6-v2 backbone (a fresh one-logit head) on the demo's
training triplets (each query, its first positive, its first ``--negatives`` hard negatives), for ``--steps``
optimizer steps of ``--batch`` queries, at the same learning rate, linear schedule, 10% warm-up, no weight
decay, max length ``--max-len``, once per seed in ``--seeds`` (the seed orders the data and draws the head).

Two loss pairs, each an equivalent pair, and one ablation:
- listwise: ragr ``loss=mnrl`` (``task=reranker``'s default: cross-entropy over ``sigmoid(logit) * 10`` of the
  query's positive, its hard negatives and 4 in-batch negatives) against ST's ``MultipleNegativesRankingLoss``
  (the same, by its defaults; ``--st-in-batch`` sets its in-batch count);
- ``ragr-listwise``: ragr ``loss=listwise``, the plain form (softmax over the raw logits of the query's own group),
  which lost to ST's MNRL (docs/BENCHMARKS.md); ``--set`` adds overrides to every ragr run;
- pointwise: ragr ``loss=pointwise`` (BCE on each pair of the group) against ST's ``BinaryCrossEntropyLoss``
  on the same (query, document, 0/1) pairs, ``batch * (1 + negatives)`` pairs a step.

Every saved model is scored by one evaluator (ragr's, on the held-out demo dev set: 154 queries, ~20
candidates each, negatives mined by the base bi-encoder, so it is "rerank the bi-encoder's top 20"), next to
the base bi-encoder's own ranking. Prints a markdown table: mean and range over seeds.

Usage: python benchmarks/rerank_quality.py [--steps 100] [--seeds 42 43 44] [--only ragr-listwise ...]
       python benchmarks/rerank_quality.py --quick     # 6 steps, one seed: checks the script runs
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

RUNS = ("ragr-mnrl", "st-mnrl", "ragr-listwise", "ragr-pointwise", "st-bce")
METRICS = ("ndcg@10", "mrr@10", "map")


def make_data(negatives: int, out: Path) -> Path:
    import importlib.resources

    src = importlib.resources.files("ragr") / "resources" / "demo" / "train.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    path = out / "triplets.jsonl"
    with open(path, "w") as f:
        for r in rows:
            if len(r["neg"]) >= negatives:
                f.write(json.dumps({"query": r["query"], "pos": r["pos"][:1], "neg": r["neg"][:negatives]}) + "\n")
    return path


def dev_rows():
    import importlib.resources

    from ragr.data.formats import load_rerank_file

    return load_rerank_file(str(importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl"))


def dev_metrics(model_dir: str | None) -> dict:
    """The demo dev set scored by ragr's evaluator: the cross-encoder at ``model_dir``, or (None) the base bi-encoder."""
    from ragr.config.resolvers import bundled
    from ragr.eval.rerank import evaluate
    from ragr.families import get_family
    from ragr.models.cross_encoder import CrossEncoder
    from ragr.models.embedder import Embedder

    if model_dir is None:
        scorer = get_family("embedder").scorer(Embedder.from_pretrained(bundled("minilm")))
    else:
        scorer = get_family("cross_encoder").scorer(CrossEncoder.load(model_dir))
    m = evaluate(scorer, dev_rows())
    return {k: m[k] for k in METRICS}


def run_ragr(loss: str, a, data: str, out: str, seed: int) -> dict:
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    cfg = compose_config("train", ["task=reranker", f"loss={loss}", f"data.train={data}", "data.eval=null",
                                   f"data.num_negatives={a.negatives}", f"trainer.batch_size={a.batch}",
                                   f"trainer.max_steps={a.steps}", f"trainer.lr={a.lr}", "trainer.scheduler=linear",
                                   "trainer.warmup_ratio=0.1", "trainer.weight_decay=0.0", "trainer.log_every=1",
                                   f"model.max_length={a.max_len}", f"output_dir={out}", "trainer.save_total_limit=1",
                                   f"seed={seed}", *a.set])
    t0 = time.perf_counter()
    results = run_local(cfg, quiet=True)
    seconds = time.perf_counter() - t0
    metrics = Path(results["run_dir"]) / "metrics.jsonl"
    losses = [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    return {"seconds": seconds, "losses": losses, "dev": dev_metrics(results["model_dir"])}


def run_st(loss: str, a, data: str, out: str, seed: int) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MultipleNegativesRankingLoss
    from transformers import set_seed

    from ragr.config.resolvers import bundled

    set_seed(seed)
    rows = [json.loads(line) for line in open(data)]
    model = CrossEncoder(bundled("minilm"), num_labels=1, max_length=a.max_len, device="cpu")
    if loss == "mnrl":
        cols = {"query": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows]}
        for i in range(a.negatives):
            cols[f"negative_{i + 1}"] = [r["neg"][i] for r in rows]
        ds, batch, fn = Dataset.from_dict(cols), a.batch, MultipleNegativesRankingLoss(model, num_negatives=a.st_in_batch)
    else:
        q, d, y = [], [], []
        for r in rows:
            for doc, label in [(r["pos"][0], 1.0)] + [(n, 0.0) for n in r["neg"]]:
                q.append(r["query"]), d.append(doc), y.append(label)
        ds = Dataset.from_dict({"query": q, "document": d, "label": y})
        batch, fn = a.batch * (1 + a.negatives), BinaryCrossEntropyLoss(model)
    args = CrossEncoderTrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=a.steps,
                                         learning_rate=a.lr, warmup_ratio=0.1, weight_decay=0.0,
                                         lr_scheduler_type="linear", report_to=[], save_strategy="no",
                                         logging_steps=1, use_cpu=True, dataloader_drop_last=True, seed=seed)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=ds, loss=fn)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.save_pretrained(f"{out}/model")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "losses": losses, "dev": dev_metrics(f"{out}/model")}


def child(a) -> None:
    kind, seed = a.child[0], int(a.child[1])
    with tempfile.TemporaryDirectory() as out:
        if kind == "base":
            res = {"dev": dev_metrics(None)}
        elif kind.startswith("ragr-"):
            res = run_ragr(kind.split("-", 1)[1], a, a.data, out, seed)
        else:
            res = run_st({"st-mnrl": "mnrl", "st-bce": "bce"}[kind], a, a.data, out, seed)
    print("RESULT " + json.dumps(res))


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS))
    ap.add_argument("--quick", action="store_true", help="6 steps, batch 4, one seed: checks the script runs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra overrides for the ragr runs (e.g. loss.activation=sigmoid loss.temperature=0.1)")
    ap.add_argument("--st-in-batch", type=int, default=4, help="ST MNRL's in-batch negatives (its default: 4)")
    ap.add_argument("--no-base", action="store_true", help="skip the base bi-encoder row")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    if a.quick:
        a.steps, a.batch, a.seeds = 6, 4, a.seeds[:1]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(a.negatives, Path(tmp))
        common = ["--steps", str(a.steps), "--batch", str(a.batch), "--negatives", str(a.negatives), "--lr", str(a.lr),
                  "--max-len", str(a.max_len), "--data", str(data), "--st-in-batch", str(a.st_in_batch),
                  "--set", *a.set]
        results: dict[str, list[dict]] = {}
        for kind, seeds in [("base", [0])] * (not a.no_base) + [(k, a.seeds) for k in a.only]:
            for seed in seeds:
                p = subprocess.run([sys.executable, __file__, "--child", kind, str(seed), *common],
                                   capture_output=True, text=True)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    sys.exit(f"{kind} seed {seed} failed:\n{p.stderr[-3000:]}")
                results.setdefault(kind, []).append(json.loads(line[0][7:]))
                print(f"{kind} seed {seed}: " + json.dumps(results[kind][-1]["dev"]), file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"\n{a.steps} steps x {a.batch} queries x (1 + {a.negatives}) candidates, lr {a.lr}, max length "
          f"{a.max_len}, seeds {a.seeds}; demo dev (154 queries); mean (min-max)\n")
    print("| model | " + " | ".join(METRICS) + " | first-5 loss | last-5 loss |")
    print("|---|" + "---:|" * (len(METRICS) + 2))
    for kind, runs in results.items():
        cells = [fmt([r["dev"][m] for r in runs]) for m in METRICS]
        if kind == "base":
            print("| base bi-encoder (no reranker) | " + " | ".join(cells) + " | | |")
            continue
        first = fmt([statistics.mean(r["losses"][:5]) for r in runs])
        last = fmt([statistics.mean(r["losses"][-5:]) for r in runs])
        print(f"| {kind} | " + " | ".join(cells) + f" | {first} | {last} |")


if __name__ == "__main__":
    main()
