"""`trainer.eval_every`: dev evaluations during training are logged and the best model is kept in run_dir/best/."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ragr.config import compose_config
from ragr.errors import UserError
from ragr.launch.local import run_local
from ragr.train.job import TrainingJob


def train(overrides):
    return run_local(compose_config("train", overrides), quiet=True)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_best_model_is_the_one_with_the_best_scripted_metric(tiny_overrides, tmp_path, monkeypatch):
    scripted = [0.10, 0.50, 0.30, 0.20]  # before (step 0), step 2, step 4, after (step 6)
    seen: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(self, model, rows, progress=None):
        seen.append({k: v.detach().clone() for k, v in model.backbone.state_dict().items()})
        value = scripted[len(seen) - 1]
        return {"map": value / 2, "ndcg@10": value, "num_queries": len(rows["eval"]), "num_skipped": 0}

    monkeypatch.setattr(TrainingJob, "evaluate", fake_evaluate)
    run = tmp_path / "run"
    res = train(tiny_overrides + ["trainer.max_steps=6", "trainer.eval_every=2", "trainer.save_every=2",
                                  "trainer.save_total_limit=1", "trainer.lr=1e-3"])
    assert len(seen) == 4
    evals = [(r["step"], r["event"], r["eval/ndcg@10"]) for r in records(run) if r.get("event", "").startswith("eval")]
    assert evals == [(0, "eval_before", 0.10), (2, "eval_step", 0.50), (4, "eval_step", 0.30), (6, "eval_after", 0.20)]
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["step"], best["metric"], best["value"]) == (2, "ndcg@10", 0.50)
    assert res["best"]["step"] == 2
    # best/ holds the weights evaluated at step 2, not the final ones
    saved = load_file(str(run / "best" / "model.safetensors"))
    for k, v in seen[1].items():
        torch.testing.assert_close(saved[k], v, atol=0, rtol=0, msg=k)
    assert any(not torch.equal(saved[k], v) for k, v in seen[3].items())
    # rotation kept one checkpoint and never touched best/
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-6"]
    ev = json.loads((run / "eval.json").read_text())
    assert ev["best"]["step"] == 2 and ev["best"]["ndcg@10"] == 0.50
    assert [r["step"] for r in records(run) if r.get("event") == "best"] == [0, 2]


def test_best_model_reloads_and_scores_what_was_logged(tiny_overrides, tmp_path, data_dir):
    from ragr.data.formats import load_rerank_file
    from ragr.eval.rerank import evaluate
    from ragr.families import get_family
    from ragr.models.embedder import Embedder

    run = tmp_path / "run"
    train(tiny_overrides + ["trainer.max_steps=4", "trainer.eval_every=1", "trainer.best_metric=map", "trainer.lr=2e-3",
                            "trainer.eval_before=false"])
    logged = [(r["step"], r["eval/map"]) for r in records(run) if r.get("event", "").startswith("eval")]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["value"] == max(v for _, v in logged)
    assert best["step"] == min(s for s, v in logged if v == best["value"])  # the first of equal scores is kept
    again = evaluate(get_family("embedder").scorer(Embedder.from_pretrained(str(run / "best"))),
                     load_rerank_file(str(data_dir / "dev.jsonl")))
    assert again["map"] == pytest.approx(best["value"], abs=1e-6)


def test_eval_every_config_errors(tiny_overrides):
    with pytest.raises(UserError, match="did you mean 'ndcg@10'"):
        train(tiny_overrides + ["trainer.eval_every=1", "trainer.best_metric=ndgc@10", "trainer.eval_before=false"])
    with pytest.raises(UserError, match="data.eval"):
        train(tiny_overrides + ["trainer.eval_every=1", "data.eval=null"])
