"""Model cards: every saved model/ and best/ gets a README.md that huggingface_hub parses without a warning,
whose front matter carries the base model, the library and the dev metrics of eval.json, and the folder still
opens in sentence-transformers."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ragr.config import compose_config
from ragr.launch.local import run_local
from ragr.train.card import hub_id, loss_rows, parse_hf_spec, render_model_card

REV = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def no_hub_warnings():
    """Fail on any Python warning or huggingface_hub log record of level WARNING or more."""
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Catch(level=logging.WARNING)
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        assert not caught, [str(w.message) for w in caught]
        assert not records, [r.getMessage() for r in records]
    finally:
        hub_logger.removeHandler(handler)


def load_card(path: Path):
    from huggingface_hub import ModelCard

    with no_hub_warnings():
        return ModelCard.load(path)


def front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


def dev_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(("num_", "teacher_", "agreement_"))}


def index_metrics(card) -> dict:
    return {r.metric_type: r.metric_value for r in card.data.eval_results}


@pytest.fixture(scope="module")
def hub_bert(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT where a hub download would put it (HF cache layout): its hub id is known."""
    snap = tmp_path_factory.mktemp("hf") / "hub" / "models--ragr-tests--tiny-bert" / "snapshots" / REV
    shutil.copytree(tiny_bert, snap)
    return str(snap)


@pytest.fixture(scope="module")
def trained(hub_bert, data_dir, tmp_path_factory):
    """One tiny `ragr train` with dev data, evaluated every step (so best/ is written too)."""
    run = tmp_path_factory.mktemp("card") / "run"
    argv = ["/opt/venv/bin/ragr", "train", f"model.name_or_path={hub_bert}", "trainer.max_steps=2"]
    overrides = [f"model.name_or_path={hub_bert}", f"data.train={data_dir / 'train.jsonl'}",
                 f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.log_every=1",
                 "trainer.eval_every=1", "trainer.lr=2e-3", "trainer.best_metric=map", f"output_dir={run}",
                 "model.max_doc_length=32", "model.max_query_length=16"]
    old = sys.argv
    sys.argv = argv
    try:
        run_local(compose_config("train", overrides), quiet=True)
    finally:
        sys.argv = old
    return run


def test_model_card_front_matter_parses_and_carries_the_metrics(trained, data_dir):
    card = load_card(trained / "model" / "README.md")
    assert card.data.base_model == "ragr-tests/tiny-bert"
    assert card.data.library_name == "sentence-transformers"
    assert card.data.pipeline_tag == "sentence-similarity"
    assert {"ragr", "sentence-transformers", "loss:infonce"} <= set(card.data.tags)
    after = json.loads((trained / "eval.json").read_text())["after"]
    assert index_metrics(card) == dev_only(after)  # exact: YAML keeps the float's repr
    assert len(index_metrics(card)) >= 4
    (task,) = {(r.task_type, r.dataset_name, r.dataset_type) for r in card.data.eval_results}
    assert task == ("text-ranking", "dev.jsonl", "dev")
    assert card.data.model_name == "minilm-infonce"
    # the raw YAML is the hub's model-index layout, not only what huggingface_hub reads back
    meta = front_matter(trained / "model" / "README.md")
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]}["map"] == after["map"]


def test_model_card_body_tells_how_the_model_was_made(trained, data_dir, hub_bert):
    text = (trained / "model" / "README.md").read_text(encoding="utf-8")
    assert f"```bash\nragr train model.name_or_path={hub_bert} trainer.max_steps=2\n```" in text
    for name in ("train.jsonl", "dev.jsonl"):
        assert hashlib.sha256((data_dir / name).read_bytes()).hexdigest() in text
    losses = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in losses if "event" not in r]
    assert [r["step"] for r in losses] == [1, 2]
    table = text.split("### Training loss", 1)[1].split("###", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "step" not in line]
    assert [(int(r[0]), float(r[2])) for r in rows] == [(r["step"], pytest.approx(r["loss"], abs=5e-5)) for r in losses]
    before = json.loads((trained / "eval.json").read_text())["before"]
    assert f"| map | {before['map']:.4f} |" in text  # the before/after table
    assert "SentenceTransformer(" in text and "from ragr import Reranker" in text
    assert "trainer:\n  epochs:" in text  # the resolved config


def test_best_folder_gets_a_card_with_its_own_metrics(trained):
    best = json.loads((trained / "best" / "best.json").read_text())
    card = load_card(trained / "best" / "README.md")
    assert index_metrics(card) == dev_only(best["metrics"])
    assert card.data.base_model == "ragr-tests/tiny-bert"
    assert f"weights of step {best['step']}" in card.text


def test_saved_embedder_still_opens_in_sentence_transformers(trained, data_dir):
    from sentence_transformers import SentenceTransformer

    from ragr.models.embedder import Embedder

    texts = ["how do I reset my password?", "Spiders have eight legs."]
    st = SentenceTransformer(str(trained / "model"), device="cpu")
    mine = Embedder.from_pretrained(str(trained / "model")).encode(texts)
    torch.testing.assert_close(torch.as_tensor(st.encode(texts)), mine, atol=1e-5, rtol=1e-4)


def test_distilled_cross_encoder_card(hub_bert, tiny_bert, data_dir, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from ragr.cli.main import app
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(1)
    teacher = tmp_path / "teacher"
    CrossEncoder.from_pretrained(tiny_bert, max_length=32).save(teacher)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill", "--quiet", f"teacher.name_or_path={teacher}", f"student.name_or_path={hub_bert}",
                                   "student.max_length=32", f"data.train={data_dir / 'train.jsonl'}",
                                   f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=1", "trainer.batch_size=4",
                                   f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    card = load_card(run / "model" / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("sentence-transformers", "text-ranking")
    assert card.data.base_model == "ragr-tests/tiny-bert"
    assert {"distillation", "cross-encoder", "reranker"} <= set(card.data.tags)
    after = json.loads((run / "eval.json").read_text())["after"]
    assert "teacher_spearman" in after and index_metrics(card) == dev_only(after)
    assert str(teacher) in card.text and "CrossEncoder(" in card.text
    assert STCrossEncoder(str(run / "model"), device="cpu").predict([("a", "b")]).shape == (1,)


def test_a_card_failure_keeps_the_model(tiny_overrides, tmp_path, monkeypatch, capfd):
    from sentence_transformers import SentenceTransformer

    import ragr.train.card as card_mod

    def broken(self):
        raise RuntimeError("card exploded")

    monkeypatch.setattr(card_mod._RunInfo, "body", broken)
    run = tmp_path / "run"
    run_local(compose_config("train", tiny_overrides + ["data.eval=null", "trainer.max_steps=1"]), quiet=True)
    assert "card exploded" in capfd.readouterr().err
    assert not (run / "model" / "README.md").exists()
    assert SentenceTransformer(str(run / "model"), device="cpu").encode(["x"]).shape[0] == 1


def test_card_without_optional_information(tmp_path):
    """No metrics, no manifest, no metrics log, no dev data, no hub id: still a card the hub parses."""
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = {"model": {"family": "cross_encoder", "name_or_path": str(tmp_path)}, "data": {"train": None, "eval": None},
           "output_dir": str(tmp_path)}
    (folder / "README.md").write_text(render_model_card(folder, cfg), encoding="utf-8")
    card = load_card(folder / "README.md")
    assert card.data.base_model is None and card.data.eval_results is None
    assert card.data.pipeline_tag == "text-ranking"
    assert "No dev evaluation" in card.text and f"the local model `{tmp_path}`" in card.text


def test_hub_datasets_go_to_the_front_matter(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    cfg = {"model": {"family": "embedder", "name_or_path": "BAAI/bge-small-en-v1.5"}, "name": "x",
           "data": {"train": "hf:org/pairs:triplet@train", "eval": "hf:org/dev@validation"}, "output_dir": str(tmp_path)}
    text = render_model_card(folder, cfg, metrics={"ndcg@10": 0.5, "num_queries": 3}, step=2)
    (folder / "README.md").write_text(text, encoding="utf-8")
    card = load_card(folder / "README.md")
    assert card.data.datasets == ["org/pairs"] and card.data.base_model == "BAAI/bge-small-en-v1.5"
    (r,) = card.data.eval_results
    assert (r.dataset_type, r.dataset_split, r.metric_type, r.metric_value) == ("org/dev", "validation", "ndcg@10", 0.5)


def test_hub_id_resolution(tmp_path, hub_bert):
    from ragr.config.resolvers import bundled

    assert hub_id("minilm") == ("sentence-transformers/all-MiniLM-L6-v2", None)  # an alias
    assert hub_id(bundled("minilm")) == ("sentence-transformers/all-MiniLM-L6-v2", None)  # the bundled copy
    assert hub_id("BAAI/bge-m3") == ("BAAI/bge-m3", None)
    assert hub_id(hub_bert) == ("ragr-tests/tiny-bert", REV)
    assert hub_id(str(tmp_path)) == (None, None)  # a plain local folder has no hub id
    assert hub_id("./not/here") == (None, None) and hub_id(None) == (None, None)
    assert parse_hf_spec("hf:org/name:cfg@test") == {"name": "org/name", "config": "cfg", "split": "test"}
    assert parse_hf_spec("hf:squad") == {"name": "squad", "config": None, "split": None}
    assert parse_hf_spec("data/x.jsonl") is None


def test_loss_table_is_small_and_keeps_both_ends():
    records = [{"step": s, "epoch": 0, "lr": 1e-5, "loss": 1.0 / s, "samples_per_s": 9.0} for s in range(1, 51)]
    records.insert(10, {"step": 10, "event": "eval_step", "eval/map": 0.5})
    cols, rows = loss_rows(records)
    assert cols == ["step", "epoch", "loss", "lr"]
    steps = [r[0] for r in rows]
    assert len(rows) == 20 and steps[0] == 1 and steps[-1] == 50 and steps == sorted(set(steps))
    _, rows = loss_rows(records, step=5)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
