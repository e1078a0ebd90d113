"""Compose-time checks of what a run will train: family x objective x trainer settings x launcher.

Everything here reads registries and class attributes only (no model is loaded, nothing from
:mod:`ragr.train` is imported): a family, loss or setting that cannot work together is refused when
the config is composed, not at the first step.
"""

from __future__ import annotations

from typing import Any

from ragr.errors import UserError, did_you_mean

PSEUDO_TEACHERS = ("data", "vectors")
#: config keys that name a source the command reads (null: not given; a file, a `datasets` folder or an hf: name,
#: see ragr.data.sources); checked when the config is composed
INPUT_FILES = ("data.train", "data.eval")
#: losses that compare the candidates of one group with each other: a group of one candidate gives them a loss
#: of 0 whatever the scores, so nothing is learned (pointwise losses score each candidate on its own)
GROUP_LOSSES = ("pairwise", "listwise", "distill-kl", "llm-preference")
SINGLE_CANDIDATE_LOSSES = {"labels": "pointwise", "teacher": "distill-mse or loss=distill-bce"}
#: trainer settings -> the objectives that honour them
OBJECTIVE_SETTINGS = {"grad_cache": ("contrastive",), "max_tokens_per_batch": ("contrastive",)}
GRAD_CACHE_LAUNCHERS = ("local", "ddp")


def _loss_class(node: dict[str, Any]):
    from ragr.registry import losses

    return losses.get(node["name"])


def _losses_for(produces: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    from ragr.registry import losses

    out = []
    for name in losses.names():
        try:
            cls = losses.get(name)
        except Exception:  # noqa: BLE001 - a loss that does not import is not a suggestion
            continue
        if set(getattr(cls, "consumes", ())) & set(produces) and getattr(cls, "targets", None) in targets:
            out.append(name)
    return out


def _family_names() -> list[str]:
    from ragr.registry import families

    return families.names()


def check_training(cfg: dict[str, Any], node_key: str, targets: tuple[str, ...]) -> None:
    """The family of ``cfg[node_key]`` must produce what the loss's objective consumes, and the trainer and
    launcher settings must be ones that objective and family honour. ``targets``: the loss targets this
    command provides (``ragr train``: labels and positives; ``ragr distill``: teacher scores or vectors)."""
    from ragr.families import get_family

    family = get_family(cfg[node_key]["family"])
    loss_node, trainer, launcher = cfg["loss"], cfg["trainer"], cfg["launcher"]
    cls = _loss_class(loss_node)
    name = loss_node["name"]
    consumes, objective, target = getattr(cls, "consumes", ()), getattr(cls, "objective", None), getattr(cls, "targets", None)
    if target not in targets or not set(consumes) & set(family.produces):
        ok = _losses_for(family.produces, targets)
        hint = ""
        if node_key == "model" and target in ("teacher", "teacher_vectors"):
            hint = " (teacher scores and vectors are given by `ragr distill`)"
        elif node_key == "model" and family.produces == ("pair_scores",):
            hint = " (task=reranker selects one)"
        what = "student" if node_key == "student" else "model"
        if ok:
            advice = f"choose loss={' or loss='.join(ok)}{hint}"
        else:
            fams = [f for f in _family_names() if set(consumes) & set(get_family(f).produces)]
            advice = f"use a {what} of a family that produces them (an {' or '.join(fams)} {what})"
        raise UserError(f"loss '{name}' cannot train a {family.name} model: it consumes {' or '.join(consumes) or 'nothing'}, "
                        f"the family produces {', '.join(family.produces)}; {advice}")
    for key, objectives in OBJECTIVE_SETTINGS.items():
        if trainer.get(key) and objective not in objectives:
            raise UserError(f"trainer.{key} works with the {' / '.join(objectives)} objective (losses like infonce, mrl); "
                            f"loss={name} trains the {objective} objective: unset trainer.{key}")
    if trainer.get("grad_cache"):
        if not family.grad_cache:
            raise UserError(f"trainer.grad_cache=true is implemented for families producing single vectors "
                            f"(embedder), not {family.name}")
        if launcher["name"] not in GRAD_CACHE_LAUNCHERS:
            raise UserError(f"trainer.grad_cache=true runs with launcher=local or ddp, not {launcher['name']}")
    if trainer.get("max_tokens_per_batch") is not None and not family.token_budget:
        raise UserError(f"trainer.max_tokens_per_batch: model family '{family.name}' does not support it; "
                        "set trainer.batch_size instead")
    if loss_node.get("gather_across_ranks") and "vectors" not in family.produces:
        raise UserError(f"loss.gather_across_ranks=true needs dot-product embeddings (model family embedder); "
                        f"a {family.name} model scores pairs itself, so negatives stay on each rank")
    check_groups(cfg, name, objective, target)


def check_groups(cfg: dict[str, Any], name: str, objective: str | None, target: str | None) -> None:
    """Refuse settings that leave every query a single candidate for a loss that compares candidates."""
    data, loss_node = cfg["data"], cfg["loss"]
    negatives = data.get("num_negatives")
    if objective == "contrastive":
        nodes = [("loss", loss_node)] + ([("loss.inner", loss_node["inner"])] if isinstance(loss_node.get("inner"), dict) else [])
        for path, node in nodes:
            if node.get("in_batch_negatives") is False and negatives == 0:
                raise UserError(f"{path}.in_batch_negatives=false with data.num_negatives=0 leaves each query only its "
                                f"positive (the loss is 0 whatever the model does): set data.num_negatives=1 or more "
                                f"(triplet data), or {path}.in_batch_negatives=true")
        return
    if objective != "grouped" or name not in GROUP_LOSSES:
        return
    single = SINGLE_CANDIDATE_LOSSES.get(target or "", "pointwise")
    what = f"loss={name} compares the candidates of a query's group"
    if "distill" in cfg and cfg["distill"].get("group_size") is not None:
        if cfg["distill"]["group_size"] < 2:
            raise UserError(f"{what}, but distill.group_size={cfg['distill']['group_size']} gives each group one "
                            f"candidate (the loss is 0 whatever the scores): set distill.group_size=2 or more, "
                            f"or use loss={single}")
        return
    if "distill" not in cfg and data.get("format") == "pointwise":
        raise UserError(f"{what}, but data.format=pointwise gives each group one candidate (the loss is 0 whatever "
                        f"the scores): use loss=pointwise, or grouped / triplet data with data.num_negatives=1 or more")
    if negatives == 0:
        also = " (or distill.group_size=2 or more)" if "distill" in cfg else ""
        raise UserError(f"{what}, but data.num_negatives=0 gives each group one candidate (the loss is 0 "
                        f"whatever the scores): set data.num_negatives=1 or more{also}, or use loss={single}"
                        + (" with pointwise data" if single == "pointwise" else ""))


def check_input_files(cfg: dict[str, Any]) -> None:
    """``data.columns`` must map fields ragr reads to column names, and every input named in the config
    (:data:`INPUT_FILES`) must exist and be readable (a file, a `datasets` save_to_disk folder, an ``hf:`` name)."""
    from ragr.data.sources import check_columns, require_source

    data = cfg.get("data")
    if isinstance(data, dict) and data.get("columns") is not None:
        check_columns(data["columns"], "data.columns", extra_targets=[data.get("label_key") or "label"])
    for key in INPUT_FILES:
        section, name = key.split(".")
        node = cfg.get(section)
        value = node.get(name) if isinstance(node, dict) else None
        if value:  # null / empty: not given (the command says when it needs one)
            require_source(value, key)


def validate_distill(cfg: dict[str, Any]) -> None:
    """Validate the composed ``distill`` config (after the dataclass check); raises UserError naming the key."""
    from ragr.config.schema import check_ranges

    check_distill_nodes(cfg)
    check_ranges(cfg)
    check_distill_objective(cfg)
    check_input_files(cfg)


def check_distill_nodes(cfg: dict[str, Any]) -> None:
    """The shape of the ``distill`` config's student, teacher, launcher and loss nodes."""
    from ragr.config.schema import MODEL_COMMON, check_model_config
    from ragr.losses import check_loss_config
    from ragr.registry import launchers

    student, teacher = cfg["student"], cfg["teacher"]
    check_model_config(student, "student")
    kind = teacher.get("family") if isinstance(teacher, dict) else None
    if kind in PSEUDO_TEACHERS:
        for key in teacher:
            if key not in MODEL_COMMON:
                raise UserError(f"unknown config key 'teacher.{key}'"
                                f"{did_you_mean(f'teacher.{key}', [f'teacher.{k}' for k in MODEL_COMMON])}")
        if kind == "vectors" and not teacher.get("name_or_path"):
            raise UserError("teacher=vectors needs teacher.name_or_path=VECTORS.npy (written by `ragr embed`)")
    else:
        check_model_config(teacher, "teacher")
        if not teacher.get("name_or_path"):
            raise UserError(f"teacher={teacher.get('preset')} needs the model: add teacher.name_or_path=DIR (a folder, alias or hub id)")
    if not student.get("name_or_path"):
        raise UserError("student.name_or_path is not set (a folder, alias or hub id)")
    launchers.get(cfg["launcher"]["name"])
    check_loss_config(cfg["loss"], "loss")


def check_distill_objective(cfg: dict[str, Any]) -> None:
    """What ``ragr distill`` trains: teacher kind x loss targets, then family x loss x settings."""
    teacher = cfg["teacher"]
    kind = teacher.get("family") if isinstance(teacher, dict) else None
    loss = cfg["loss"]["name"]
    target = getattr(_loss_class(cfg["loss"]), "targets", None)
    if kind == "vectors":
        if target != "teacher_vectors":
            raise UserError(f"teacher=vectors trains with loss=stella, not loss={loss}")
    elif target == "teacher_vectors":
        raise UserError(f"loss={loss} distills teacher vectors: add teacher=vectors teacher.name_or_path=VECTORS.npy "
                        "(from `ragr embed`) and data.train=TEXTS.jsonl")
    elif target != "teacher":
        score_losses = _losses_for(("pair_scores",), ("teacher",))
        raise UserError(f"loss '{loss}' is not a distillation loss; choose loss={' or loss='.join(score_losses)} "
                        "(or loss=stella with teacher=vectors)")
    check_training(cfg, "student", ("teacher_vectors",) if kind == "vectors" else ("teacher",))
