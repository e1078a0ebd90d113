"""Every teacher / student / distill-loss option and every distill recipe composes; every student runs one step."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.config import compose_config
from ragr.config.compose import CONF_DIR, group_options

TEACHERS, STUDENTS = group_options("teacher"), group_options("student")
DISTILL_LOSSES = ["distill-kl", "distill-mse", "distill-bce", "llm-preference", "stella"]
RECIPES = [p.stem for p in sorted((CONF_DIR / "recipe").glob("*.yaml")) if "# Run: ragr distill" in p.read_text()]


def teacher_overrides(name: str) -> list[str]:
    if name == "vectors":
        return ["teacher=vectors", "teacher.name_or_path=v.npy", "loss=stella", "student=minilm-embedder"]
    if name in ("cross-encoder", "llm-reranker"):
        return [f"teacher={name}", "teacher.name_or_path=some/model"]
    return [f"teacher={name}"]


def test_groups_and_recipes_exist():
    assert {"qwen-reranker", "data", "vectors", "minilm-embedder"} <= set(TEACHERS)
    assert {"bert", "minilm", "minilm-embedder", "colbert", "llm-embedder"} <= set(STUDENTS)
    assert set(DISTILL_LOSSES) <= set(group_options("loss"))
    assert {"qwen-reranker-to-bert", "bge-zh-llm-preference", "stella-jasper-stage3"} <= set(RECIPES)


@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_teacher_composes(teacher):
    cfg = compose_config("distill", teacher_overrides(teacher))
    assert cfg["teacher"]["preset"] == teacher


@pytest.mark.parametrize("student", STUDENTS)
def test_every_student_composes_as_a_shim_onto_a_model_preset(student):
    cfg = compose_config("distill", [f"student={student}"])
    assert cfg["student"]["family"] in ("cross_encoder", "llm_seqcls", "embedder", "colbert", "splade")


@pytest.mark.parametrize("loss", DISTILL_LOSSES)
def test_every_distill_loss_composes(loss):
    extra = teacher_overrides("vectors") if loss == "stella" else []
    cfg = compose_config("distill", [f"loss={loss}", *extra])
    assert cfg["loss"]["name"] == loss


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_distill_recipe_composes_and_says_how_to_run_it(recipe, tmp_path, monkeypatch):
    text = (CONF_DIR / "recipe" / f"{recipe}.yaml").read_text()
    command = re.search(r"^# Run: (ragr distill recipe=\S+.*)$", text, re.M).group(1)
    overrides = [a for a in command.split()[2:] if "=" in a]
    monkeypatch.chdir(tmp_path)  # the data files the header names must exist when the config is composed
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("data.train", "data.eval"):
            (tmp_path / value).touch()
    cfg = compose_config("distill", overrides)
    assert cfg["name"] == recipe
    cfg = compose_config("distill", overrides + ["trainer.lr=0.123"])  # the command line beats the recipe
    assert cfg["trainer"]["lr"] == 0.123


def test_stella_recipe_is_rag_retrievals_two_1792_teachers(tmp_path):
    (tmp_path / "t.jsonl").touch()
    cfg = compose_config("distill", ["recipe=stella-jasper-stage3", "teacher.name_or_path=t.npy", f"data.train={tmp_path / 't.jsonl'}"])
    assert cfg["loss"]["dims"][-1] == 3584 == 2 * 1792
    assert (cfg["loss"]["cosine_weight"], cfg["loss"]["similarity_weight"], cfg["loss"]["hinge_weight"],
            cfg["loss"]["margin"]) == (10.0, 200.0, 20.0, 0.015)


@pytest.fixture(scope="module")
def scored_triplets(tmp_path_factory):
    rows = [{"query": f"question {i}", "pos": [f"answer {i}"], "neg": [f"other {i} {k}" for k in range(3)],
             "pos_scores": [0.9], "neg_scores": [0.1 * k for k in range(3)]} for i in range(8)]
    path = tmp_path_factory.mktemp("scored") / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("student", [s for s in STUDENTS if s != "bge-base-zh"])
def test_every_student_runs_one_step(student, tiny_bert, tiny_llama, scored_triplets, tmp_path):
    cfg = compose_config("distill", [f"student={student}"])
    path = tiny_llama if student.startswith("llm") else tiny_bert
    extra = [f"student.{k}=32" for k in ("max_length", "max_query_length", "max_doc_length") if k in cfg["student"]]
    if "dim" in cfg["student"]:
        extra.append("student.dim=16")
    if student.startswith("llm"):
        extra = [e.replace("=32", "=160") for e in extra] + ["student.lora_r=2"]
    res = CliRunner().invoke(app, ["distill", "--quiet", "teacher=data", f"student={student}", f"student.name_or_path={path}",
                                   *extra, f"data.train={scored_triplets}", "data.eval=null", "trainer.max_steps=1",
                                   "trainer.batch_size=2", "trainer.eval_before=false", f"output_dir={tmp_path / 'r'}"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "model").is_dir()
