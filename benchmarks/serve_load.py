"""Load check of `ragr serve`: requests/s, pairs (or texts)/s and p50/p99 latency, on loopback only.

Starts `ragr serve` in a subprocess on 127.0.0.1 (a free port), then, for each endpoint, sends the same
requests with 1 client at a time (no cross-request batching) and with --concurrency clients at once
(dynamic batching packs their pairs into shared forward passes). Requests are queries and documents from
the bundled demo dev set. Each phase stops after --requests requests or --max-seconds, whichever comes
first; nothing leaves the machine. Prints a markdown table for docs/BENCHMARKS.md; asserts nothing.

Usage: python benchmarks/serve_load.py [--model minilm] [--requests 200] [--concurrency 16] [--docs 10]
       [--max-seconds 60] [--max-batch-tokens 16384] [--batch-size 32] [--threads N] [--endpoints rerank,embeddings]
The default model is the bundled all-MiniLM-L6-v2 (an embedder: /v2/rerank scores by cosine, and it serves
/v1/embeddings); pass a cross-encoder folder to measure a reranker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_requests(n: int, docs: int) -> list[tuple[str, list[str]]]:
    import importlib.resources

    src = importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        pool = list(row["positive"]) + list(row["negative"])
        out.append((row["query"], [pool[(i + k) % len(pool)] for k in range(docs)]))
    return out


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ragr", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
           "--max-batch-tokens", str(args.max_batch_tokens), "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:  # keeps draining stderr so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline, seen = time.monotonic() + 300, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        hit = re.search(r"ragr serve: (http://127\.0\.0\.1:\d+)", line)
        if hit:
            return proc, hit.group(1)
    proc.kill()
    raise SystemExit("ragr serve did not start:\n" + "".join(seen))


def body_for(endpoint: str, model: str, query: str, docs: list[str]) -> tuple[str, dict]:
    if endpoint == "rerank":
        return "/v2/rerank", {"model": model, "query": query, "documents": docs}
    return "/v1/embeddings", {"model": model, "input": docs, "encoding_format": "base64"}


async def phase(url: str, endpoint: str, model: str, requests: list, concurrency: int, max_seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    items = 0
    errors = 0
    it = iter(requests)
    stop_at = time.perf_counter() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal items, errors
        for query, docs in it:
            if time.perf_counter() > stop_at:
                return
            path, body = body_for(endpoint, model, query, docs)
            t0 = time.perf_counter()
            res = await client.post(path, json=body)
            latencies.append(time.perf_counter() - t0)
            if res.status_code == 200:
                items += len(docs)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        path, body = body_for(endpoint, model, *requests[0])
        await client.post(path, json=body)  # warm-up, not timed
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] * 1000  # noqa: E731
    return {"endpoint": endpoint, "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "req_s": len(lat) / wall, "items_s": items / wall, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", help="what `ragr serve --model` gets (default: the bundled MiniLM)")
    ap.add_argument("--requests", type=int, default=200, help="requests per phase (at most)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients at once in the concurrent phase")
    ap.add_argument("--docs", type=int, default=10, help="documents (or inputs) per request")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap of each phase")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=None, help="ragr serve --batch-size (default: 32)")
    ap.add_argument("--threads", type=int, default=None, help="ragr serve --threads (default: torch's choice)")
    ap.add_argument("--endpoints", default="rerank,embeddings", help="comma-separated: rerank, embeddings")
    args, _ = ap.parse_known_args()  # benchmarks/run.py passes its own argv to every script

    import httpx

    proc, url = start_server(args)
    try:
        cards = httpx.get(f"{url}/v1/models").json()["data"]
        name = cards[0]["id"]
        endpoints = [e for e in args.endpoints.split(",") if e == "rerank" or "/v1/embeddings" in cards[0]["endpoints"]]
        requests = demo_requests(args.requests, args.docs)
        rows = []
        for endpoint in endpoints:
            for conc in (1, args.concurrency):
                rows.append(asyncio.run(phase(url, endpoint, name, requests, conc, args.max_seconds)))
        health = httpx.get(f"{url}/health").json()["models"][name]
    finally:
        proc.terminate()
        proc.wait(30)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n`ragr serve --model {args.model}` ({cards[0]['family']}), {args.docs} documents per request, "
          f"max-batch-tokens {args.max_batch_tokens}, batch-size {args.batch_size or 32}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; server threads {args.threads or 'default'}\n")
    print("| endpoint | clients | requests | req/s | docs/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['req_s']:.1f} | {r['items_s']:.0f} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    print(f"\nforward passes: {health['batches']} for {health['requests']} requests "
          f"(up to {health['max_requests_per_batch']} requests in one pass)")


if __name__ == "__main__":
    main()
