"""``ragr serve`` on the command line: model specs, exit-2 errors, and a real server process."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.serve.models import parse_model_spec

runner = CliRunner()


def test_parse_model_spec(tmp_path):
    folder = tmp_path / "my-reranker"
    folder.mkdir()
    assert parse_model_spec(str(folder)) == ("my-reranker", str(folder))
    assert parse_model_spec(f"rr={folder}") == ("rr", str(folder))
    assert parse_model_spec("BAAI/bge-reranker-base") == ("BAAI/bge-reranker-base", "BAAI/bge-reranker-base")
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_model_spec(str(odd)) == ("a=b", str(odd))  # an existing path with '=' is a path


@pytest.mark.parametrize("args, needle", [
    (["--model", "/no/such/model"], "no such model directory"),
    (["--model", "a=/x", "--model", "a=/y"], "two models are named 'a'"),
    (["--model", "=/x"], "NAME=PATH"),
    (["--model", "x", "--long-doc", "sliding"], "--long-doc"),
    (["--model", "x", "--log-level", "loud"], "--log-level"),
])
def test_user_errors_exit_2(args, needle):
    res = runner.invoke(app, ["serve", *args, "--port", "0"])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_help_documents_the_queue_bound():
    res = runner.invoke(app, ["serve", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "--max-queue" in res.output and "503" in res.output


def test_max_queue_default_is_bounded():
    from ragr.serve.limits import ServeSettings

    assert ServeSettings().max_queue == 256


def test_port_in_use_exits_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        res = runner.invoke(app, ["serve", "--model", "x", "--port", str(taken.getsockname()[1])])
    assert res.exit_code == 2 and "pick another --port" in res.output


def test_missing_serve_extra_exits_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    res = runner.invoke(app, ["serve", "--model", "x"])
    assert res.exit_code == 2
    assert "'serve' extra" in res.output and "pip install fastapi uvicorn" in res.output


def test_cli_wires_models_settings_and_loopback(model_dirs, monkeypatch):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")

    seen = {}

    def fake_run(self, sockets=None):
        seen.update(app=self.config.app, address=sockets[0].getsockname())

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    res = runner.invoke(app, ["serve", "--model", f"rr={model_dirs['ce']}", "--model", str(model_dirs["emb"]),
                              "--port", "0", "--api-key", "k", "--max-documents", "7", "--max-queue", "5", "--long-doc", "max-chunk",
                              "--threads", "3"])
    assert res.exit_code == 0, res.output
    assert seen["threads"] == 3
    assert seen["address"][0] == "127.0.0.1"  # loopback unless told otherwise
    state = seen["app"].state
    assert list(state.models) == ["rr", "emb"]
    assert state.models["rr"].family == "cross_encoder" and state.models["rr"].long_doc == "max-chunk"
    assert state.models["emb"].can_embed and not state.models["rr"].can_embed
    assert state.settings.api_key == "k" and state.settings.max_documents == 7
    assert state.settings.max_queue == 5 and state.queues["rr"].max_pending == 5
    assert f"http://127.0.0.1:{seen['address'][1]}" in res.output


def _read_url(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:  # keeps draining stderr so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        hit = re.search(r"ragr serve: (http://\S+)", line)
        if hit:
            return hit.group(1)
    raise AssertionError("server did not start:\n" + "".join(seen))


@pytest.mark.slow
def test_serve_process_answers_cohere_client(model_dirs):
    cohere = pytest.importorskip("cohere")
    httpx = pytest.importorskip("httpx")

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ragr", "serve", "--model", f"rr={model_dirs['ce']}", "--port", "0",
           "--api-key", "k", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        url = _read_url(proc)
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        res = cohere.ClientV2(api_key="k", base_url=url).rerank(model="rr", query="q", documents=["a", "b c"])
        assert sorted(r.index for r in res.results) == [0, 1]
        assert httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": ["a"]}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(20)
