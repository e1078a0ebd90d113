"""DeepSpeed through ragr's accelerate launcher, on CPU with one process (what accelerate allows without GPUs).

It exercises the engine's DeepSpeed paths for real: accumulation boundaries (DeepSpeed divides by grad_accum
itself), the LR schedule on DeepSpeed's optimizer, ZeRO-3 evaluation and the final save gathered whole,
and checkpoint/resume through DeepSpeed's own checkpoints. Several ranks need CUDA GPUs (see docs/MULTINODE.md).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

pytestmark = [pytest.mark.distributed,  # CI installs ragr[deepspeed] (make test)
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (ragr[deepspeed])")]


@pytest.fixture(scope="module")
def common(tiny_bert_nodropout, data_dir):
    return [f"model.name_or_path={tiny_bert_nodropout}", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
            "trainer.max_steps=4", "trainer.batch_size=4", "trainer.grad_accum=2", "trainer.lr=1e-3",
            "trainer.save_every=2", "trainer.save_total_limit=5", "model.max_doc_length=32"]


@pytest.fixture(scope="module")
def one_process(common, tmp_path_factory, ragr_train, weights):
    run = tmp_path_factory.mktemp("local") / "run"
    ragr_train(*common, f"output_dir={run}")
    return weights(run)


def test_zero2_matches_one_plain_process(common, one_process, tmp_path, ragr_train, weights, assert_same_weights):
    ragr_train(*common, "launcher=deepspeed-zero2", "launcher.num_processes=1", f"output_dir={tmp_path / 'z2'}")
    assert_same_weights(weights(tmp_path / "z2"), one_process, atol=1e-5)


def test_zero3_saves_a_whole_model_and_resumes(common, one_process, data_dir, tmp_path, ragr_train, weights,
                                                assert_same_weights):
    full, resumed = tmp_path / "z3", tmp_path / "z3-resumed"
    ragr_train(*common, "launcher=deepspeed-zero3", "launcher.num_processes=1", f"data.eval={data_dir / 'dev.jsonl'}",
               f"output_dir={full}")
    assert_same_weights(weights(full), one_process, atol=1e-5)
    evals = json.loads((full / "eval.json").read_text())
    assert set(evals) == {"before", "after"}  # evaluated before sharding and on the gathered model

    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(full / "model"), device="cpu").encode(["a query"]).shape == (1, 32)

    shutil.copytree(full, resumed)
    for stale in ("checkpoints/step-4", "model", "eval.json"):
        shutil.rmtree(resumed / stale) if (resumed / stale).is_dir() else (resumed / stale).unlink()
    ragr_train(*common, "launcher=deepspeed-zero3", "launcher.num_processes=1", f"output_dir={resumed}",
               "trainer.resume=auto")
    assert_same_weights(weights(resumed), weights(full), atol=1e-6)
