"""A resume must continue the same run: another config or other data is refused (one line naming what changed)
unless trainer.resume_force=true, and the resumed run logs each step once."""

from __future__ import annotations

import json
import shutil

import pytest

from ragr.config import compose_config
from ragr.errors import UserError
from ragr.launch.local import run_local


def train(overrides):
    return run_local(compose_config("train", overrides), quiet=True)


@pytest.fixture
def interrupted(tiny_bert_nodropout, data_dir, tmp_path, interrupt_after_checkpoint):
    data = tmp_path / "train.jsonl"
    shutil.copy(data_dir / "train.jsonl", data)
    common = [f"model.name_or_path={tiny_bert_nodropout}", f"data.train={data}", "data.eval=null",
              "trainer.max_steps=5", "trainer.batch_size=4", "trainer.save_every=2", "trainer.log_every=1",
              "model.max_doc_length=32", f"output_dir={tmp_path / 'run'}"]
    with interrupt_after_checkpoint(2), pytest.raises(KeyboardInterrupt):
        train(common)
    return common, data, tmp_path / "run"


@pytest.mark.parametrize("change, needle", [
    ("trainer.lr=1e-3", "trainer.lr: 5e-05 -> 0.001"),
    ("trainer.batch_size=2", "trainer.batch_size: 4 -> 2"),
    ("trainer.scheduler=linear", "trainer.scheduler: cosine -> linear"),
    ("seed=7", "seed: 42 -> 7"),
])
def test_a_changed_config_is_refused_naming_the_change(interrupted, change, needle):
    common, _, run = interrupted
    with pytest.raises(UserError) as err:
        train(common + [change, "trainer.resume=auto"])
    assert needle in str(err.value) and "trainer.resume_force=true" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (run / "model").exists()


def test_changed_data_is_refused_and_the_force_flag_allows_it(interrupted):
    common, data, run = interrupted
    data.write_text(data.read_text().replace("Paris", "Lyon"))
    with pytest.raises(UserError, match=r"data.train: the contents of .* changed"):
        train(common + ["trainer.resume=auto"])
    result = train(common + ["trainer.resume=auto", "trainer.resume_force=true"])
    assert result["steps"] == 5


def test_a_resumed_run_logs_each_step_once(interrupted):
    common, _, run = interrupted
    with open(run / "metrics.jsonl", "a") as f:  # a kill after step 3 was logged, before its checkpoint
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    train(common + ["trainer.resume=auto"])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5]
    assert 123.0 not in [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
