"""Compose a command's config with Hydra's compose API and turn Hydra's errors into one-line UserErrors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ragr.errors import UserError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """Names available in a config group (the YAML files under conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for k, v in node.items():
        keys.append(f"{prefix}{k}")
        keys.extend(_flat_keys(v, f"{prefix}{k}."))
    return keys


def _hydra_compose(command: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name=f"ragr-{command}"):
        return compose(config_name=command, overrides=overrides)


def _translate(exc: Exception, command: str, overrides: list[str]) -> UserError:
    msg = str(exc)
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", msg)
    if m:
        group, option = m.groups()
        choices = group_options(group)
        return UserError(
            f"unknown {group} '{option}'{did_you_mean(option, choices)}; choices: {', '.join(choices)}"
        )
    m = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", msg) or re.search(
        r"Key '([^']+)' is not in struct", msg
    )
    if m:
        key = m.group(1)
        rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
        try:
            from omegaconf import OmegaConf

            valid = _flat_keys(OmegaConf.to_container(_hydra_compose(command, rest), resolve=False))
        except Exception:  # noqa: BLE001 - the hint is best effort
            valid = []
        return UserError(f"unknown config key '{key}'{did_you_mean(key, valid)}")
    first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return UserError(f"config error: {first}")


def _with_family_loss(command: str, overrides: list[str]) -> list[str]:
    """``ragr train model=splade`` (or ``model.family=splade``) without a ``loss=``: the family's own loss
    (its ``default_loss``), since the default one cannot train it. A Hydra model preset cannot choose another
    group's option, so this is done here, before composing (``loss.KEY=...`` overrides then apply to that loss)."""
    if command != "train":
        return overrides
    keys = {o.lstrip("+~").split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    if "loss" in keys:
        return overrides
    family = keys.get("model.family")
    if family is None and "model" in keys and (CONF_DIR / "model" / f"{keys['model']}.yaml").is_file():
        from omegaconf import OmegaConf

        family = OmegaConf.load(CONF_DIR / "model" / f"{keys['model']}.yaml").get("family")
    if not family:
        return overrides
    from ragr.registry import families

    if family not in families:
        return overrides  # the schema check names the unknown family
    from ragr.families import get_family

    loss = getattr(get_family(str(family)), "default_loss", None)
    return overrides + [f"loss={loss}"] if loss else overrides


def compose_config(command: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose ``conf/<command>.yaml`` with Hydra overrides, resolve it and validate it.

    Returns a plain, fully resolved dict. Raises UserError for every config mistake.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ragr.config.resolvers import register_resolvers
    from ragr.config.schema import validate

    overrides = _with_family_loss(command, list(overrides or []))
    register_resolvers()
    try:
        cfg = _hydra_compose(command, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _translate(exc, command, overrides) from None
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        text = str(exc).splitlines()[0]
        m = re.search(r"full_key: (\S+)", str(exc))
        where = f" '{m.group(1)}'" if m else ""
        if "Missing mandatory value" in text:
            raise UserError(f"config key{where} must be set (add {m.group(1) if m else 'it'}=...)") from None
        raise UserError(f"config error{where}: {text}") from None
    validate(command, container)
    return container


def to_yaml(cfg: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg))
