"""The config tree, recipes and demo data ship in the wheel, and compose from an installed (non-editable) copy."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_configs_and_composes_when_installed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ragr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = [p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src/ragr/conf").rglob("*.yaml")]
    assert conf and set(conf) <= names
    assert {"ragr/resources/demo/train.jsonl", "ragr/resources/demo/dev.jsonl",
            "ragr/resources/demo/LICENSE-chatterbot-corpus.txt"} <= names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import ragr, sys; from ragr.config import compose_config; "
            "c = compose_config('train', ['recipe=minilm-mrl']); "
            "assert 'site' in ragr.__file__, ragr.__file__; "
            "assert c['data']['train'].startswith(sys.argv[1]), c['data']['train']; print(c['loss']['name'])")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mrl"
