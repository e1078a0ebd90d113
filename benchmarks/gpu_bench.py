"""One-shot GPU benchmark (issues 9 and 14): ragr against sentence-transformers on the same card, in one run.

Sections (each can be skipped with ``--skip``; a failing one is noted and the others still run):

0. **card**: name, torch version, measured bf16 matmul rate (8192^3 products, 3 warm-ups, 10 timed with CUDA
   events). That rate is the MFU denominator (a measured peak, not the datasheet's).
1. **rerank**: a BERT-base-sized cross-encoder (12 layers, hidden 768, random init, seed 0, one label) with MiniLM's
   WordPiece tokenizer scoring the same pairs (chatterbot-corpus query groups of 10 with log-normal document lengths,
   benchmarks/rerank_throughput.py ``make_groups``) in bf16: sentence-transformers ``CrossEncoder.predict`` (batch 32,
   its default, and 128) against ragr's ``Reranker`` under each forward strategy (``--forwards``). One warm-up pass
   each, then --repeats timed passes, interleaved; medians. Scores are compared with an fp32 ragr pass.
2. **train**: a BERT-base-sized embedder (mean pooling, normalized) in bf16 mixed precision on mixed-length
   triplets (the rerank groups: query, its own answer, one other document; max length --max-len), batch --batch,
   trained by ragr's engine under each forward strategy (``compose_config`` + ``run_local``; ``chunked`` with
   trainer.chunk_size 32, the CPU default) and by sentence-transformers' trainer (MultipleNegativesRankingLoss, scale
   20 = ragr's temperature 0.05). Only steps are timed: the loop is synchronized and sampled every --log-every steps
   (ragr: at its metrics log; sentence-transformers: a TrainerCallback), and the first window (warm-up) is dropped.
   Tokens: a pre-hook on the BERT backbone sums the attention masks (real tokens) and a hook on its input
   embedding counts the token slots the backbone really computed (padded, or packed rows).
   MFU = 6 x N x real tokens/s / measured matmul FLOP/s, N = non-embedding parameters; "slot MFU" counts slots.
   Peak memory: ``torch.cuda.max_memory_allocated`` over the run (reset before each system).
3. **llm**: a Qwen-0.5B-class decoder (Qwen2 architecture with Qwen2.5-0.5B's sizes: 24 layers, hidden 896, 14
   heads, 2 KV heads, MLP 4864; random init, seed 0; a byte-level BPE tokenizer trained on the rerank texts) as an
   ``llm_seqcls`` reranker with LoRA r=16 on every linear layer: ragr training step time (listwise, groups of 4) under
   each strategy, then rerank throughput of the trained (merged) model: ragr ``Reranker`` per strategy against
   sentence-transformers' ``CrossEncoder`` on the same folder (it tokenizes the bare pair, ragr adds its prompt:
   compared by each system's real tokens/s). MFU here uses 4 x N (frozen weights get no weight gradient).
4. **dist**: the embedder trained with ``launcher=ddp`` and ``launcher=fsdp`` on one device (``ragr train`` in a
   subprocess, as a user runs it): ms/step from its metrics log (windows after the first).
5. **colbert**: ColBERT (BERT-base backbone, dim 128) trained by ragr under each strategy.

``--quick`` shrinks everything (tiny BERT, tiny Qwen2, few pairs and steps) so the whole script runs on a CPU in a
couple of minutes: there everything runs in fp32 and the numbers only check the script. Prints markdown tables (a
summary first); writes $OUT/gpu_bench.json when OUT is set (or --json PATH). Progress goes to stderr.

Usage: python benchmarks/gpu_bench.py [--quick] [--skip dist ...] [--forwards packed bucketed chunked]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rerank_throughput (its data builder)

SEED = 0
NOTES: list[str] = []
SECTIONS = ("train", "rerank", "llm", "dist", "colbert")  # the order they run in: the first target first


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


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def bert_config(size: str, num_labels: int | None = None):
    from transformers import BertConfig

    dims = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)}[size]
    kw = {"num_labels": num_labels} if num_labels is not None else {}
    return BertConfig(vocab_size=30522, max_position_embeddings=512, **dims, **kw)


def non_embedding_params(model) -> int:
    """Parameters outside the token/position/type embeddings, the pooler and the LM / score head."""
    skip = ("embeddings.", "pooler.", "embed_tokens.", "lm_head.", "score.")
    return sum(p.numel() for name, p in model.named_parameters() if not any(s in name for s in skip))


def minilm_tokenizer():
    from transformers import AutoTokenizer

    from ragr.config.resolvers import bundled

    tok = AutoTokenizer.from_pretrained(bundled("minilm"))
    tok.model_max_length = 512
    return tok


class TokenCounter:
    """Counts the tokens fed to the outermost transformers backbone inside a module.

    ``real``: attention-mask sums at the backbone's (or a sentence-transformers Transformer module's) input;
    ``slots``: the token slots its input embedding looked up in 2-D calls, i.e. what the backbone computed (padded
    batches, or packed / bucketed rows: ragr's forward strategies reshape the backbone call after this pre-hook)."""

    def __init__(self) -> None:
        self.slots = 0
        self._real = None
        self.calls = 0
        self.handles = []

    def attach(self, root) -> None:
        from transformers import PreTrainedModel

        st = next((m for m in root.modules() if type(m).__name__ == "Transformer" and hasattr(m, "auto_model")), None)
        base = next((m for m in root.modules() if isinstance(m, PreTrainedModel) and getattr(m, "base_model", None) is m),
                    None)
        if base is None:
            raise RuntimeError(f"no transformers base model inside {type(root).__name__}")
        self.handles.append((st or base).register_forward_pre_hook(self._hook, with_kwargs=True))
        emb = base.get_input_embeddings()
        self.handles.append(emb.register_forward_hook(self._emb))

    def _emb(self, _mod, args, _out):
        if args and args[0].dim() == 2:
            self.slots += args[0].numel()

    def _hook(self, _mod, args, kwargs):
        from collections.abc import Mapping

        if args and isinstance(args[0], Mapping):  # a sentence-transformers module: forward(features)
            mask, ids = args[0].get("attention_mask"), args[0].get("input_ids")
        else:
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 2:
            s = mask.sum()
            self._real = s if self._real is None else self._real + s  # stays on the device: no sync here
        elif ids is not None:
            self._real = ids.numel() if self._real is None else self._real + ids.numel()
        self.calls += 1

    @property
    def real(self) -> int:
        return int(self._real) if self._real is not None else 0

    def reset(self) -> None:
        self.slots, self._real, self.calls = 0, None, 0

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ---- 0. the card ----------------------------------------------------------------------------------
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


# ---- data -------------------------------------------------------------------------------------------
def rerank_groups(tok, n_pairs: int, per_query: int) -> tuple[list[tuple[str, list[str]]], str]:
    """Query groups of ``per_query`` documents: chatterbot-corpus groups as in rerank_throughput.py, else demo dev."""
    try:
        from rerank_throughput import make_groups

        groups = make_groups(tok, n_pairs, per_query)
        source = "chatterbot-corpus groups, log-normal document lengths (benchmarks/rerank_throughput.py make_groups)"
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


def training_rows(n: int, negatives: int, tmp: Path) -> tuple[Path, str]:
    """``n`` rows (query, its own answer, ``negatives`` other documents of its group) from the rerank groups."""
    tok = minilm_tokenizer()
    groups, source = rerank_groups(tok, n * (1 + negatives) * 2, 1 + negatives)
    # throughput only (a random-init model): which document is the positive does not matter
    rows = []
    for q, docs in groups[:n]:
        rows.append({"query": q, "pos": [docs[0]], "neg": docs[1 : 1 + negatives]})
    path = tmp / f"train-{n}-{negatives}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, f"{source} (query, one document as positive, {negatives} as negatives)"


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


# ---- rerank throughput (cross-encoder and LLM) ---------------------------------------------------------------
def time_rerankers(systems: dict, pairs, repeats: int, device: str, counter: TokenCounter) -> tuple[dict, dict, dict]:
    """Warm-up + ``repeats`` interleaved timed passes per system: (seconds, real tokens, slots, scores) by name."""
    secs = {k: [] for k in systems}
    real, slots, scores = {}, {}, {}
    for name, fn in systems.items():  # warm-up: one full pass (allocator, kernels, every shape)
        say(f"rerank warm-up: {name}")
        counter.reset()
        scores[name] = fn(pairs)
        sync(device)
        real[name], slots[name] = counter.real, counter.slots
    for r in range(repeats):
        for name, fn in systems.items():
            sync(device)
            t0 = time.perf_counter()
            fn(pairs)
            sync(device)
            secs[name].append(time.perf_counter() - t0)
        say(f"rerank repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in secs.items()))
    return secs, {"real": real, "slots": slots}, scores


def rerank_rows(systems, secs, counts, scores, n_pairs, n_params, peak, base_name, flops_per_token=2):
    out = {}
    base = statistics.median(counts["real"][base_name] / s for s in secs[base_name])
    for name in systems:
        tps = [counts["real"][name] / s for s in secs[name]]
        med = statistics.median(tps)
        out[name] = {"seconds": secs[name], "tokens_per_s": med, "pairs_per_s": n_pairs / statistics.median(secs[name]),
                     "real_tokens": counts["real"][name], "slots": counts["slots"][name],
                     "padding": counts["slots"][name] / max(counts["real"][name], 1) - 1, "x_st": med / base,
                     "mfu": flops_per_token * n_params * med / (peak * 1e12)}
    return out


def bench_rerank(a, device: str, peak: float, tmp: Path, partial=None) -> dict:
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    from ragr.infer import Reranker

    bf16 = device.startswith("cuda")
    dtype, dname = (torch.bfloat16, "bf16") if bf16 else (torch.float32, "fp32")
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(bert_config(a.size, num_labels=1))
    n_params = non_embedding_params(model.bert)
    path = str(tmp / "cross-encoder")
    model.save_pretrained(path)
    minilm_tokenizer().save_pretrained(path)  # model_max_length 512: both systems read their max length here
    del model
    per_query = 10
    groups, source = rerank_groups(minilm_tokenizer(), a.pairs, per_query)
    pairs = [(q, d) for q, docs in groups for d in docs]
    say(f"rerank: {len(pairs)} pairs; {source}")

    ident = torch.nn.Identity()
    st = st_cross_encoder(path, device, dtype)
    rrs = {f: Reranker(path, device=device, dtype=dname, forward=f) for f in a.forwards}
    counter = TokenCounter()
    counter.attach(st)
    for rr in rrs.values():
        counter.attach(rr.scorer)

    def st_fn(bs):
        return lambda p: [float(x) for x in st.predict(p, batch_size=bs, activation_fn=ident, show_progress_bar=False,
                                                       convert_to_numpy=True)]

    systems = {"sentence-transformers CrossEncoder (batch 32)": st_fn(32),
               **({} if a.quick else {"sentence-transformers CrossEncoder (batch 128)": st_fn(128)}),
               **{f"ragr Reranker forward={f}": (lambda p, rr=rr: [float(x) for x in rr.score(p)]) for f, rr in rrs.items()}}
    secs, counts, scores = time_rerankers(systems, pairs, a.repeats, device, counter)
    counter.detach()
    del st, rrs
    free(device)
    n_ref = min(len(pairs), a.ref_pairs // per_query * per_query)  # fp32 is slow: a prefix of whole groups
    ref = [float(x) for x in Reranker(path, device=device, dtype="fp32", forward="chunked").score(pairs[:n_ref])]
    free(device)
    base_name = next(iter(systems))
    res = {"model": f"BERT-{a.size} cross-encoder, random init (seed {SEED}), MiniLM tokenizer",
           "non_embedding_params": n_params, "dtype": dname, "pairs": len(pairs), "docs_per_query": per_query,
           "data": source, "repeats": a.repeats, "fp32_reference_pairs": n_ref,
           "systems": rerank_rows(systems, secs, counts, scores, len(pairs), n_params, peak, base_name)}
    ref_np = np.array(ref)
    for name, s in res["systems"].items():
        sc = np.array(scores[name])
        s["max_abs_diff_vs_fp32"] = float(np.abs(sc[:n_ref] - ref_np).max())
        s["top10_identical_vs_fp32"] = top_k_identity(scores[name][:n_ref], ref, per_query)
    return res


# ---- ragr training runs ---------------------------------------------------------------------------------------
def window_rates(snaps: list[tuple[int, float, int, int]], batch: int) -> dict:
    """Rates between the first and the last snapshot (the first window, warm-up, is left out)."""
    if len(snaps) < 2:
        raise RuntimeError(f"only {len(snaps)} timing snapshot(s): raise --steps or lower --log-every")
    (s0, t0, p0, r0), (s1, t1, p1, r1) = snaps[0], snaps[-1]
    dt = t1 - t0
    return {"timed_steps": s1 - s0, "seconds": dt, "step_ms": 1e3 * dt / max(s1 - s0, 1),
            "samples_per_s": (s1 - s0) * batch / dt, "real_tokens_per_s": (r1 - r0) / dt,
            "slot_tokens_per_s": (p1 - p0) / dt, "real_tokens_per_step": (r1 - r0) / max(s1 - s0, 1),
            "slot_tokens_per_step": (p1 - p0) / max(s1 - s0, 1)}


def train_ragr(device: str, overrides: list[str], batch: int, out: str) -> dict:
    """A timed ``run_local`` of ``overrides``: windows between metric logs, tokens counted on the backbone."""
    from ragr.config import compose_config
    from ragr.launch.local import run_local
    from ragr.train.engine import Engine
    from ragr.train.job import TrainingJob

    cfg = compose_config("train", [*overrides, "trainer.save_total_limit=1", "trainer.eval_before=false",
                                   "trainer.eval_after=false", "data.eval=null", f"output_dir={out}"])
    counter, snaps = TokenCounter(), []
    orig_build, orig_log = TrainingJob.build_model, Engine._log

    def build_model(self):
        model = orig_build(self)
        counter.attach(model)
        return model

    def log(self, record):
        if "event" not in record and "step" in record:
            sync(device)
            snaps.append((record["step"], time.perf_counter(), counter.slots, counter.real))
        return orig_log(self, record)

    TrainingJob.build_model, Engine._log = build_model, log
    reset_peak(device)
    try:
        t0 = time.perf_counter()
        run_local(cfg, quiet=True)
        total = time.perf_counter() - t0
    finally:
        TrainingJob.build_model, Engine._log = orig_build, orig_log
        counter.detach()
    res = window_rates(snaps, batch)
    res.update(whole_run_seconds=total, peak_gib=peak_gib(device), precision=cfg["trainer"]["precision"])
    return res


def forward_overrides(forward: str, tokens: int | None) -> list[str]:
    extra = [f"trainer.forward={forward}"]
    if forward == "chunked":
        extra.append("trainer.chunk_size=32")  # the CPU default: length-planned chunks of 32
    elif tokens:
        extra.append(f"trainer.forward_tokens={tokens}")
    return extra


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
                snaps.append((state.global_step, time.perf_counter(), counter.slots, counter.real))

    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=5e-5,
        report_to=[], save_strategy="no", logging_steps=10_000, dataloader_drop_last=True, seed=42, disable_tqdm=True,
        bf16=cuda, use_cpu=not cuda)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Snap()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its log dict would land on stdout
    reset_peak(device)
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        counter.detach()
    total = time.perf_counter() - t0
    res = window_rates(snaps, a.batch)
    res.update(whole_run_seconds=total, peak_gib=peak_gib(device), precision="bf16" if cuda else "fp32",
               version=sentence_transformers.__version__)
    del trainer, model
    return res


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


def run_systems(runs, res: dict, n_params: int, peak: float, device: str, partial, flops_per_token: int = 6) -> None:
    for name, fn in runs:
        say(f"{res.get('section', 'train')}: {name}")
        try:
            r = fn()
        except Exception as exc:  # e.g. datasets missing for sentence-transformers: keep the rest
            import traceback

            traceback.print_exc()
            note(f"{name} skipped: {type(exc).__name__}: {exc}")
            continue
        finally:
            free(device)
        r["mfu"] = flops_per_token * n_params * r["real_tokens_per_s"] / (peak * 1e12)
        r["slot_mfu"] = flops_per_token * n_params * r["slot_tokens_per_s"] / (peak * 1e12)
        res["systems"][name] = r
        if partial is not None:  # keep what is measured if a later system hangs past the timeout
            partial(res)
        say(f"  {name}: {r['step_ms']:.1f} ms/step, {r['real_tokens_per_s']:,.0f} real tokens/s, MFU {r['mfu']:.1%}")


def bench_train(a, device: str, peak: float, tmp: Path, partial=None) -> dict:
    model_dir, n_params = build_embedder(tmp / "embedder", a.size, a.max_len)
    data, source = training_rows(a.samples, 1, tmp)
    res = {"section": "train", "model": f"BERT-{a.size} embedder (mean pooling, normalized), random init (seed {SEED}), "
           "MiniLM tokenizer", "non_embedding_params": n_params, "batch": a.batch, "max_length": a.max_len,
           "triplets": a.samples, "steps": a.steps, "sampled_every": a.log_every, "data": source,
           "mfu_formula": "MFU = 6 * N_non_embedding * real_tokens_per_s / measured_matmul_flops_per_s", "systems": {}}
    precision = "bf16" if device.startswith("cuda") else "fp32"
    common = [f"model.name_or_path={model_dir}", f"data.train={data}", "data.num_negatives=1",
              f"trainer.batch_size={a.batch}", f"trainer.max_steps={a.steps}", f"model.max_query_length={a.max_len}",
              f"model.max_doc_length={a.max_len}", f"trainer.precision={precision}", f"trainer.log_every={a.log_every}"]
    runs = [(f"ragr forward={f}", lambda f=f: train_ragr(device, [*common, *forward_overrides(f, a.forward_tokens)], a.batch,
                                                         str(tmp / f"ragr-{f}"))) for f in a.forwards]
    runs.append(("sentence-transformers trainer", lambda: train_st(a, device, model_dir, str(data), str(tmp / "st"))))
    run_systems(runs, res, n_params, peak, device, partial)
    st = res["systems"].get("sentence-transformers trainer")
    for name, r in res["systems"].items():
        if st and name != "sentence-transformers trainer":
            r["x_st_samples_per_s"] = r["samples_per_s"] / st["samples_per_s"]
            if st.get("peak_gib") and r.get("peak_gib"):
                r["peak_vs_st"] = r["peak_gib"] / st["peak_gib"]
    return res


# ---- 3. LLM reranker -------------------------------------------------------------------------------------------
QWEN_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                intermediate_size=4864, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)
QWEN_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                 max_position_embeddings=2048, tie_word_embeddings=True)


def qwen_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer (Qwen2's format) trained on ``texts``: no hub download needed."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Qwen2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts + ["yes no"] * 64, vocab_size=16000, min_frequency=2,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    with tempfile.TemporaryDirectory() as d:
        bpe.save_model(d)
        vocab = json.loads(Path(d, "vocab.json").read_text())
        merges = [tuple(line.split()) for line in Path(d, "merges.txt").read_text().splitlines()[1:] if line.strip()]
    return Qwen2Tokenizer(vocab=vocab, merges=merges)


def build_qwen(out: Path, size: str, texts: list[str]) -> tuple[str, int]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen_tokenizer(texts)
    cfg = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      **(QWEN_05B if size == "base" else QWEN_TINY))
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg)
    n = non_embedding_params(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return str(out), n


def bench_llm(a, device: str, peak: float, tmp: Path, partial=None) -> dict:
    import torch

    from ragr.infer import Reranker

    per_query = 4
    groups, source = rerank_groups(minilm_tokenizer(), max(a.llm_pairs, a.llm_batch * per_query * 4), per_query)
    texts = sorted({q for q, _ in groups} | {d for _, ds in groups for d in ds})
    base_dir, n_params = build_qwen(tmp / "qwen", a.size, texts)
    data = tmp / "llm-train.jsonl"
    data.write_text("".join(json.dumps({"query": q, "pos": [ds[0]], "neg": ds[1:]}) + "\n" for q, ds in groups))
    res = {"section": "llm", "model": f"Qwen2 {'0.5B-class (Qwen2.5-0.5B sizes)' if a.size == 'base' else 'tiny'}, random "
           f"init (seed {SEED}), byte-level BPE trained on the data; llm_seqcls + LoRA r=16 (all linear layers)",
           "non_embedding_params": n_params, "batch_queries": a.llm_batch, "group": per_query,
           "max_length": a.llm_max_len, "steps": a.llm_steps, "data": source,
           "mfu_formula": "MFU = 4 * N_non_embedding * real_tokens_per_s / matmul rate (LoRA: no weight gradients)",
           "systems": {}, "rerank": {}}
    precision = "bf16" if device.startswith("cuda") else "fp32"
    common = ["task=reranker", "model=llm-reranker", f"model.name_or_path={base_dir}", f"model.max_length={a.llm_max_len}",
              "model.lora_r=16", "model.lora_alpha=32", f"data.train={data}", f"data.num_negatives={per_query - 1}",
              f"trainer.batch_size={a.llm_batch}", f"trainer.max_steps={a.llm_steps}", f"trainer.precision={precision}",
              f"trainer.log_every={a.llm_log_every}", "trainer.lr=1e-4"]
    runs = [(f"ragr forward={f}", lambda f=f: train_ragr(device, [*common, *forward_overrides(f, a.forward_tokens)],
                                                         a.llm_batch, str(tmp / f"llm-{f}"))) for f in a.forwards]
    run_systems(runs, res, n_params, peak, device, partial, flops_per_token=4)
    trained = next((tmp / f"llm-{f}" / "model" for f in a.forwards if (tmp / f"llm-{f}" / "model").is_dir()), None)
    if trained is None:
        return res
    # rerank throughput of the trained (merged) model: ragr per strategy vs sentence-transformers' CrossEncoder
    pairs = [(q, d) for q, docs in groups for d in docs][: a.llm_pairs]
    dtype, dname = (torch.bfloat16, "bf16") if device.startswith("cuda") else (torch.float32, "fp32")
    counter = TokenCounter()
    systems = {}
    try:
        st = st_cross_encoder(str(trained), device, dtype)
        st.max_length = a.llm_max_len
        counter.attach(st)
        systems["sentence-transformers CrossEncoder (batch 32)"] = lambda p: [
            float(x) for x in st.predict(p, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)]
    except Exception as exc:  # noqa: BLE001
        note(f"llm rerank: sentence-transformers CrossEncoder could not load the model: {type(exc).__name__}: {exc}")
    for f in a.forwards:
        rr = Reranker(str(trained), family="llm_seqcls", device=device, dtype=dname, forward=f, max_length=a.llm_max_len)
        counter.attach(rr.scorer)
        systems[f"ragr Reranker forward={f}"] = lambda p, rr=rr: [float(x) for x in rr.score(p)]
    secs, counts, _ = time_rerankers(systems, pairs, a.repeats, device, counter)
    counter.detach()
    res["rerank"] = {"pairs": len(pairs), "dtype": dname,
                     "systems": rerank_rows(systems, secs, counts, {}, len(pairs), n_params, peak, next(iter(systems)))}
    free(device)
    return res


# ---- 4. ddp / fsdp on one device -----------------------------------------------------------------------------
def bench_dist(a, device: str, peak: float, tmp: Path, partial=None) -> dict:
    model_dir, n_params = build_embedder(tmp / "embedder-dist", a.size, a.max_len)
    data, source = training_rows(a.samples, 1, tmp)
    precision = "bf16" if device.startswith("cuda") else "fp32"
    res = {"section": "dist", "model": f"BERT-{a.size} embedder", "batch": a.batch, "steps": a.dist_steps, "data": source,
           "how": "ragr train in a subprocess, one process; ms/step = batch / samples_per_s of the metrics windows "
                  "after the first", "systems": {}}
    for launcher in ("ddp", "fsdp"):
        run = tmp / f"dist-{launcher}"
        args = [sys.executable, "-m", "ragr", "train", "-q", f"model.name_or_path={model_dir}", f"data.train={data}",
                "data.eval=null", "data.num_negatives=1", f"trainer.batch_size={a.batch}", f"trainer.max_steps={a.dist_steps}",
                f"model.max_query_length={a.max_len}", f"model.max_doc_length={a.max_len}", f"trainer.precision={precision}",
                f"trainer.log_every={a.log_every}", "trainer.eval_before=false", "trainer.eval_after=false",
                f"launcher={launcher}", "launcher.num_processes=1", "launcher.timeout_s=240", f"output_dir={run}"]
        say(f"dist: {launcher}")
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=a.dist_timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            note(f"dist {launcher} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
            continue
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in x]
        rates = [r["samples_per_s"] for r in recs[1:]] or [r["samples_per_s"] for r in recs]
        sps = statistics.median(rates)
        res["systems"][f"ragr launcher={launcher} (1 process)"] = {
            "samples_per_s": sps, "step_ms": 1e3 * a.batch / sps, "windows": len(rates), "whole_run_seconds": total}
        if partial is not None:
            partial(res)
    return res


# ---- 5. ColBERT ----------------------------------------------------------------------------------------------------
def bench_colbert(a, device: str, peak: float, tmp: Path, partial=None) -> dict:
    model_dir, n_params = build_embedder(tmp / "embedder-colbert", a.size, a.max_len)
    data, source = training_rows(a.samples, 1, tmp)
    precision = "bf16" if device.startswith("cuda") else "fp32"
    res = {"section": "colbert", "model": f"ColBERT on BERT-{a.size} (dim 128, random projection)", "batch": a.batch,
           "max_length": a.max_len, "steps": a.colbert_steps, "data": source,
           "mfu_formula": "MFU = 6 * N_non_embedding * real_tokens_per_s / matmul rate", "systems": {}}
    common = ["model=colbert", f"model.name_or_path={model_dir}", f"data.train={data}", "data.num_negatives=1",
              f"trainer.batch_size={a.batch}", f"trainer.max_steps={a.colbert_steps}", "model.max_query_length=32",
              f"model.max_doc_length={a.max_len}", f"trainer.precision={precision}", f"trainer.log_every={a.log_every}"]
    runs = [(f"ragr forward={f}", lambda f=f: train_ragr(device, [*common, *forward_overrides(f, a.forward_tokens)], a.batch,
                                                         str(tmp / f"colbert-{f}"))) for f in a.forwards]
    run_systems(runs, res, n_params, peak, device, partial)
    return res


# ---- report ----------------------------------------------------------------------------------------------------------
def _gib(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def summary(out: dict) -> list[str]:
    """The issue's table: one row per measure, ragr's best strategy beside sentence-transformers."""
    lines = ["### Summary (ragr's fastest strategy vs sentence-transformers, same card, same run)\n",
             "| measure | ragr | sentence-transformers | ragr / ST |", "|---|---|---|---|"]

    def best(systems, key, prefix="ragr"):
        cands = {k: v for k, v in systems.items() if k.startswith(prefix)}
        return max(cands.items(), key=lambda kv: kv[1][key]) if cands else (None, None)

    t = out.get("train")
    if t and t["systems"]:
        name, r = best(t["systems"], "samples_per_s")
        st = t["systems"].get("sentence-transformers trainer")
        if r:
            x = lambda k: f"{r[k] / st[k]:.2f}x" if st and st.get(k) else "-"  # noqa: E731
            lines.append(f"| embedder training samples/s ({name}) | {r['samples_per_s']:,.0f} | "
                         f"{st['samples_per_s']:,.0f} | {x('samples_per_s')} |" if st else
                         f"| embedder training samples/s ({name}) | {r['samples_per_s']:,.0f} | - | - |")
            lines.append(f"| embedder training real tokens/s | {r['real_tokens_per_s']:,.0f} | "
                         f"{st['real_tokens_per_s'] if st else 0:,.0f} | {x('real_tokens_per_s')} |")
            lines.append(f"| embedder training ms/step | {r['step_ms']:.1f} | {st['step_ms'] if st else 0:.1f} | "
                         f"{(r['step_ms'] / st['step_ms']) if st else 0:.2f}x |")
            lines.append(f"| embedder training peak GiB | {_gib(r.get('peak_gib'))} | {_gib(st.get('peak_gib') if st else None)} | "
                         f"{_gib(r.get('peak_vs_st'))} |")
            lines.append(f"| embedder training MFU (vs measured matmul) | {r['mfu']:.1%} | {st['mfu'] if st else 0:.1%} | - |")
    rr = out.get("rerank")
    if rr and rr["systems"]:
        name, r = best(rr["systems"], "tokens_per_s")
        st = rr["systems"].get("sentence-transformers CrossEncoder (batch 32)")
        if r and st:
            lines.append(f"| cross-encoder rerank real tokens/s ({name}, {rr['dtype']}) | {r['tokens_per_s']:,.0f} | "
                         f"{st['tokens_per_s']:,.0f} | {r['tokens_per_s'] / st['tokens_per_s']:.2f}x |")
    llm = out.get("llm")
    if llm and llm["systems"]:
        name, r = min(((k, v) for k, v in llm["systems"].items()), key=lambda kv: kv[1]["step_ms"])
        lines.append(f"| LLM reranker + LoRA training ms/step ({name}) | {r['step_ms']:.1f} | (no LoRA reranker trainer) | - |")
        sysr = llm.get("rerank", {}).get("systems", {})
        name2, r2 = best(sysr, "pairs_per_s") if sysr else (None, None)
        st2 = sysr.get("sentence-transformers CrossEncoder (batch 32)") if sysr else None
        if r2:
            lines.append(f"| LLM reranker rerank pairs/s ({name2}) | {r2['pairs_per_s']:,.0f} | "
                         f"{st2['pairs_per_s'] if st2 else 0:,.0f} | {(r2['pairs_per_s'] / st2['pairs_per_s']) if st2 else 0:.2f}x |")
    d = out.get("dist")
    if d:
        for name, r in d["systems"].items():
            lines.append(f"| embedder training ms/step, {name} | {r['step_ms']:.1f} | - | - |")
    c = out.get("colbert")
    if c and c["systems"]:
        name, r = min(c["systems"].items(), key=lambda kv: kv[1]["step_ms"])
        lines.append(f"| ColBERT training ms/step ({name}) | {r['step_ms']:.1f} | (no ColBERT trainer) | - |")
        lines.append(f"| ColBERT training real tokens/s | {r['real_tokens_per_s']:,.0f} | - | - |")
    return lines


def train_table(t: dict, title: str) -> list[str]:
    lines = [f"### {title}: {t['model']}\nbatch {t.get('batch', t.get('batch_queries'))}, {t['steps']} steps, timed "
             f"after the first window; N = {t.get('non_embedding_params', 0) / 1e6:.1f}M; {t.get('mfu_formula', '')}; "
             f"data: {t['data']}\n",
             "| trainer | ms/step | samples/s | real tokens/s | computed slots/s | MFU | slot MFU | peak GiB | x ST |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in t["systems"].items():
        x = f"{s['x_st_samples_per_s']:.2f}x" if "x_st_samples_per_s" in s else "-"
        lines.append(f"| {name} | {s['step_ms']:.1f} | {s['samples_per_s']:,.1f} | {s['real_tokens_per_s']:,.0f} | "
                     f"{s['slot_tokens_per_s']:,.0f} | {s['mfu']:.1%} | {s['slot_mfu']:.1%} | {_gib(s.get('peak_gib'))} | {x} |")
    return lines


def rerank_table(r: dict, title: str) -> list[str]:
    lines = [f"### {title}\n{r['pairs']} pairs, {r['dtype']}, median of the timed passes after a warm-up\n",
             "| system | real tokens/s | pairs/s | x first | computed slots / real - 1 | MFU | max abs diff vs fp32 | top-10 = fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in r["systems"].items():
        diff = f"{s['max_abs_diff_vs_fp32']:.2e}" if "max_abs_diff_vs_fp32" in s else "-"
        top = f"{s['top10_identical_vs_fp32']:.1%}" if "top10_identical_vs_fp32" in s else "-"
        lines.append(f"| {name} | {s['tokens_per_s']:,.0f} | {s['pairs_per_s']:,.1f} | {s['x_st']:.2f}x | {s['padding']:+.1%} | "
                     f"{s['mfu']:.1%} | {diff} | {top} |")
    return lines


def report(out: dict) -> str:
    m, lines = out["matmul"], []
    lines.append(f"## {out['device_name']} ({out['device']}), torch {out['torch']}, transformers {out['transformers']}, "
                 f"sentence-transformers {out['sentence_transformers']}, {out['date']}\n")
    lines.append(f"Measured matmul: {m['n']}^3 {m['dtype']}, {m['warmups']} warm-ups, {m['timed']} timed: "
                 f"**{m['tflops']:.4g} TFLOP/s** (the MFU denominator)\n")
    lines += summary(out)
    lines.append("")
    if out.get("rerank"):
        lines += rerank_table(out["rerank"], f"Rerank: {out['rerank']['model']}; {out['rerank']['data']}")
    if out.get("train"):
        lines += [""] + train_table(out["train"], "Embedder training")
    if out.get("llm"):
        lines += [""] + train_table(out["llm"], "LLM reranker training")
        if out["llm"].get("rerank"):
            lines += [""] + rerank_table(out["llm"]["rerank"], "LLM reranker rerank (the trained, merged model)")
    if out.get("dist"):
        lines += ["", f"### ddp / fsdp on one device: {out['dist']['how']}\n", "| launcher | ms/step | samples/s |", "|---|---|---|"]
        lines += [f"| {k} | {v['step_ms']:.1f} | {v['samples_per_s']:,.1f} |" for k, v in out["dist"]["systems"].items()]
    if out.get("colbert"):
        lines += [""] + train_table(out["colbert"], "ColBERT training")
    if out["notes"]:
        lines.append("\nNotes:\n" + "\n".join(f"- {n}" for n in out["notes"]))
    lines.append(f"\n_total {out['total_seconds']:.0f} s_")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU run in a couple of minutes)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--size", choices=("base", "tiny"), default=None)
    ap.add_argument("--forwards", nargs="+", default=None, choices=("packed", "bucketed", "chunked", "auto"),
                    help="ragr forward strategies to run (default: packed bucketed chunked)")
    ap.add_argument("--forward-tokens", type=int, default=None, help="trainer.forward_tokens (default: ragr's)")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--ref-pairs", type=int, default=1000, help="pairs scored by the fp32 reference")
    ap.add_argument("--samples", type=int, default=None, help="training rows")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=None, help="steps per timing window")
    ap.add_argument("--llm-batch", type=int, default=None, help="LLM reranker: queries per step (groups of 4)")
    ap.add_argument("--llm-steps", type=int, default=None)
    ap.add_argument("--llm-log-every", type=int, default=None)
    ap.add_argument("--llm-max-len", type=int, default=None)
    ap.add_argument("--llm-pairs", type=int, default=None)
    ap.add_argument("--dist-steps", type=int, default=None)
    ap.add_argument("--dist-timeout", type=int, default=240)
    ap.add_argument("--colbert-steps", type=int, default=None)
    ap.add_argument("--matmul-n", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
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
    q = a.quick
    defaults = dict(size="tiny" if q else "base", forwards=["packed", "bucketed", "chunked"], pairs=100 if q else 4000,
                    repeats=1 if q else 2, samples=32 if q else 2048, batch=8 if q else 128, max_len=64 if q else 256,
                    steps=3 if q else 40, log_every=1 if q else 10, llm_batch=2 if q else 16, llm_steps=3 if q else 20,
                    llm_log_every=1 if q else 5, llm_max_len=96 if q else 256, llm_pairs=16 if q else 2000,
                    dist_steps=3 if q else 30, colbert_steps=3 if q else 30, matmul_n=512 if q else 8192)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    t_start = time.perf_counter()
    name = (torch.cuda.get_device_name() if device.startswith("cuda")
            else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    out = {"device": device, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "sentence_transformers": st_version, "date": time.strftime("%Y-%m-%d"),
           "python": platform.python_version(), "quick": q, "args": vars(a), "notes": NOTES}
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

    fns = {"rerank": bench_rerank, "train": bench_train, "llm": bench_llm, "dist": bench_dist, "colbert": bench_colbert}
    with tempfile.TemporaryDirectory(prefix="ragr-gpu-bench-") as tmp:
        for section in SECTIONS:
            if section in a.skip:
                continue
            t0 = time.perf_counter()

            def partial(res, section=section) -> None:
                out[section] = res
                dump()

            try:
                out[section] = fns[section](a, device, peak, Path(tmp), partial)
            except Exception as exc:  # keep the other sections' numbers
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
