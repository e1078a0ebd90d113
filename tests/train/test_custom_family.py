"""A model family defined here, in a test module (a Family subclass + one registration line), trains,
evaluates and reranks through the public commands — nothing else in ragr is edited."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.families import Family, register_family
from ragr.infer.base import Scorer


class MaxPoolEmbedder(nn.Module, Scorer):
    """A bi-encoder that max-pools the token states (no ragr model does) and L2-normalizes."""

    family = "toy_maxpool"

    def __init__(self, backbone, tokenizer, max_query_length: int = 64, max_doc_length: int = 128) -> None:
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.max_length = max_doc_length

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_query_length: int = 64, max_doc_length: int = 128, pooling: str | None = None,
                        normalize: bool | None = None, dense_dim: int | None = None, query_prompt: str = "", doc_prompt: str = "",
                        dtype: torch.dtype | None = None, key: str = "model.name_or_path") -> MaxPoolEmbedder:
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoModel.from_pretrained(name_or_path), AutoTokenizer.from_pretrained(name_or_path),
                   max_query_length, max_doc_length)

    @classmethod
    def load(cls, path: str, *, device="cpu", dtype=None, max_length=None, **options) -> MaxPoolEmbedder:
        return cls.from_pretrained(path).to(device).eval()

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
        return F.normalize(hidden.amax(1), dim=-1)

    @torch.no_grad()
    def encode(self, texts, is_query: bool) -> torch.Tensor:
        n = self.max_query_length if is_query else self.max_doc_length
        feats = self.tokenizer(list(texts), padding=True, truncation=True, max_length=n, return_tensors="pt")
        return self(feats["input_ids"], feats["attention_mask"])

    def score_pairs(self, queries, docs) -> list[float]:
        was = self.training
        self.eval()
        out = (self.encode(queries, True) * self.encode(docs, False)).sum(-1).tolist()
        self.train(was)
        return out

    def normalize(self, score: float) -> float:
        return (score + 1) / 2

    def save(self, path) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "ragr.json").write_text(json.dumps({"family": self.family}))


class MaxPoolFamily(Family):
    """toy: max-pooled bi-encoder"""

    name = "toy_maxpool"
    model_class = MaxPoolEmbedder
    produces = ("vectors", "pair_scores")
    natural_temperature = 0.05

    def encode(self, fwd, texts, is_query):
        m = fwd.model
        enc = m.tokenizer(list(texts), truncation=True, max_length=m.max_query_length if is_query else m.max_doc_length)
        ids = enc["input_ids"]

        def make_chunk(idx):
            p = m.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            return {"input_ids": p["input_ids"], "attention_mask": p["attention_mask"]}

        return fwd.run([len(x) for x in ids], make_chunk)

    def pair_similarity(self, model, q, d, rep):
        return (q[rep] * d).sum(-1)


@pytest.fixture(scope="module")
def toy_family():
    from ragr.registry import families

    fam = register_family(MaxPoolFamily)  # the one registration line
    yield fam
    families.unregister("toy_maxpool")
    from ragr.families import base

    base._LOCAL.pop("toy_maxpool", None)


def reference_scores(path: str, pairs) -> list[float]:
    """Independent: transformers' AutoModel, max over real tokens, cosine — computed pair by pair."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for q, d in pairs:
            vq = model(**tok(q, return_tensors="pt")).last_hidden_state[0].max(0).values
            vd = model(**tok(d, return_tensors="pt")).last_hidden_state[0].max(0).values
            out.append(float(F.cosine_similarity(vq, vd, dim=0)))
    return out


def test_a_family_defined_in_a_test_trains_evaluates_and_reranks(toy_family, tiny_bert_nodropout, data_dir, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--quiet", "model.family=toy_maxpool", f"model.name_or_path={tiny_bert_nodropout}",
                              f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}",
                              "trainer.max_steps=3", "trainer.batch_size=4", "trainer.chunk_size=3", "trainer.lr=1e-3",
                              "trainer.log_every=1", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 3 and all(np.isfinite(losses))
    before = load_file_state(tiny_bert_nodropout)
    after = load_file_state(run / "model")
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4  # it trained

    # training-time evaluation went through the family's scorer: the after metrics match a hand computation
    dev = [json.loads(x) for x in (data_dir / "dev.jsonl").read_text().splitlines()]
    mrr = []
    for r in dev:
        cands = r["positive"] + r["negative"]
        s = reference_scores(str(run / "model"), [(r["query"], c) for c in cands])
        rank = 1 + sum(x > s[0] for x in s[1:])
        mrr.append(1.0 / rank if rank <= 10 else 0.0)
    evals = json.loads((run / "eval.json").read_text())
    assert evals["after"]["mrr@10"] == pytest.approx(float(np.mean(mrr)), abs=1e-6)

    # ragr eval reads the family from ragr.json and gives the same numbers
    res = runner.invoke(app, ["eval", "--quiet", f"model.name_or_path={run / 'model'}", f"data.eval={data_dir / 'dev.jsonl'}",
                              f"output_dir={tmp_path / 'eval'}"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["family"] == "toy_maxpool"
    assert report["metrics"]["mrr@10"] == pytest.approx(evals["after"]["mrr@10"], abs=1e-6)

    # ragr rerank detects it too, and its scores are the reference ones
    pairs = [("how far is the moon?", "The moon is about 384,400 kilometres away."), ("how far is the moon?", "Eggs boil.")]
    text = "".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in pairs)
    res = runner.invoke(app, ["rerank", "--model", str(run / "model"), "--quiet"], input=text)
    assert res.exit_code == 0, res.output
    got = [json.loads(x)["score"] for x in res.stdout.splitlines()]
    np.testing.assert_allclose(got, reference_scores(str(run / "model"), pairs), atol=1e-5)


def load_file_state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in state.items()}
