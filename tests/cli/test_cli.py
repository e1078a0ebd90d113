"""The CLI contract: --help everywhere, exit 2 with one clear line for user errors, eval output files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragr.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def command_names():
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_root_help_lists_only_real_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for name in command_names():
        assert name in res.output
    assert {"train", "eval", "ls"} <= set(command_names())


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help(name):
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_ls_lists_registries_groups_and_recipes():
    res = invoke("ls")
    assert res.exit_code == 0
    for word in ("infonce", "mrl", "embedder", "local", "minilm-mrl", "ragr train recipe=minilm-mrl"):
        assert word in res.output
    assert invoke("ls", "lossez").exit_code == 2


def test_print_config_shows_the_resolved_config():
    res = invoke("train", "trainer.lr=0.001", "--print-config")
    assert res.exit_code == 0
    assert "lr: 0.001" in res.stdout and "${" not in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "trainer.lrr=1", "--print-config"], "did you mean 'trainer.lr'"),
    (["train", "model=no-such-family", "--print-config"], "unknown model 'no-such-family'"),
    (["eval", "model.pooling=max", "--print-config"], "must be one of"),
])
def test_config_errors_exit_2_without_traceback(args, needle):
    res = invoke(*args)
    assert res.exit_code == 2
    assert needle in res.stderr
    assert "Traceback" not in res.output


def test_bad_data_line_exits_2_naming_file_line_and_field(tmp_path, tiny_bert):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "pos": ["b"]}\n{"query": 3, "pos": ["c"]}\n')
    res = invoke("train", f"model.name_or_path={tiny_bert}", f"data.train={bad}", "data.eval=null",
                 "trainer.max_steps=1", f"output_dir={tmp_path / 'out'}", "--quiet")
    assert res.exit_code == 2
    assert f"{bad}:2: field 'query'" in res.stderr
    assert "Traceback" not in res.output


def test_unknown_model_name_offline_says_how_to_pass_a_local_path(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke("train", "model=bert", "model.name_or_path=nobody/no-such-model", f"data.train={data_dir / 'train.jsonl'}",
                 "data.eval=null", f"output_dir={tmp_path / 'o'}", "--quiet")
    assert res.exit_code == 2
    assert "model.name_or_path=" in res.stderr and "nobody/no-such-model" in res.stderr


def test_eval_writes_metrics_json(tmp_path, tiny_bert, data_dir):
    res = invoke("eval", f"model.name_or_path={tiny_bert}", f"data.eval={data_dir / 'dev.jsonl'}", f"output_dir={tmp_path}",
                 "--quiet")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"map", "mrr@10", "ndcg@10"} <= set(report["metrics"])
    assert report["metrics"]["num_queries"] == 12


def test_eval_uses_the_configured_family_on_a_plain_backbone(tmp_path, tiny_bert, data_dir):
    res = invoke("eval", "model=colbert", f"model.name_or_path={tiny_bert}", f"data.eval={data_dir / 'dev.jsonl'}",
                 f"output_dir={tmp_path}", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval.json").read_text())["family"] == "colbert"
