"""``ragr serve`` under abuse and overload: an oversized body gets a clean 413 (no connection reset), a
full queue refuses at once with 503 and Retry-After while every accepted request is answered right,
and an internal error answers a generic 500 that leaks nothing (the server log has the details)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

NINE_MB = json.dumps({"model": "ce", "query": "q", "documents": ["x" * 1000] * 9000}).encode()  # ~9.04 MB


def _raw_post(port: int, head: bytes, payload: bytes) -> dict:
    """Send ``head + payload`` from a thread while reading the answer, as a plain socket client does;
    what was read, and how the connection ended."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)
    out: dict = {"send_error": None, "recv_error": None}

    def send() -> None:
        try:
            sock.sendall(head + payload)
        except OSError as exc:
            out["send_error"] = repr(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        out["recv_error"] = repr(exc)
    sender.join(20)
    sock.close()
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    out["status"] = int(lines[0].split()[1]) if lines[0] else None
    out["headers"] = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    out["body"] = body
    return out


def _assert_413_json(res: dict) -> None:
    assert res["status"] == 413, res
    assert res["headers"]["content-type"] == "application/json"
    err = json.loads(res["body"])
    assert "--max-request-bytes" in err["message"] and err["error"]["message"] == err["message"]
    assert err["error"]["type"] == "request_too_large" and err["error"]["code"] == "max_request_bytes"


# ---- 413 -------------------------------------------------------------------------------------------------
def test_9mb_body_is_413_json_with_clients(server):
    assert len(NINE_MB) > 8 * 1024 * 1024
    res = httpx.post(f"{server.url}/v2/rerank", content=NINE_MB, headers={"content-type": "application/json"})
    assert res.status_code == 413
    assert "--max-request-bytes" in res.json()["message"]
    chunked = httpx.post(f"{server.url}/v2/rerank", headers={"content-type": "application/json"},
                         content=iter([NINE_MB[i:i + 65536] for i in range(0, len(NINE_MB), 65536)]))
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "max_request_bytes"
    assert httpx.post(f"{server.url}/v2/rerank", json={"model": "ce", "query": "q", "documents": ["a"]}).status_code == 200


def test_9mb_body_by_content_length_gets_413_then_a_clean_close(server):
    head = (b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(NINE_MB))
    res = _raw_post(server.port, head, NINE_MB)
    _assert_413_json(res)
    assert res["send_error"] is None and res["recv_error"] is None  # the whole body was taken, then a FIN, no reset


def test_9mb_chunked_body_gets_413_then_a_clean_close(server):
    head = (b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    step = 65536
    payload = b"".join(b"%x\r\n%s\r\n" % (len(NINE_MB[i:i + step]), NINE_MB[i:i + step])
                       for i in range(0, len(NINE_MB), step)) + b"0\r\n\r\n"
    res = _raw_post(server.port, head, payload)
    _assert_413_json(res)
    assert res["send_error"] is None and res["recv_error"] is None


def test_expect_100_continue_is_refused_before_the_body(server):
    head = (b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(NINE_MB))
    res = _raw_post(server.port, head, b"")  # a client that waits for "100 Continue" sends nothing more
    _assert_413_json(res)
    assert res["recv_error"] is None


# ---- 503 on a full queue -----------------------------------------------------------------------------------
QUERY = "what does a panda eat?"


def _bodies(n: int) -> list[dict]:
    words = "panda bamboo bear china forest river mountain city train vector search".split()
    return [{"model": "ce", "query": f"{QUERY} {words[i % len(words)]}",
             "documents": [" ".join(words[(i + k) % len(words)] for k in range(j + 2)) for j in range(3)]}
            for i in range(n)]


def _by_index(res: dict) -> list[float]:
    return [r["relevance_score"] for r in sorted(res["results"], key=lambda r: r["index"])]


@pytest.fixture(scope="module")
def reference(model_dirs):
    from ragr.infer import Reranker

    ref = Reranker(str(model_dirs["ce"]), device="cpu")
    return lambda body: ref.score([(body["query"], d) for d in body["documents"]], normalize=True)


def _fresh_model(model_dirs, slow: float = 0.0, fail: str | None = None):
    """The tiny cross-encoder, loaded anew; its scorer sleeps ``slow`` s per forward pass, or raises."""
    from ragr.serve import load_model

    model = load_model("ce", str(model_dirs["ce"]))
    score = model.reranker.score

    def patched(pairs, *args, **kwargs):
        if fail == "scorer":
            raise RuntimeError("secret internal detail /srv/models/ce")
        time.sleep(slow)
        return score(pairs, *args, **kwargs)

    model.reranker.score = patched
    return model


def _check_overload(results, bodies, reference) -> tuple[int, int]:
    accepted = refused = 0
    for body, res in zip(bodies, results):
        assert res.status_code in (200, 503), (res.status_code, res.text)  # no other 5xx
        if res.status_code == 503:
            refused += 1
            assert int(res.headers["retry-after"]) >= 1
            err = res.json()
            assert err["error"]["code"] == "queue_full" and "--max-queue 2" in err["message"]
            assert err["error"]["type"] == "service_unavailable"
        else:
            accepted += 1
            assert _by_index(res.json()) == pytest.approx(reference(body), abs=1e-5)
    return accepted, refused


def test_full_queue_refuses_with_503_and_answers_the_accepted(model_dirs, live_server, reference):
    """Deterministic: the worker is held, 8 requests arrive, 2 fit the queue; the 6 others are refused
    at once; released, the 2 are answered with the scores of Reranker.score."""
    from ragr.serve import ServeSettings, create_app

    live = live_server(create_app([_fresh_model(model_dirs)], ServeSettings(max_queue=2)))
    queue = live.queue("ce")
    bodies = _bodies(8)

    async def fire():
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=httpx.Limits(max_connections=20)) as client:
            tasks = [asyncio.ensure_future(client.post("/v2/rerank", json=b)) for b in bodies]
            deadline = time.monotonic() + 20
            while sum(t.done() for t in tasks) < 6 or queue.pending < 2:  # refusals come back while held
                assert time.monotonic() < deadline, f"{sum(t.done() for t in tasks)} answered, {queue.pending} queued"
                await asyncio.sleep(0.01)
            assert all(t.result().status_code == 503 for t in tasks if t.done())
            queue.resume()
            return [await t for t in tasks]

    queue.pause()
    try:
        results = asyncio.run(fire())
    finally:
        queue.resume()
    assert _check_overload(results, bodies, reference) == (2, 6)
    health = httpx.get(f"{live.url}/health").json()["models"]["ce"]
    assert health["refused"] == 6 and health["max_queue"] == 2 and health["pending"] == 0


def test_overload_with_a_slow_worker(model_dirs, live_server, reference):
    """24 concurrent requests at a slow worker (one pair per forward pass, 50 ms each) and --max-queue 2:
    some 503s with Retry-After, no other 5xx, and every accepted request scored right."""
    from ragr.serve import ServeSettings, create_app

    settings = ServeSettings(max_queue=2, max_batch_tokens=1)
    live = live_server(create_app([_fresh_model(model_dirs, slow=0.05)], settings))
    bodies = _bodies(24)

    async def fire():
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=httpx.Limits(max_connections=30)) as client:
            return await asyncio.gather(*(client.post("/v2/rerank", json=b) for b in bodies))

    accepted, refused = _check_overload(asyncio.run(fire()), bodies, reference)
    assert refused >= 1 and accepted >= 2 and accepted + refused == 24
    assert httpx.get(f"{live.url}/health").json()["models"]["ce"]["refused"] == refused


# ---- 500 leaks nothing -------------------------------------------------------------------------------------
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("where", ["scorer", "tokenizer"])
def test_internal_error_is_a_generic_500_logged_server_side(model_dirs, live_server, monkeypatch, where):
    from ragr.serve import create_app

    model = _fresh_model(model_dirs, fail="scorer" if where == "scorer" else None)
    if where == "tokenizer":  # fails in the request's own path (a thread of the pool), not in the worker
        def broken(texts):
            raise RuntimeError("secret internal detail /srv/models/ce")

        monkeypatch.setattr(model, "count_tokens", broken)
    live = live_server(create_app([model]))
    capture = _Capture()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(capture)
    try:
        res = httpx.post(f"{live.url}/v2/rerank", json={"model": "ce", "query": "q", "documents": ["a", "b"]})
    finally:
        logger.removeHandler(capture)
    assert res.status_code == 500
    for needle in ("secret", "/srv/models", "RuntimeError", "Traceback"):
        assert needle not in res.text
    err = res.json()
    request_id = res.headers["x-request-id"]
    assert err["error"]["type"] == "server_error" and err["error"]["code"] == "internal_error"
    assert request_id in err["message"] and err["error"]["message"] == err["message"]
    logged = [r for r in capture.records if request_id in r.getMessage()]
    assert len(logged) == 1 and "secret internal detail" in logged[0].getMessage() and logged[0].exc_info
    assert httpx.get(f"{live.url}/health").status_code == 200  # the server (and its worker) carry on
