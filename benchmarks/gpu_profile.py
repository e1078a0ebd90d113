"""Host-side profile of ragr training on a GPU (BERT-base, batch 128): ms/step under each forward strategy (packed,
bucketed, chunked; chunked also without the shared embedding lookup), plus a cProfile of the packed run. Run from the
repo root after gpu_check.sh's setup:
  STEPS=16 python3 benchmarks/gpu_profile.py
"""
import cProfile, io, json, os, pstats, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
import torch
import gpu_bench as gb
from ragr.config import compose_config
from ragr.launch.local import run_local
from ragr.train.engine import Engine
dev = "cuda" if torch.cuda.is_available() else "cpu"
size = "base" if dev == "cuda" else "tiny"
steps = int(os.environ.get("STEPS", 24 if dev == "cuda" else 6))
batch = 128 if dev == "cuda" else 16
tmp = Path(tempfile.mkdtemp())
mdir, _ = gb.build_embedder(tmp / "m", size, 128)
rows = [json.loads(l) for l in open("src/ragr/resources/demo/train.jsonl")]
with open(tmp / "d.jsonl", "w") as f:
    for r in (rows * 8)[:4096]:
        f.write(json.dumps({"query": r["query"], "pos": r["pos"][:1], "neg": r["neg"][:1]}) + "\n")
def cfg(extra=()):
    return compose_config("train", [f"model.name_or_path={mdir}", f"data.train={tmp/'d.jsonl'}", "data.eval=null",
        "data.num_negatives=1", f"trainer.batch_size={batch}", f"trainer.max_steps={steps}", "model.max_query_length=128",
        "model.max_doc_length=128", f"trainer.precision={'bf16' if dev=='cuda' else 'fp32'}", "trainer.log_every=4",
        "trainer.eval_before=false", "trainer.eval_after=false", f"output_dir={tempfile.mkdtemp()}", *extra])
stamps = []
orig_log = Engine._log
def log(self, rec):
    if "step" in rec and "event" not in rec:
        if dev == "cuda": torch.cuda.synchronize()
        stamps.append((rec["step"], time.perf_counter()))
    return orig_log(self, rec)
Engine._log = log
def timed(name, extra=(), prof=False):
    stamps.clear()
    pr = cProfile.Profile() if prof else None
    if pr: pr.enable()
    run_local(cfg(extra), quiet=True)
    if pr:
        pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
        print("\n".join(l[:150] for l in s.getvalue().splitlines()[6:40]))
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    print(f"{name}: {1e3*(t1-t0)/(s1-s0):.1f} ms/step", flush=True)
timed("cProfile packed", ["trainer.forward=packed"], prof=True)
timed("packed", ["trainer.forward=packed"])
timed("bucketed", ["trainer.forward=bucketed"])
timed("chunked (chunk 32)", ["trainer.forward=chunked"])
import ragr.models.chunking as E
orig = E.input_embedding_to_share
E.input_embedding_to_share = lambda *a: None
timed("chunked, no shared embedding lookup", ["trainer.forward=chunked"])
E.input_embedding_to_share = orig
