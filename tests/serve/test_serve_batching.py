"""Dynamic batching: concurrent requests share forward passes and get the scores of sequential ones
(and of ``Reranker.score``); a client that disconnects frees its work; the token budget holds."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")

WORDS = ("panda bamboo bear china forest river mountain city train model vector search query answer "
         "document paris france capital music river light night day").split()


def _requests(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        query = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
        docs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(rng.randint(1, 6))]
        out.append({"model": "ce", "query": query, "documents": docs})
    return out


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _by_index(res: dict) -> list[float]:
    return [r["relevance_score"] for r in sorted(res["results"], key=lambda r: r["index"])]


def test_64_concurrent_requests_match_sequential_and_reranker(server, model_dirs):
    from ragr.infer import Reranker

    bodies = _requests(64)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        sequential = [_by_index(client.post("/v2/rerank", json=b).json()) for b in bodies]

    queue = server.queue("ce")
    before = dict(queue.stats)

    async def fire() -> list[dict]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            tasks = [asyncio.ensure_future(client.post("/v2/rerank", json=b)) for b in bodies]
            deadline = time.monotonic() + 30
            while queue.pending < len(bodies):  # every request is queued behind the paused worker
                assert time.monotonic() < deadline, f"only {queue.pending} requests queued"
                await asyncio.sleep(0.01)
            queue.resume()
            return [(await t).json() for t in tasks]

    queue.pause()
    try:
        concurrent = [_by_index(r) for r in asyncio.run(fire())]
    finally:
        queue.resume()

    reference = Reranker(str(model_dirs["ce"]), device="cpu")
    for body, seq, conc in zip(bodies, sequential, concurrent):
        assert conc == pytest.approx(seq, abs=1e-5)
        expected = reference.score([(body["query"], d) for d in body["documents"]], normalize=True)
        assert conc == pytest.approx(expected, abs=1e-5)
    batches = queue.stats["batches"] - before["batches"]
    assert queue.stats["requests"] - before["requests"] == 64
    assert batches < 64 and queue.stats["max_requests_per_batch"] > 1


def test_disconnected_client_work_is_dropped(server):
    queue = server.queue("ce")
    before = dict(queue.stats)
    body = json.dumps({"model": "ce", "query": "q", "documents": ["a b c"] * 5}).encode()
    queue.pause()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait(lambda: queue.pending == 1)
        sock.close()
        _wait(lambda: queue.stats["cancelled"] == before["cancelled"] + 1)
        assert queue.pending == 0
    finally:
        queue.resume()
    res = httpx.post(f"{server.url}/v2/rerank", json={"model": "ce", "query": "q", "documents": ["x", "y"]})
    assert res.status_code == 200
    assert queue.stats["items"] - before["items"] == 2  # only the second request's pairs were scored


class _FakeScorer:
    tokenizer = None
    max_length = 512


class _FakeReranker:
    """Scores a pair by its document's length and records each forward pass."""

    scorer = _FakeScorer()

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def score(self, pairs):
        self.calls.append(list(pairs))
        return [float(len(d)) for _, d in pairs]


class _FakeModel:
    name = "fake"

    def __init__(self) -> None:
        self.reranker = _FakeReranker()


def _submit_together(queue, jobs: list[list[tuple[str, str]]]) -> list[list[float]]:
    """Submit every job while the queue is paused, then let it run: one scheduling decision sees them all."""
    from ragr.serve.batching import RERANK

    async def main():
        queue.pause()
        queue.start()
        tasks = [asyncio.ensure_future(queue.submit(RERANK, pairs, [len(d) for _, d in pairs])) for pairs in jobs]
        while queue.pending < len(jobs):
            await asyncio.sleep(0.005)
        queue.resume()
        return await asyncio.gather(*tasks)

    try:
        return asyncio.run(main())
    finally:
        queue.stop()


def test_token_budget_and_length_sorting():
    from ragr.serve.batching import BatchQueue

    model = _FakeModel()
    queue = BatchQueue(model, max_batch_tokens=100)
    jobs = [[("q", "d" * n) for n in (10, 50, 20)], [("q", "d" * n) for n in (40, 5)], [("q", "d" * 90)]]
    results = _submit_together(queue, jobs)
    assert results == [[10.0, 50.0, 20.0], [40.0, 5.0], [90.0]]  # every job gets its own results, in order
    for call in model.reranker.calls:
        costs = [len(d) for _, d in call]
        assert costs == sorted(costs, reverse=True)  # longest first
        assert len(costs) * costs[0] <= 100 or len(costs) == 1  # padded size within the budget
    # steps take items in arrival order up to 100 tokens: [10, 50, 20] | [40, 5] | [90]; a step's
    # forward passes hold len x longest <= 100: [50, 20] + [10]
    assert [[len(d) for _, d in c] for c in model.reranker.calls] == [[50, 20], [10], [40, 5], [90]]
    assert queue.stats["max_requests_per_batch"] == 1


def test_batch_size_caps_forward_passes_across_requests():
    from ragr.serve.batching import BatchQueue

    model = _FakeModel()
    queue = BatchQueue(model, max_batch_tokens=1000, batch_size=2)
    jobs = [[("q", "a" * 3)] * 2, [("q", "b" * 5)] * 2, [("q", "c" * 4)]]
    results = _submit_together(queue, jobs)
    assert results == [[3.0, 3.0], [5.0, 5.0], [4.0]]
    # one step (all 5 pairs fit 1000 tokens), sorted longest first, 2 pairs per forward pass
    assert [[len(d) for _, d in c] for c in model.reranker.calls] == [[5, 5], [4, 3], [3]]
    assert queue.stats["max_requests_per_batch"] == 2


def test_max_pending_refuses_at_once_and_frees_up():
    from ragr.serve.batching import RERANK, BatchQueue, QueueFull

    model = _FakeModel()
    queue = BatchQueue(model, max_pending=2)

    async def main():
        queue.pause()
        queue.start()
        held = [asyncio.ensure_future(queue.submit(RERANK, [("q", "d" * n)], [n])) for n in (1, 2)]
        while queue.pending < 2:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        with pytest.raises(QueueFull) as refused:
            await queue.submit(RERANK, [("q", "ddd")], [3])
        assert time.monotonic() - started < 1.0  # refused at once, not after the held jobs
        assert refused.value.retry_after >= 1 and refused.value.max_pending == 2
        assert "--max-queue 2" in str(refused.value)
        with pytest.raises(QueueFull):
            queue.check_capacity()
        queue.resume()
        first = await asyncio.gather(*held)
        queue.check_capacity()  # room again
        return first, await queue.submit(RERANK, [("q", "dddd")], [4])

    try:
        first, later = asyncio.run(main())
    finally:
        queue.stop()
    assert first == [[1.0], [2.0]] and later == [4.0]
    assert queue.stats["refused"] == 2 and queue.stats["requests"] == 3
    assert 1 <= queue.retry_after() <= BatchQueue.RETRY_MAX
