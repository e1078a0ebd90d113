"""The demo (`ragr train` with no arguments) on the real bundled MiniLM improves the dev metrics. Slow: minutes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragr.cli.main import app


@pytest.mark.slow
def test_demo_improves_dev_mrr(tmp_path):
    res = CliRunner().invoke(app, ["train", f"output_dir={tmp_path}", "--quiet"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["after"]["mrr@10"] > ev["before"]["mrr@10"] + 0.01
    assert ev["after"]["ndcg@10"] > ev["before"]["ndcg@10"] + 0.01
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(["hi"]).shape == (1, 384)
