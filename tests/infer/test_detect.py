"""Family detection from a model's own files, presets, and user-registered reranker families."""

from __future__ import annotations

import json

import pytest

from ragr import Reranker
from ragr.errors import UserError
from ragr.infer import Scorer, detect_family, register_scorer
from ragr.infer.presets import preset_for


def test_each_family_is_read_from_the_files(ce_dir, decoder_dir, decoder_seqcls_dir, embedder_dir, colbert_dir):
    assert detect_family(ce_dir) == "cross_encoder"
    assert detect_family(decoder_dir) == "llm_yes"
    assert detect_family(decoder_seqcls_dir) == "llm_seqcls"
    assert detect_family(embedder_dir) == "embedder"
    assert detect_family(colbert_dir) == "colbert"


def test_the_name_never_decides(tmp_path, make_ce):
    # a cross-encoder whose folder name mentions an LLM reranker and ColBERT is still a cross-encoder
    path = make_ce(tmp_path / "bge-reranker-v2-gemma-colbert-qwen")
    assert detect_family(path) == "cross_encoder"


def test_ragr_json_wins_and_family_argument_overrides(tmp_path, ce_dir):
    (ce_dir / "ragr.json").write_text(json.dumps({"family": "llm_seqcls"}))
    assert detect_family(ce_dir) == "llm_seqcls"
    rr = Reranker(str(ce_dir), family="cross_encoder")
    assert rr.family == "cross_encoder"


def test_a_folder_without_clues_asks_for_the_family(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(UserError, match="family"):
        detect_family(tmp_path / "m")


def test_presets_are_exact_name_lookups():
    assert preset_for("qwen-reranker").family == "llm_yes"
    assert preset_for("Qwen/Qwen3-Reranker-0.6B").prompt.no_token == "no"
    assert preset_for("bge-reranker-v2-gemma").prompt.yes_token == "Yes"
    for name in ("bge-reranker-base", "bge-reranker-large", "bge-reranker-v2-m3", "bce-reranker-base_v1",
                 "ms-marco-MiniLM-L6-v2"):
        assert preset_for(name).family == "cross_encoder"
    assert preset_for("my-bge-reranker-base") is None


def test_an_alias_offline_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="local"):
        Reranker("bge-reranker-base")


@register_scorer("toy_overlap", help="test: word overlap")
class ToyScorer(Scorer):
    """Scores a pair by the number of shared words."""

    family = "toy_overlap"

    @classmethod
    def load(cls, path, *, device="cpu", dtype=None, max_length=None, **options):
        self = cls()
        self.bonus = float(json.loads((__import__("pathlib").Path(path) / "ragr.json").read_text())["bonus"])
        return self

    def score_pairs(self, queries, docs):
        return [len(set(q.split()) & set(d.split())) + self.bonus for q, d in zip(queries, docs)]


def test_a_user_scorer_registered_by_decorator_works_through_reranker_and_cli(tmp_path):
    from typer.testing import CliRunner

    from ragr.cli.main import app

    model = tmp_path / "toy"
    model.mkdir()
    (model / "ragr.json").write_text(json.dumps({"family": "toy_overlap", "bonus": 0.5}))
    rr = Reranker(str(model))
    assert rr.score([("a b c", "b c d"), ("x", "y")]) == [2.5, 0.5]
    assert [i for i, _, _ in rr.rank("a b", ["z", "a", "a b"])] == [2, 1, 0]
    res = CliRunner().invoke(app, ["rerank", "--model", str(model), "--quiet"], input='{"query": "a b", "document": "b"}\n')
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["score"] == 1.5
