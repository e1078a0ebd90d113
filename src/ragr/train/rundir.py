"""Run directory: config.yaml, manifest.json, metrics.jsonl, checkpoints/step-N, model/ — all written atomically."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ragr.data.sources import fingerprint, source_exists
from ragr.errors import UserError
from ragr.fileio import atomic_write_text, replace_dir, sha256_file  # noqa: F401 - re-exported

STATE_FILE = "trainer_state.json"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint that finished writing, oldest first."""
    ckpt_root = run_dir / "checkpoints"
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = re.fullmatch(r"step-(\d+)", p.name)
            if m and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """Checkpoint to resume from: ``auto`` = latest complete one (None if there is none), or an explicit path."""
    if resume is None or resume in ("no", "false", "none"):
        if complete_checkpoints(run_dir):
            raise UserError(
                f"{run_dir} already holds checkpoints; pass trainer.resume=auto to continue that run, "
                "or choose another output_dir"
            )
        return None
    if resume == "auto":
        ckpts = complete_checkpoints(run_dir)
        return ckpts[-1][1] if ckpts else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"trainer.resume={resume}: not a complete checkpoint directory (no {STATE_FILE})")
    return path


#: keys that may change between a run and its resumption (they do not change what is computed)
RESUME_FREE = ("trainer.resume", "trainer.resume_force", "trainer.log_every", "trainer.save_every",
               "trainer.save_total_limit", "trainer.eval_before", "trainer.eval_after", "trainer.eval_every",
               "trainer.tensorboard", "launcher.timeout_s", "launcher.main_process_ip", "launcher.main_process_port",
               "launcher.machine_rank", "name", "output_dir", "distill.rescore", "data.eval", "distill.agreement_queries",
               "trainer.num_workers",  # a removed key that did nothing
               "trainer.max_steps", "trainer.epochs")  # where the run stops: extending a finished run is continuing it


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def resume_differences(run_dir: Path, cfg: dict[str, Any], data_files: list[str]) -> list[str]:
    """What differs between the run in ``run_dir`` (its ``config.yaml`` and the data hashes in ``manifest.json``)
    and ``cfg`` with ``data_files``: ``["trainer.lr: 5e-05 -> 0.001", "data.train: contents changed", ...]``."""
    from omegaconf import OmegaConf

    diffs: list[str] = []
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        old = _flat(OmegaConf.to_container(OmegaConf.load(config_file), resolve=False))
        new = _flat(cfg)
        for key in sorted(set(old) | set(new)):
            if key in RESUME_FREE or any(key.startswith(f + ".") for f in RESUME_FREE):
                continue
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                diffs.append(f"{key}: {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}")
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("data") or {}
        for key in ("train",):  # data.eval decides what is measured, not what is trained
            path = (cfg.get("data") or {}).get(key)
            if path and path in recorded and source_exists(path) and fingerprint(path)["sha256"] != recorded[path]["sha256"]:
                diffs.append(f"data.{key}: the contents of {path} changed")
    return diffs


def check_resume(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` with another config or other data (unless ``trainer.resume_force``)."""
    if cfg["trainer"].get("resume_force"):
        return
    data = cfg.get("data") or {}
    diffs = resume_differences(run_dir, cfg, [f for f in (data.get("train"), data.get("eval")) if f])
    if diffs:
        raise UserError(f"{run_dir} was started with another config or data ({'; '.join(diffs)}): resuming would not "
                        "reach the weights of one uninterrupted run; pass trainer.resume_force=true to resume anyway, "
                        "or choose another output_dir")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop ``metrics.jsonl`` records logged after checkpoint ``step`` (a resumed run logs them again)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(kept))


def rotate_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for _, path in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _git_rev() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        rev = out.stdout.strip()
        return rev if out.returncode == 0 and len(rev) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(run_dir: Path, cfg: dict[str, Any], data_files: list[str], extra: dict[str, Any] | None = None) -> None:
    import accelerate
    import torch
    import transformers

    import ragr

    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "seed": cfg.get("seed"),
        "versions": {
            "ragr": ragr.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        },
        "git_rev": _git_rev(),
        "data": {p: fingerprint(p) for p in data_files if p},  # a file's sha256, or a folder's / hub dataset's
        **(extra or {}),
    }
    path = run_dir / "manifest.json"
    if path.is_file():  # a resumed run keeps the history of its starts
        old = json.loads(path.read_text())
        manifest["previous"] = old.get("previous", []) + [{k: old[k] for k in ("created", "command") if k in old}]
    atomic_write_text(path, json.dumps(manifest, indent=2))
