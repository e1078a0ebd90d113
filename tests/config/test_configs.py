"""Every config group option and every recipe composes; each runs one step on a tiny model; errors are clear."""

from __future__ import annotations

import pytest

from ragr.config import compose_config
from ragr.config.compose import CONF_DIR, group_options
from ragr.errors import UserError

import re

# teacher/student groups and the distillation losses belong to `ragr distill` (tests/config/test_distill_configs.py)
DISTILL_GROUPS = ("teacher", "student")
DISTILL_LOSSES = ("distill-kl", "distill-mse", "distill-bce", "llm-preference", "stella", "splade-distill")
GROUPS = [g.name for g in sorted(CONF_DIR.iterdir()) if g.is_dir() and g.name not in ("recipe", *DISTILL_GROUPS)]
OPTIONS = [(g, o) for g in GROUPS for o in group_options(g) if not (g == "loss" and o in DISTILL_LOSSES)]
RECIPES = group_options("recipe")


def recipe_command(recipe: str) -> str:
    """The command a recipe's header says runs it (train or distill)."""
    m = re.search(r"^# Run: ragr (\w+) recipe=" + re.escape(recipe) + r"\b", (CONF_DIR / "recipe" / f"{recipe}.yaml").read_text(), re.M)
    assert m, f"recipe {recipe} has no '# Run: ragr ... recipe={recipe}' header"
    return m.group(1)


TRAIN_RECIPES = [r for r in RECIPES if recipe_command(r) == "train"]


def touch_data_files(overrides: list[str], where) -> None:
    """Create (empty) the data files that ``overrides`` name relative to ``where`` (the input files must exist
    when the config is composed; the contents are read only when training starts)."""
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("data.train", "data.eval") and value not in ("", "null"):
            (where / value).touch()


def test_there_is_something_to_test():
    assert {"model", "loss", "data", "trainer", "launcher", "task"} <= set(GROUPS)
    assert RECIPES


RERANKER_LOSSES = ("pointwise", "pairwise", "listwise", "mnrl")


def selection_for(group: str, option: str) -> list[str]:
    """``group=option``, plus ``task=reranker`` where the option is a reranker model or loss."""
    from ragr.families import get_family

    selection = [f"{group}={option}"]
    if group == "loss" and option in RERANKER_LOSSES:
        return selection + ["task=reranker"]
    if group == "loss":  # a loss for one family's outputs (splade, m3): a model preset of that family
        from omegaconf import OmegaConf

        from ragr.registry import losses

        consumes = set(getattr(losses.get(OmegaConf.load(CONF_DIR / "loss" / f"{option}.yaml")["name"]), "consumes", ()))
        if not consumes & set(get_family("embedder").produces):
            for preset in group_options("model"):
                if consumes & set(get_family(OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml")["family"]).produces):
                    return selection + [f"model={preset}"]
    if group == "model":
        from omegaconf import OmegaConf

        family = OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml")["family"]
        if get_family(family).produces == ("pair_scores",):  # a reranker: the default (contrastive) loss cannot train it
            return selection + ["task=reranker"]
    return selection


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option, tmp_path, monkeypatch):
    overrides = selection_for(group, option)
    if group == "data" and option == "custom":
        overrides.append("data.train=x.jsonl")
        monkeypatch.chdir(tmp_path)
        touch_data_files(overrides, tmp_path)
    cfg = compose_config("train", overrides)
    assert cfg["trainer"]["batch_size"] > 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_with_the_command_in_its_header(recipe, tmp_path, monkeypatch):
    command = recipe_command(recipe)
    assert command in ("train", "distill")
    # the header's own overrides (e.g. data.train=my.jsonl) are what the recipe expects from the user
    header = re.search(r"^# Run: ragr \w+ (.*)$", (CONF_DIR / "recipe" / f"{recipe}.yaml").read_text(), re.M).group(1)
    monkeypatch.chdir(tmp_path)
    touch_data_files(header.split(), tmp_path)
    compose_config(command, header.split())


def test_command_line_beats_recipe():
    cfg = compose_config("train", ["recipe=bge-zh-embedding", "trainer.lr=0.123"])
    assert cfg["trainer"]["lr"] == 0.123
    assert cfg["model"]["preset"] == "bge-base-zh"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.lrr=1", "unknown config key 'trainer.lrr' (did you mean 'trainer.lr'?)"),
        ("model=no-such-family", "unknown model 'no-such-family'"),
        ("loss=infonc", "unknown loss 'infonc' (did you mean 'infonce'?)"),
        ("model.poolin=cls", "did you mean 'model.pooling'"),
        ("loss.temperatur=0.1", "did you mean 'loss.temperature'"),
        ("trainer.lr=abc", "'trainer.lr' must be float"),
        ("model.pooling=max", "'model.pooling' must be one of 'cls', 'mean', 'last'"),
        ("trainer.max_steps=1.5", "'trainer.max_steps' must be int or null"),
        ("launcher.name=nope", "unknown launcher 'nope'"),
        ("model=colbert loss=mrl", "loss 'mrl' cannot train a colbert model"),
        ("model=bge-reranker-base", "task=reranker selects one"),
        ("trainer.lr=", "config key 'trainer.lr'"),
    ],
)
def test_config_errors_name_the_key_and_the_nearest_choice(override, needle):
    with pytest.raises(UserError) as err:
        compose_config("train", override.split(" "))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def _family_model(cfg, tiny_models):
    family = cfg["model"]["family"]
    return tiny_models.get(family, tiny_models["embedder"])


RUNNABLE = [("model", o) for o in group_options("model")] + [
    ("loss", o) for o in group_options("loss") if o not in DISTILL_LOSSES] + [
    ("recipe", r) for r in TRAIN_RECIPES] + [("task", t) for t in group_options("task")]


@pytest.mark.parametrize("group,option", RUNNABLE, ids=[f"{g}={o}" for g, o in RUNNABLE])
def test_every_model_loss_task_and_recipe_runs_one_step(group, option, tiny_models, data_dir, tmp_path):
    from ragr.launch.local import run_local

    selection = selection_for(group, option)
    cfg = compose_config("train", selection)
    overrides = selection + [f"model.name_or_path={_family_model(cfg, tiny_models)}",
                 f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}", "data.format=auto",
                 "trainer.max_steps=1", "trainer.batch_size=2", "trainer.eval_before=false", "trainer.precision=fp32",
                 f"output_dir={tmp_path / 'r'}"]
    cfg = compose_config("train", overrides)
    if cfg["loss"]["name"] == "mrl":
        overrides.append("loss.dims=[8,16]")
        cfg = compose_config("train", overrides)
    limit = 160 if cfg["model"]["family"].startswith("llm") else 32  # LLM prompts take ~80 tokens
    for key in ("max_query_length", "max_doc_length", "max_length"):
        if cfg["model"].get(key):
            cfg["model"][key] = min(cfg["model"][key], limit)
    if cfg["model"].get("dense_dim"):
        cfg["model"]["dense_dim"] = 16
    if cfg["model"].get("dim"):
        cfg["model"]["dim"] = 16
    result = run_local(cfg, quiet=True)
    assert (tmp_path / "r" / "model").is_dir() and result["steps"] == 1
