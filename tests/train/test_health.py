"""Training health (ragr.train.health): a NaN/inf stops the run with the last good checkpoint kept, a collapsed
model is reported with its step, a run that made the model worse on dev says so, and `ragr eval --compare` puts two
models side by side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.config import compose_config
from ragr.launch.local import run_local
from ragr.train import health
from ragr.train.job import TrainingJob

runner = CliRunner()


def train(overrides):
    return run_local(compose_config("train", overrides), quiet=True)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line(text: str) -> str:
    """Rich wraps long lines at the terminal width: join them back."""
    return re.sub(r"\s+", " ", text)


# ---- the diagnostics, against numpy ---------------------------------------------------------------------------
def test_score_spread_matches_numpy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 4)) * 3
    mask = np.ones_like(scores, dtype=bool)
    mask[1, 2:] = False  # a group of two
    mask[3, 1:] = False  # a group of one: left out of the mean
    got = health.score_diagnostics(torch.tensor(scores), torch.tensor(mask))[health.SCORE_SPREAD]
    stds = [scores[i][mask[i]].std() for i in range(5) if mask[i].sum() >= 2]
    scale = max(1.0, np.abs(scores[mask]).mean())
    assert float(got) == pytest.approx(np.mean(stds) / scale, rel=1e-5)
    assert health.group_spread([list(scores[i][mask[i]]) for i in range(5)]) == pytest.approx(np.mean(stds) / scale)
    # constant scores: zero spread, reported as a collapse; one candidate per query: nothing to measure
    flat = health.score_diagnostics(torch.full((3, 4), 2.5))[health.SCORE_SPREAD]
    assert float(flat) == 0.0 and health.collapse_signal({health.SCORE_SPREAD: float(flat)})[0] == "score_spread"
    assert health.score_diagnostics(torch.ones(3, 1)) == {}
    assert health.collapse_signal({health.SCORE_SPREAD: float(got)}) is None


def test_embedding_cosine_matches_numpy():
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(3, 8)), rng.normal(size=(6, 8))
    got = float(health.vector_diagnostics(torch.tensor(q), torch.tensor(d))[health.EMBEDDING_COSINE])
    v = np.concatenate([q, d])
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = u @ u.T
    assert got == pytest.approx(sim[~np.eye(len(v), dtype=bool)].mean(), abs=1e-6)
    same = torch.tensor(rng.normal(size=(1, 8))).repeat(5, 1) * torch.arange(1, 6.0)[:, None]  # one direction
    cos = float(health.vector_diagnostics(same)[health.EMBEDDING_COSINE])
    assert cos == pytest.approx(1.0, abs=1e-6) and health.collapse_signal({health.EMBEDDING_COSINE: cos})
    assert health.collapse_signal({health.EMBEDDING_COSINE: got}) is None


# ---- a NaN or inf stops the run; the last good checkpoint is kept and resumed ------------------------------
def nan_at(monkeypatch, step: int, where: str = "loss"):
    """From the ``step``-th compute_loss call (= optimizer step with grad_accum=1): a NaN loss, or a finite loss
    whose gradients are NaN."""
    original = TrainingJob.compute_loss
    calls = {"n": 0}

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    def compute_loss(self, fwd, loss_fn, batch):
        calls["n"] += 1
        out = original(self, fwd, loss_fn, batch)
        if calls["n"] == step:
            out = {**out, "loss": out["loss"] * float("nan") if where == "loss" else NanGrad.apply(out["loss"])}
        return out

    monkeypatch.setattr(TrainingJob, "compute_loss", compute_loss)


def test_nan_loss_stops_the_run_and_the_last_checkpoint_resumes(tiny_bert, data_dir, tmp_path, monkeypatch):
    common = [f"model.name_or_path={tiny_bert}", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
              "trainer.max_steps=4", "trainer.batch_size=4", "trainer.save_every=1", "trainer.save_total_limit=10",
              "trainer.log_every=1", "model.max_doc_length=32", "model.max_query_length=16"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(common + [f"output_dir={full}"])

    with monkeypatch.context() as m:
        nan_at(m, 3)
        res = runner.invoke(app, ["train", "--quiet", *common, f"output_dir={broken}"])
    assert res.exit_code == 2, res.output
    msg = one_line(res.output)
    assert "training stopped at step 3: the loss is not finite (term 'loss' = nan)" in msg
    assert f"{broken / 'checkpoints' / 'step-2'} (step 2), is intact" in msg
    assert "trainer.resume=auto" in msg and "trainer.lr=5e-05: try 5e-06" in msg
    assert "Traceback" not in res.output
    # the failing step was not saved, model/ was not written, and step 2 is the uninterrupted run's step 2
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert not (broken / "model").exists()
    good, ref = (load_file(str(r / "checkpoints" / "step-2" / "model.safetensors")) for r in (broken, full))
    assert good.keys() == ref.keys() and all(torch.equal(good[k], ref[k]) for k in ref)
    assert [r["event"] for r in records(broken) if r.get("event")] == ["nonfinite"]

    # resume=auto continues from step 2 and reaches the weights of the run that never broke
    result = train(common + [f"output_dir={broken}", "trainer.resume=auto"])
    assert result["steps"] == 4
    manifest = json.loads((broken / "manifest.json").read_text())
    assert manifest["resumed_from"] == str(broken / "checkpoints" / "step-2")
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(broken / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert [r["step"] for r in records(broken) if "loss" in r] == [1, 2, 3, 4]  # the stopped step's event is gone


def test_nan_gradients_stop_the_run_when_clipping(tiny_overrides, tmp_path, monkeypatch):
    nan_at(monkeypatch, 1, where="grad")
    res = runner.invoke(app, ["train", "--quiet", *tiny_overrides, "data.eval=null"])
    assert res.exit_code == 2, res.output
    msg = one_line(res.output)
    assert "training stopped at step 1: the gradient norm is nan" in msg
    assert "no checkpoint was saved before it (trainer.save_every=0" in msg
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "checkpoints").exists()


# ---- collapse ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collapsed_bert(tmp_path_factory, tiny_bert_nodropout) -> str:
    """The tiny BERT with every LayerNorm's weight 0 and bias 1: every token of every text gets the same state.
    (No dropout: in training mode the classifier's dropout would vary a cross-encoder's constant scores.)"""
    from transformers import AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("collapsed-bert")
    model = BertModel.from_pretrained(tiny_bert_nodropout)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.zero_()
                mod.bias.fill_(1.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_bert_nodropout).save_pretrained(path)
    return str(path)


def test_collapsed_reranker_is_reported_with_the_step(collapsed_bert, tiny_overrides, tmp_path):
    # training-time signal first (no eval before): scores of a query's candidates are all the same
    over = [o for o in tiny_overrides if not o.startswith(("model.max_doc_length", "model.max_query_length"))]
    over += [f"model.name_or_path={collapsed_bert}", "task=reranker", "model.max_length=48", "data.num_negatives=3",
             "trainer.lr=1e-9", "trainer.eval_before=false"]
    res = runner.invoke(app, ["train", *over])
    assert res.exit_code == 0, res.output
    out = one_line(res.output)
    assert "warning: scores collapsed at step 1: per-query score spread" in out
    assert "still collapsed at the last check, step 2" in out
    run = tmp_path / "run"
    events = [r for r in records(run) if r.get("event") == "collapse"]
    assert [(e["step"], e["signal"], e["source"]) for e in events] == [(1, "score_spread", "train")]
    assert events[0]["value"] <= health.SPREAD_TOL
    logged = [r[health.SCORE_SPREAD] for r in records(run) if health.SCORE_SPREAD in r]
    assert len(logged) == 2 and max(logged) <= health.SPREAD_TOL
    ev = json.loads((run / "eval.json").read_text())
    assert ev["warnings"][0].startswith("scores collapsed at step 1") and ev["after"]["score_spread"] <= health.SPREAD_TOL


def test_collapsed_embedder_is_reported_and_a_healthy_one_is_not(collapsed_bert, tiny_bert, tiny_overrides, tmp_path):
    res = train(tiny_overrides + [f"model.name_or_path={collapsed_bert}", "trainer.lr=1e-9"])
    warnings = res["health"]["warnings"]
    assert warnings[0].startswith("scores collapsed at step 0: per-query score spread") and "on dev (before)" in warnings[0]
    assert warnings[1].startswith("embeddings collapsed at step 1: mean pairwise cosine 1.000000")
    signals = [(r["step"], r["signal"], r["source"]) for r in records(tmp_path / "run") if r.get("event") == "collapse"]
    assert signals == [(0, "score_spread", "eval_before"), (1, "embedding_cosine", "train")]

    # the healthy tiny model: no warning, and the dev spread is the std of its own scores (transformers, numpy)
    healthy = tmp_path / "healthy"
    res = train(tiny_overrides + [f"model.name_or_path={tiny_bert}", f"output_dir={healthy}", "trainer.lr=1e-3"])
    assert res["health"]["warnings"] == [] and res["health"]["collapse"] is None
    assert min(r[health.EMBEDDING_COSINE] for r in records(healthy) if health.EMBEDDING_COSINE in r) < 0.999
    after = json.loads((healthy / "eval.json").read_text())["after"]
    assert after["score_spread"] == pytest.approx(reference_spread(healthy / "model", tiny_overrides), rel=1e-4)


def reference_spread(model_dir: Path, overrides: list[str]) -> float:
    """Mean-pooled, normalized embeddings with plain transformers; per-query std of the cosines / max(1, mean |s|)."""
    from transformers import AutoModel, AutoTokenizer

    dev = next(o.split("=", 1)[1] for o in overrides if o.startswith("data.eval="))
    qlen = int(next(o.split("=", 1)[1] for o in overrides if o.startswith("model.max_query_length=")))
    dlen = int(next(o.split("=", 1)[1] for o in overrides if o.startswith("model.max_doc_length=")))
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()

    def embed(text, n):
        enc = tok(text, truncation=True, max_length=n, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        v = h.mean(0)
        return (v / v.norm()).numpy()

    stds, total, count = [], 0.0, 0
    for line in Path(dev).read_text().splitlines():
        r = json.loads(line)
        q = embed(r["query"], qlen)
        s = np.array([q @ embed(c, dlen) for c in r["positive"] + r["negative"]])
        stds.append(s.std())
        total, count = total + np.abs(s).sum(), count + len(s)
    return float(np.mean(stds)) / max(1.0, total / count)


# ---- the verdict: a run that made the model worse on dev says so ----------------------------------------------
def scripted_eval(monkeypatch, values: list[float]):
    seen = []

    def fake_evaluate(self, model, rows, progress=None):
        v = values[len(seen)]
        seen.append(v)
        return {"map": v - 0.1, "mrr@10": v + 0.05, "ndcg@10": v, "num_queries": len(rows["eval"]), "num_skipped": 0}

    monkeypatch.setattr(TrainingJob, "evaluate", fake_evaluate)
    return seen


def test_worse_after_training_is_said_in_plain_words(tiny_overrides, tmp_path, monkeypatch):
    scripted_eval(monkeypatch, [0.817, 0.216])
    res = runner.invoke(app, ["train", *tiny_overrides])
    assert res.exit_code == 0, res.output
    out = one_line(res.output)
    assert ("nDCG@10 fell from 0.817 to 0.216 (-0.601): training made the model worse on dev (also MAP 0.717 -> "
            "0.116, MRR@10 0.867 -> 0.266). model/ holds the last step (2)") in out
    assert "trainer.eval_every=N keeps the best dev checkpoint in best/" in out
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    v = ev["verdict"]
    assert (v["status"], v["metric"], v["use"]) == ("worse", "ndcg@10", "model/")
    assert v["change"] == pytest.approx(0.216 - 0.817)
    assert [r["status"] for r in records(tmp_path / "run") if r.get("event") == "verdict"] == ["worse"]


def test_worse_with_eval_every_names_best(tiny_overrides, tmp_path, monkeypatch):
    scripted_eval(monkeypatch, [0.30, 0.60, 0.20])  # before (step 0), step 2, after (step 4)
    res = train(tiny_overrides + ["trainer.max_steps=4", "trainer.eval_every=2"])
    v = res["health"]["verdict"]
    assert v["status"] == "worse" and v["use"] == "best/"
    assert f"best/ (step 2, nDCG@10 0.600) is the one to use: {tmp_path / 'run' / 'best'}" in v["message"]
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 2

    scripted_eval(monkeypatch, [0.50, 0.40, 0.45])  # the model before training was the best
    res = train(tiny_overrides + ["trainer.max_steps=4", "trainer.eval_every=2", f"output_dir={tmp_path / 'b'}"])
    assert "best/ (step 0, the model before training, nDCG@10 0.500) is the one to use" in res["health"]["verdict"]["message"]

    scripted_eval(monkeypatch, [0.50, 0.55, 0.70])  # better: no advice, model/ is the one
    res = train(tiny_overrides + ["trainer.max_steps=4", "trainer.eval_every=2", f"output_dir={tmp_path / 'c'}"])
    v = res["health"]["verdict"]
    assert (v["status"], v["use"], v["message"]) == ("better", "model/", "nDCG@10 rose from 0.500 to 0.700 (+0.200) on dev")


# ---- ragr eval --compare base tuned ---------------------------------------------------------------------------
def test_compare_two_models_on_the_same_dev_data(tiny_bert, data_dir, tmp_path):
    from transformers import AutoTokenizer, BertModel

    other = str(tmp_path / "other-bert")  # the tiny BERT, perturbed: another model on the same vocabulary
    model = BertModel.from_pretrained(tiny_bert)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(other)
    dev = data_dir / "dev.jsonl"
    separate = {}
    for name, model in (("base", tiny_bert), ("other", other)):
        res = runner.invoke(app, ["eval", "--quiet", f"model.name_or_path={model}", f"data.eval={dev}",
                                  f"output_dir={tmp_path / name}"])
        assert res.exit_code == 0, res.output
        separate[name] = json.loads((tmp_path / name / "eval.json").read_text())["metrics"]
    res = runner.invoke(app, ["eval", "--compare", tiny_bert, other, f"data.eval={dev}", "--output", str(tmp_path / "cmp"),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "map", "mrr@10", "ndcg@10"]
    rows = {cells[0]: cells[1:] for cells in ([c.strip().strip("*") for c in l.strip("|").split("|")] for l in lines[2:])}
    assert list(rows) == [Path(tiny_bert).name, Path(other).name, "change"]
    for label, name in ((Path(tiny_bert).name, "base"), (Path(other).name, "other")):
        assert rows[label] == [f"{separate[name][m]:.4f}" for m in ("map", "mrr@10", "ndcg@10")]
    assert rows["change"] == [f"{separate['other'][m] - separate['base'][m]:+.4f}" for m in ("map", "mrr@10", "ndcg@10")]
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [e["source"] for e in doc["entries"]] == [tiny_bert, other]
    for m in ("map", "mrr@10", "ndcg@10"):
        assert doc["entries"][0]["results"]["dev.jsonl"][m] == pytest.approx(separate["base"][m], abs=1e-9)
        assert doc["change"]["dev.jsonl"][m] == pytest.approx(separate["other"][m] - separate["base"][m], abs=1e-9)

    # a model beside a stored report, on the same columns; a path that is neither says what is missing
    res = runner.invoke(app, ["eval", "--compare", str(tmp_path / "base"), other, f"data.eval={dev}", "--output",
                              str(tmp_path / "cmp2"), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [l.split("|")[1].strip() for l in res.stdout.splitlines()[2:]]
    assert rows == ["base", Path(other).name, "change"]
    res = runner.invoke(app, ["eval", "--compare", str(tmp_path / "missing"), "--output", str(tmp_path / "cmp3")])
    assert res.exit_code == 2 and "no eval.json" in res.output


# ---- two ranks: a NaN on one rank stops both (no rank left waiting in the next collective) ----------------------
SITECUSTOMIZE = '''
import os
if os.environ.get("RANK") == "1":  # a training rank of the ddp launcher: rank 1 alone gets a NaN loss at step 2
    from ragr.train.job import TrainingJob
    _original, _calls = TrainingJob.compute_loss, [0]

    def compute_loss(self, fwd, loss_fn, batch):
        _calls[0] += 1
        out = _original(self, fwd, loss_fn, batch)
        return {**out, "loss": out["loss"] * float("nan")} if _calls[0] == 2 else out

    TrainingJob.compute_loss = compute_loss
'''


@pytest.mark.distributed
def test_a_nan_on_one_rank_stops_every_rank(tiny_bert, data_dir, tmp_path):
    import os
    import subprocess
    import sys
    import time

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", f"model.name_or_path={tiny_bert}",
                           f"data.train={data_dir / 'train.jsonl'}", "data.eval=null", "trainer.max_steps=3",
                           "trainer.batch_size=2", "trainer.save_every=1", "model.max_doc_length=32",
                           "launcher=ddp", "launcher.num_processes=2", "launcher.timeout_s=60", f"output_dir={run}"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert time.monotonic() - t0 < 240
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    msg = one_line(proc.stderr)
    assert "training stopped at step 2: the loss is not finite on rank 1 (term 'loss')" in msg  # said by rank 0
    assert "made no progress" not in msg  # stopped by the agreement, not by the watchdog
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-1"]
    assert not (run / "model").exists()
