"""Run directory: config.yaml, manifest.json, metrics.jsonl, checkpoints/step-N, model/ — all written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
        "data": {p: {"sha256": sha256_file(p), "bytes": os.path.getsize(p)} for p in data_files if p},
        **(extra or {}),
    }
    path = run_dir / "manifest.json"
    if path.is_file():  # a resumed run keeps the history of its starts
        old = json.loads(path.read_text())
        manifest["previous"] = old.get("previous", []) + [{k: old[k] for k in ("created", "command") if k in old}]
    atomic_write_text(path, json.dumps(manifest, indent=2))
