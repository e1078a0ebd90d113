"""Helpers for the launcher tests: run `ragr train` as a user would (a subprocess) and compare saved weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _ragr_train(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", *overrides], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run) / "model" / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="session")
def ragr_train():
    """``ragr_train(*overrides)``: run ``python -m ragr train -q ...``; fails the test on a non-zero exit."""
    return _ragr_train


@pytest.fixture(scope="session")
def weights():
    """``weights(run_dir)``: the saved model's tensors."""
    return _weights


@pytest.fixture(scope="session")
def assert_same_weights():
    return _assert_same_weights
