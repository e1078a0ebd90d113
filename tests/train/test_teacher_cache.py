"""The teacher-score cache is keyed by what scores: file contents (not sizes or times) and the dtype actually used."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from ragr.train.teacher import cache_key

NODE = {"preset": "cross-encoder", "family": "cross_encoder", "name_or_path": "x", "max_length": 64}
SOURCE = {"view": "train", "sha256": "abc"}


def test_same_contents_elsewhere_share_a_key_and_changed_contents_do_not(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"\x01" * 64)
    (a / "config.json").write_text("{}")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert cache_key(NODE, "cross_encoder", str(a), "fp32", SOURCE) == cache_key(NODE, "cross_encoder", str(b), "fp32", SOURCE)
    st = os.stat(b / "model.safetensors")
    (b / "model.safetensors").write_bytes(b"\x02" * 64)  # same size ...
    os.utime(b / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # ... same modification time
    assert cache_key(NODE, "cross_encoder", str(a), "fp32", SOURCE) != cache_key(NODE, "cross_encoder", str(b), "fp32", SOURCE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to bf16 on a GPU")
def test_the_key_follows_the_resolved_dtype_not_the_setting(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"0")
    # on a machine without a bf16 GPU, auto resolves to fp32: the same scores, the same key
    assert cache_key(NODE, "cross_encoder", str(tmp_path), "auto", SOURCE) == cache_key(NODE, "cross_encoder", str(tmp_path), "fp32", SOURCE)
    assert cache_key(NODE, "cross_encoder", str(tmp_path), "bf16", SOURCE) != cache_key(NODE, "cross_encoder", str(tmp_path), "fp32", SOURCE)
