"""One-shot GPU benchmark for issue 9: rerank throughput and embedder-training MFU, with the card's name.

1. The card: name, torch version, measured bf16 matmul rate (8192^3 products, 3 warm-ups, 10 timed with CUDA
   events). That rate is the MFU denominator below (a measured peak, not the datasheet's).
2. Rerank: a BERT-base-sized cross-encoder (12 layers, hidden 768, random init, seed 0, one label) with MiniLM's
   WordPiece tokenizer, scoring the same pairs (chatterbot-corpus query/answer groups of 10 built as in
   benchmarks/rerank_throughput.py, cycled up to --pairs) in bf16 with sentence-transformers'
   ``CrossEncoder.predict`` (batch 32, its default, and 128) and ragr's ``Reranker`` (as ``ragr rerank --dtype bf16``
   builds it). One warm-up pass each, then --repeats timed passes, interleaved; medians. Scores are compared with
   an fp32 ragr pass (max |difference|, top-10 order identity per query).
3. Training: a BERT-base-sized embedder (mean pooling, normalized) in bf16 mixed precision on triplets from ragr's
   demo data (rows repeated as benchmarks/train_throughput.py does), batch 128, max length 128, trained by ragr's
   engine (``compose_config`` + ``run_local``; trainer.chunk_size 32, the default, and 128) and by
   sentence-transformers' trainer (MultipleNegativesRankingLoss, scale 20 = ragr's temperature 0.05).
   Only steps are timed: the loop is synchronized and sampled every --log-every steps (ragr: at its metrics log;
   sentence-transformers: a TrainerCallback), and the first window (warm-up) is dropped, so model loading,
   data loading and saving are outside the measurement. A forward pre-hook on the BERT backbone counts the
   tokens each system really feeds it: real (attention mask) and padded.
   MFU = 6 x N x real tokens/s / measured matmul FLOP/s, N = non-embedding parameters (the 12 encoder
   layers); attention-score FLOPs are left out (small at these lengths). "padded MFU" uses padded tokens.

``--quick`` shrinks everything (tiny BERT, few pairs and steps) so it runs on a CPU in about a minute.
On CPU everything runs in fp32. Prints markdown tables; writes $OUT/gpu_bench.json when OUT is set
(or --json PATH). Progress goes to stderr.

Usage: python benchmarks/gpu_bench.py [--quick] [--pairs 8000] [--repeats 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rerank_throughput, train_throughput (their data builders)

SEED = 0
NOTES: list[str] = []


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def note(msg: str) -> None:
    NOTES.append(msg)
    say("note: " + msg)


# ---- helpers --------------------------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def bert_config(size: str, num_labels: int | None = None):
    from transformers import BertConfig

    dims = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)}[size]
    kw = {"num_labels": num_labels} if num_labels is not None else {}
    return BertConfig(vocab_size=30522, max_position_embeddings=512, **dims, **kw)


def non_embedding_params(bert) -> int:
    """Parameters of the encoder layers (no word/position/type embeddings, no pooler)."""
    return sum(p.numel() for name, p in bert.named_parameters() if not name.startswith(("embeddings.", "pooler.")))


def minilm_tokenizer():
    from transformers import AutoTokenizer

    from ragr.config.resolvers import bundled

    tok = AutoTokenizer.from_pretrained(bundled("minilm"))
    tok.model_max_length = 512
    return tok


class TokenCounter:
    """Counts tokens fed to the outermost BERT backbone inside a module: padded (mask size) and real (mask sum)."""

    def __init__(self) -> None:
        self.padded = 0
        self._real = None
        self.calls = 0
        self.handles = []

    def attach(self, root) -> None:
        """Hook one module per model: a sentence-transformers Transformer module (its forward calls the HF
        model's ``forward`` directly, so hooks there never fire) or else the outermost ``BertModel``."""
        from transformers import BertModel

        st = next((m for m in root.modules() if type(m).__name__ == "Transformer" and hasattr(m, "auto_model")), None)
        target = st or next((m for m in root.modules() if isinstance(m, BertModel)), None)
        if target is None:
            raise RuntimeError(f"no BertModel inside {type(root).__name__}")
        self.handles.append(target.register_forward_pre_hook(self._hook, with_kwargs=True))

    def _hook(self, _mod, args, kwargs):
        from collections.abc import Mapping

        if args and isinstance(args[0], Mapping):  # a sentence-transformers module: forward(features)
            feats, mask, ids = args[0], args[0].get("attention_mask"), args[0].get("input_ids")
        else:  # a BertModel: forward(input_ids, attention_mask, ...)
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None:
            self.padded += mask.numel()
            s = mask.sum()
            self._real = s if self._real is None else self._real + s  # stays on the device: no sync here
        elif ids is not None:
            self.padded += ids.numel()
            self._real = ids.numel() if self._real is None else self._real + ids.numel()
        else:
            raise RuntimeError("token counter: no attention_mask / input_ids in the forward's inputs")
        self.calls += 1

    @property
    def real(self) -> int:
        return int(self._real) if self._real is not None else 0

    def reset(self) -> None:
        self.padded, self._real, self.calls = 0, None, 0

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ---- 1. the card ----------------------------------------------------------------------------------
def matmul_rate(device: str, n: int, warmups: int = 3, reps: int = 10) -> dict:
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    g = torch.Generator(device=device).manual_seed(SEED)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warmups):
        c = a @ b
    sync(device)
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            c = a @ b
        end.record()
        end.synchronize()
        secs = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        secs = time.perf_counter() - t0
    del a, b, c
    flops = 2 * n**3 * reps / secs
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "warmups": warmups, "timed": reps,
            "seconds": secs, "tflops": flops / 1e12}


# ---- 2. rerank ------------------------------------------------------------------------------------
def build_cross_encoder(out: Path, size: str) -> tuple[str, int]:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(SEED)
    model = BertForSequenceClassification(bert_config(size, num_labels=1))
    n = non_embedding_params(model.bert)
    model.save_pretrained(out)
    minilm_tokenizer().save_pretrained(out)  # model_max_length 512: both systems read their max length here
    return str(out), n


def rerank_groups(tok, n_pairs: int, per_query: int) -> tuple[list[tuple[str, list[str]]], str]:
    """Query groups of ``per_query`` documents: chatterbot-corpus groups as in rerank_throughput.py, else demo dev."""
    try:
        from rerank_throughput import make_groups

        groups = make_groups(tok, n_pairs, per_query)
        source = "chatterbot-corpus groups (benchmarks/rerank_throughput.py make_groups)"
    except ImportError as exc:  # chatterbot_corpus or yaml missing: ragr's own demo dev set
        import importlib.resources

        note(f"rerank data: {exc}; using ragr's demo dev.jsonl instead")
        rows = [json.loads(line) for line in
                (importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl").read_text().splitlines()]
        groups = []
        for r in rows:
            docs = (list(r["positive"]) + list(r["negative"]))[:per_query]
            if len(docs) == per_query:
                groups.append((r["query"], docs))
        source = "ragr demo dev.jsonl groups"
    want = max(1, n_pairs // per_query)
    unique = len(groups)
    groups = (groups * (want // max(unique, 1) + 1))[:want]  # cycle whole groups up to the size asked
    return groups, f"{source}, {unique} unique groups cycled to {len(groups)}"


def top_k_identity(a: list[float], b: list[float], per_query: int, k: int = 10) -> float:
    same = total = 0
    for s in range(0, len(a), per_query):
        ra = sorted(range(per_query), key=lambda i: -a[s + i])[:k]
        rb = sorted(range(per_query), key=lambda i: -b[s + i])[:k]
        same += ra == rb
        total += 1
    return same / max(total, 1)


def st_cross_encoder(path: str, device: str, dtype):
    """sentence-transformers CrossEncoder in ``dtype``, whatever its major version calls the argument."""
    from sentence_transformers import CrossEncoder

    last = None
    for key in ("dtype", "torch_dtype"):
        try:
            model = CrossEncoder(path, device=device, model_kwargs={key: dtype})
            break
        except TypeError as exc:
            last = exc
    else:
        raise last
    got = next(model.parameters()).dtype
    if got != dtype:
        note(f"sentence-transformers CrossEncoder loaded in {got}, cast to {dtype}")
        model = model.to(dtype)
    return model


def bench_rerank(a, device: str, peak_tflops: float, tmp: Path, partial=None) -> dict:
    import numpy as np
    import torch

    from ragr.infer import Reranker

    bf16 = device.startswith("cuda")
    dtype, dname = (torch.bfloat16, "bf16") if bf16 else (torch.float32, "fp32")
    path, n_params = build_cross_encoder(tmp / "cross-encoder", a.size)
    tok = minilm_tokenizer()
    per_query = 10
    groups, source = rerank_groups(tok, a.pairs, per_query)
    pairs = [(q, d) for q, docs in groups for d in docs]
    lengths = [len(x) for x in tok([q for q, _ in pairs], [d for _, d in pairs], truncation="longest_first",
                                   max_length=512)["input_ids"]]
    real = sum(lengths)
    say(f"rerank: {len(pairs)} pairs, {real} tokens (mean {real / len(pairs):.0f}, max {max(lengths)}); {source}")

    ident = torch.nn.Identity()
    st = st_cross_encoder(path, device, dtype)
    rr = Reranker(path, device=device, dtype=dname)
    counter = TokenCounter()
    counter.attach(st)
    counter.attach(rr.scorer)

    def st_fn(bs):
        return lambda p: [float(x) for x in st.predict(p, batch_size=bs, activation_fn=ident, show_progress_bar=False,
                                                       convert_to_numpy=True)]

    systems = {f"sentence-transformers CrossEncoder {dname} (batch 32)": st_fn(32),
               f"sentence-transformers CrossEncoder {dname} (batch 128)": st_fn(128),
               f"ragr Reranker {dname}": lambda p: [float(x) for x in rr.score(p)]}
    secs = {k: [] for k in systems}
    padded, scores = {}, {}
    for name, fn in systems.items():  # warm-up: one full pass (allocator, cuBLAS, every shape)
        say(f"rerank warm-up: {name}")
        counter.reset()
        scores[name] = fn(pairs)
        sync(device)
        padded[name] = counter.padded
    for r in range(a.repeats):
        for name, fn in systems.items():
            sync(device)
            t0 = time.perf_counter()
            fn(pairs)
            sync(device)
            secs[name].append(time.perf_counter() - t0)
        say(f"rerank repeat {r + 1}/{a.repeats}: " + ", ".join(f"{k.replace('sentence-transformers CrossEncoder', 'ST')} {v[-1]:.2f}s"
                                                               for k, v in secs.items()))
    counter.detach()
    del st
    free(device)
    n_ref = min(len(pairs), a.ref_pairs // per_query * per_query)  # fp32 is slow: a prefix of whole groups
    say(f"rerank: fp32 reference pass on {n_ref} pairs (ragr, untimed)")
    ref_rr = Reranker(path, device=device, dtype="fp32")
    ref = [float(x) for x in ref_rr.score(pairs[:n_ref])]
    del ref_rr, rr
    free(device)

    base_name = next(iter(systems))
    res = {"model": f"BERT-{a.size} cross-encoder, random init (seed {SEED}), MiniLM tokenizer",
           "non_embedding_params": n_params, "dtype": dname, "pairs": len(pairs), "queries": len(groups),
           "docs_per_query": per_query, "data": source, "real_tokens": real, "mean_tokens": real / len(pairs),
           "max_tokens": max(lengths), "repeats": a.repeats, "fp32_reference_pairs": n_ref, "systems": {}}
    base_tps = statistics.median(real / s for s in secs[base_name])
    ref_np = np.array(ref)
    for name in systems:
        tps = [real / s for s in secs[name]]
        med = statistics.median(tps)
        sc = np.array(scores[name])
        res["systems"][name] = {
            "seconds": secs[name], "tokens_per_s": med, "tokens_per_s_min": min(tps), "tokens_per_s_max": max(tps),
            "pairs_per_s": len(pairs) * med / real, "padded_tokens": padded[name],
            "padding": padded[name] / real - 1, "x_st_batch32": med / base_tps,
            "mfu": 2 * n_params * med / (peak_tflops * 1e12),
            "max_abs_diff_vs_fp32": float(np.abs(sc[:n_ref] - ref_np).max()),
            "top10_identical_vs_fp32": top_k_identity(scores[name][:n_ref], ref, per_query),
        }
    rname = f"ragr Reranker {dname}"
    res["ragr_vs_st_batch32"] = {
        "max_abs_diff": float(np.abs(np.array(scores[rname]) - np.array(scores[base_name])).max()),
        "top10_identical": top_k_identity(scores[rname], scores[base_name], per_query)}
    return res


# ---- 3. training ----------------------------------------------------------------------------------
def build_embedder(out: Path, size: str, max_len: int) -> tuple[str, int]:
    import torch
    from transformers import BertModel

    from ragr.models.embedder import Embedder

    torch.manual_seed(SEED)
    backbone = BertModel(bert_config(size))
    n = non_embedding_params(backbone)
    Embedder(backbone, minilm_tokenizer(), pooling="mean", normalize=True, max_query_length=max_len,
             max_doc_length=max_len).save(out)  # a sentence-transformers folder
    return str(out), n


def window_rates(snaps: list[tuple[int, float, int, int]], batch: int) -> dict:
    """Rates between the first and the last snapshot (the first window, warm-up, is left out)."""
    (s0, t0, p0, r0), (s1, t1, p1, r1) = snaps[0], snaps[-1]
    dt = t1 - t0
    return {"timed_steps": s1 - s0, "seconds": dt, "step_ms": 1e3 * dt / max(s1 - s0, 1),
            "samples_per_s": (s1 - s0) * batch / dt, "real_tokens_per_s": (r1 - r0) / dt,
            "padded_tokens_per_s": (p1 - p0) / dt, "real_tokens_per_step": (r1 - r0) / max(s1 - s0, 1),
            "padded_tokens_per_step": (p1 - p0) / max(s1 - s0, 1),
            "windows": [{"step": s, "t": t - t0} for s, t, _, _ in snaps]}


def train_ragr(a, device: str, model_dir: str, data: str, chunk: int, out: str) -> dict:
    from ragr.config import compose_config
    from ragr.launch.local import run_local
    from ragr.train.engine import Engine
    from ragr.train.job import TrainingJob

    precision = "bf16" if device.startswith("cuda") else "fp32"
    cfg = compose_config("train", [
        f"model.name_or_path={model_dir}", f"data.train={data}", "data.eval=null", "data.num_negatives=1",
        f"trainer.batch_size={a.batch}", f"trainer.max_steps={a.steps}", f"model.max_query_length={a.max_len}",
        f"model.max_doc_length={a.max_len}", f"trainer.precision={precision}", f"trainer.chunk_size={chunk}",
        f"trainer.log_every={a.log_every}", "trainer.save_total_limit=1", "trainer.eval_before=false",
        "trainer.eval_after=false", f"output_dir={out}"])
    counter, snaps = TokenCounter(), []
    task_cls = TrainingJob  # every family trains through the one job class
    orig_build, orig_log = task_cls.build_model, Engine._log

    def build_model(self):
        model = orig_build(self)
        counter.attach(model)
        return model

    def log(self, record):
        if "event" not in record and "step" in record:
            sync(device)
            snaps.append((record["step"], time.perf_counter(), counter.padded, counter.real))
        return orig_log(self, record)

    task_cls.build_model, Engine._log = build_model, log
    try:
        t0 = time.perf_counter()
        run_local(cfg, quiet=True)
        total = time.perf_counter() - t0
    finally:
        task_cls.build_model, Engine._log = orig_build, orig_log
        counter.detach()
    res = window_rates(snaps, a.batch)
    res.update(whole_run_seconds=total, precision=precision, chunk_size=chunk)
    return res


def train_st(a, device: str, model_dir: str, data: str, out: str) -> dict:
    from datasets import Dataset  # noqa: I001  (ImportError: the caller skips this system)
    import sentence_transformers
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    cuda = device.startswith("cuda")
    rows = [json.loads(line) for line in open(data)]
    ds = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows],
                            "negative": [r["neg"][0] for r in rows]})
    model = SentenceTransformer(model_dir, device=device)
    model.max_seq_length = a.max_len
    counter, snaps = TokenCounter(), []
    counter.attach(model)

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % a.log_every == 0:
                sync(device)
                snaps.append((state.global_step, time.perf_counter(), counter.padded, counter.real))

    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=5e-5,
        report_to=[], save_strategy="no", logging_steps=10_000, dataloader_drop_last=True, seed=42, disable_tqdm=True,
        bf16=cuda, use_cpu=not cuda)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Snap()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its log dict would land on stdout
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        counter.detach()
    total = time.perf_counter() - t0
    res = window_rates(snaps, a.batch)
    res.update(whole_run_seconds=total, precision="bf16" if cuda else "fp32",
               version=sentence_transformers.__version__)
    del trainer, model
    return res


def bench_train(a, device: str, peak_tflops: float, tmp: Path, partial=None) -> dict:
    from train_throughput import make_data

    model_dir, n_params = build_embedder(tmp / "embedder", a.size, a.max_len)
    data = str(make_data(a.samples, tmp))
    res = {"model": f"BERT-{a.size} embedder (mean pooling, normalized), random init (seed {SEED}), MiniLM tokenizer",
           "non_embedding_params": n_params, "batch": a.batch, "max_length": a.max_len, "triplets": a.samples,
           "steps": a.steps, "sampled_every": a.log_every, "data": "ragr demo train.jsonl (query, 1 pos, 1 neg), repeated",
           "mfu_formula": "MFU = 6 * N_non_embedding * real_tokens_per_s / measured_matmul_flops_per_s",
           "systems": {}}
    runs = [(f"ragr (chunk_size {c})", lambda c=c: train_ragr(a, device, model_dir, data, c, str(tmp / f"ragr-{c}")))
            for c in a.chunks]
    runs.append(("sentence-transformers trainer", lambda: train_st(a, device, model_dir, data, str(tmp / "st"))))
    for name, fn in runs:
        say(f"train: {name}")
        try:
            r = fn()
        except Exception as exc:  # e.g. datasets missing or broken for sentence-transformers: keep the rest
            import traceback

            traceback.print_exc()
            note(f"{name} skipped: {type(exc).__name__}: {exc}")
            continue
        finally:
            free(device)
        r["mfu"] = 6 * n_params * r["real_tokens_per_s"] / (peak_tflops * 1e12)
        r["padded_mfu"] = 6 * n_params * r["padded_tokens_per_s"] / (peak_tflops * 1e12)
        res["systems"][name] = r
        if partial is not None:  # keep what is measured if a later system hangs past the timeout
            partial(res)
        say(f"train: {name}: {r['step_ms']:.1f} ms/step, {r['real_tokens_per_s']:,.0f} real tokens/s, "
            f"MFU {r['mfu']:.1%}; whole run {r['whole_run_seconds']:.1f}s")
    st = res["systems"].get("sentence-transformers trainer")
    for name, r in res["systems"].items():
        if st and st["real_tokens_per_s"] > 0 and name != "sentence-transformers trainer":
            r["x_st_real_tokens_per_s"] = r["real_tokens_per_s"] / st["real_tokens_per_s"]
            r["x_st_samples_per_s"] = r["samples_per_s"] / st["samples_per_s"]
    return res


# ---- report ---------------------------------------------------------------------------------------
def report(out: dict) -> str:
    m, lines = out["matmul"], []
    lines.append(f"## {out['device_name']} ({out['device']}), torch {out['torch']}, transformers {out['transformers']}, "
                 f"sentence-transformers {out['sentence_transformers']}\n")
    lines.append(f"Measured matmul: {m['n']}^3 {m['dtype']}, {m['warmups']} warm-ups, {m['timed']} timed: "
                 f"**{m['tflops']:.4g} TFLOP/s** (the MFU denominator)\n")
    r = out.get("rerank")
    if r:
        lines.append(f"### Rerank: {r['model']}, {r['dtype']}\n{r['pairs']} pairs ({r['queries']} queries x "
                     f"{r['docs_per_query']}), {r['real_tokens']:,} real tokens (mean {r['mean_tokens']:.0f}, max "
                     f"{r['max_tokens']}), median of {r['repeats']} after a warm-up; MFU = 2*N*tokens/s / matmul rate; "
                     f"fp32 reference: ragr fp32 on the first {r['fp32_reference_pairs']} pairs\n")
        lines.append("| system | real tokens/s | pairs/s | x ST b32 | padding | MFU | max abs diff vs fp32 | top-10 = fp32 |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, s in r["systems"].items():
            lines.append(f"| {name} | {s['tokens_per_s']:,.0f} | {s['pairs_per_s']:,.0f} | {s['x_st_batch32']:.2f}x | "
                         f"{s['padding']:+.1%} | {s['mfu']:.1%} | {s['max_abs_diff_vs_fp32']:.2e} | "
                         f"{s['top10_identical_vs_fp32']:.1%} |")
        v = r["ragr_vs_st_batch32"]
        lines.append(f"\nragr vs sentence-transformers (batch 32), same dtype: max |score diff| {v['max_abs_diff']:.2e}, "
                     f"top-10 order identical on {v['top10_identical']:.1%} of queries (random-init model: near-ties)\n")
    t = out.get("train")
    if t:
        lines.append(f"### Training: {t['model']}\nbatch {t['batch']} triplets, max length {t['max_length']}, "
                     f"{t['steps']} steps, timed from step {t['sampled_every']} to the last (warm-up window dropped); "
                     f"N = {t['non_embedding_params'] / 1e6:.1f}M; {t['mfu_formula']}\n")
        lines.append("| trainer | precision | ms/step | samples/s | real tokens/s | padded tokens/s | MFU | padded MFU | x ST |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for name, s in t["systems"].items():
            x = f"{s['x_st_real_tokens_per_s']:.2f}x" if "x_st_real_tokens_per_s" in s else "-"
            lines.append(f"| {name} | {s['precision']} | {s['step_ms']:.1f} | {s['samples_per_s']:,.0f} | "
                         f"{s['real_tokens_per_s']:,.0f} | {s['padded_tokens_per_s']:,.0f} | {s['mfu']:.1%} | "
                         f"{s['padded_mfu']:.1%} | {x} |")
    if out["notes"]:
        lines.append("\nNotes:\n" + "\n".join(f"- {n}" for n in out["notes"]))
    lines.append(f"\n_total {out['total_seconds']:.0f} s_")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU run in about a minute)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--size", choices=("base", "tiny"), default=None)
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--ref-pairs", type=int, default=2000, help="pairs scored by the fp32 reference")
    ap.add_argument("--samples", type=int, default=None, help="training triplets (demo rows repeated)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=None, help="steps per timing window")
    ap.add_argument("--chunks", type=int, nargs="+", default=None, help="ragr trainer.chunk_size values")
    ap.add_argument("--matmul-n", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=("rerank", "train"))
    ap.add_argument("--json", default=None, help="default: $OUT/gpu_bench.json when OUT is set")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    try:
        import sentence_transformers

        st_version = sentence_transformers.__version__
    except ImportError:
        st_version = "missing"
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quick = a.quick
    defaults = dict(size="tiny" if quick else "base", pairs=200 if quick else 8000, repeats=2 if quick else 3,
                    samples=64 if quick else 4096, batch=8 if quick else 128, steps=6 if quick else 60,
                    log_every=2 if quick else 10, chunks=[4, 8] if quick else [32, 128],
                    matmul_n=512 if quick else 8192)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    t_start = time.perf_counter()
    name = (torch.cuda.get_device_name() if device.startswith("cuda")
            else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    out = {"device": device, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "sentence_transformers": st_version,
           "python": platform.python_version(), "quick": quick, "args": vars(a), "notes": NOTES}
    if not device.startswith("cuda"):
        note("no CUDA: everything in fp32 on the CPU (the numbers only check the script)")
    say(f"device {name}; matmul {a.matmul_n}^3")
    out["matmul"] = matmul_rate(device, a.matmul_n)
    peak = out["matmul"]["tflops"]
    say(f"matmul: {peak:.4g} TFLOP/s")
    json_path = a.json or (str(Path(os.environ["OUT"]) / "gpu_bench.json") if os.environ.get("OUT") else None)

    def dump() -> None:
        out["total_seconds"] = time.perf_counter() - t_start
        if json_path:
            Path(json_path).write_text(json.dumps(out, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="ragr-gpu-bench-") as tmp:
        for section, fn in (("rerank", bench_rerank), ("train", bench_train)):
            if section in a.skip:
                continue
            t0 = time.perf_counter()
            def partial(res, section=section) -> None:
                out[section] = res
                dump()

            try:
                out[section] = fn(a, device, peak, Path(tmp), partial)
            except Exception as exc:  # keep the other section's numbers
                import traceback

                traceback.print_exc()
                note(f"{section} failed: {type(exc).__name__}: {exc}")
                out[f"{section}_error"] = f"{type(exc).__name__}: {exc}"
            say(f"{section}: {time.perf_counter() - t0:.1f}s")
            free(device)
            dump()
    dump()
    print(report(out))
    if json_path:
        print(f"\n(wrote {json_path})")
    if any(k.endswith("_error") for k in out):
        sys.exit(1)


if __name__ == "__main__":
    main()
