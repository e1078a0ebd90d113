"""`ragr train model=colbert loss=infonce` on a tiny BERT: runs, evaluates, resumes, and its model reranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app


def ragr(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def overrides(tiny_bert, data_dir, tmp_path) -> list[str]:
    return ["model=colbert", "loss=infonce", f"model.name_or_path={tiny_bert}", "model.dim=16",
            "model.max_query_length=16", "model.max_doc_length=32",
            f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}",
            "trainer.max_steps=2", "trainer.batch_size=4", "trainer.save_every=1", "trainer.log_every=1",
            f"output_dir={tmp_path / 'run'}"]


def test_train_colbert_runs_resumes_and_reranks(overrides, data_dir, tmp_path):
    run = tmp_path / "run"
    ragr("train", "--quiet", *overrides)
    assert (run / "model" / "colbert_linear.pt").is_file()
    meta = json.loads((run / "model" / "ragr.json").read_text())
    assert meta["family"] == "colbert" and meta["dim"] == 16
    evals = json.loads((run / "eval.json").read_text())
    assert set(evals) - {"verdict"} == {"before", "after"} and evals["after"]["num_queries"] == 12
    losses = [json.loads(l)["loss"] for l in open(run / "metrics.jsonl") if '"loss"' in l]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]

    # resume to more steps from the latest checkpoint
    ragr("train", "--quiet", *overrides, "trainer.max_steps=3", "trainer.resume=auto")
    assert (run / "checkpoints" / "step-3").is_dir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("step-2")
    steps = [json.loads(l)["step"] for l in open(run / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3]

    # the saved model reranks: scores agree with the model's own MaxSim on the same pairs
    from ragr.models.colbert import ColBERT, maxsim, pad_vectors

    model = ColBERT.from_pretrained(str(run / "model"))
    queries, docs = ["who wrote hamlet?"] * 2, ["Hamlet is a tragedy by Shakespeare.", "Spiders have eight legs."]
    expected = maxsim(*pad_vectors(model.encode(queries[:1], True)), *pad_vectors(model.encode(docs, False)))[0]
    _rerank_and_compare(run / "model", queries, docs, expected.tolist(), tmp_path)


def _rerank_and_compare(model_dir, queries, docs, expected, tmp_path):
    from ragr.cli import main as cli_main

    has_rerank = any(c.name == "rerank" for c in cli_main.app.registered_commands)
    if has_rerank:
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in zip(queries, docs)))
        out = CliRunner().invoke(app, ["rerank", "--model", str(model_dir)], input=pairs.read_text())
        assert out.exit_code == 0, out.output
        rows = [json.loads(l) for l in out.stdout.splitlines() if l.strip().startswith("{")]
        got = [r["score"] for r in rows]
    else:  # no rerank CLI yet: the registered scorer directly
        from ragr.infer.colbert import ColBERTScorer

        got = ColBERTScorer.load(str(model_dir)).score_pairs(queries, docs)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_colbert_rejects_a_loss_without_score_matrix(overrides, tmp_path):
    from ragr.config import compose_config
    from ragr.errors import UserError
    from ragr.launch.local import run_local

    base = [o for o in overrides if not o.startswith("loss=")]
    with pytest.raises(UserError, match="cannot train a colbert model"):  # caught when the config is composed
        compose_config("train", base + ["loss=mrl", "loss.dims=[8]"])
    cfg = compose_config("train", base)
    cfg["loss"] = {"name": "mrl", "dims": [8], "inner": cfg["loss"]}  # and, past validation, when the loss is built
    with pytest.raises(UserError, match="loss=mrl does not apply to colbert models"):
        run_local(cfg, quiet=True)


def test_own_group_loss_equals_full_matrix_loss_without_in_batch(tiny_bert_nodropout):
    """The in_batch_negatives=false shortcut (only own groups scored) gives InfoNCE's own-group loss."""
    from ragr.families import get_family
    from ragr.losses.infonce import InfoNCE
    from ragr.models.colbert import ColBERT

    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8).eval()
    q = model.tokenize(["a b", "c d e"], True)
    d = model.tokenize(["x", "y z", "p q r", "s"], False)
    qv, dv = model(**q), model(**d)
    loss_fn = InfoNCE(temperature=0.1, in_batch_negatives=False)
    short = loss_fn.score_loss(get_family("colbert").own_group_scores(model, (qv, q["token_mask"]), (dv, d["token_mask"])))
    full = loss_fn.score_loss(model.score_matrix(qv, q["token_mask"], dv, d["token_mask"]))
    torch.testing.assert_close(short["loss"], full["loss"])


def test_chunked_token_vectors_equal_one_padded_forward(tiny_bert_nodropout):
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward
    from ragr.models.colbert import ColBERT

    model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8, max_doc_length=64).eval()
    texts = ["short", "a much longer document " * 6, "mid sized text here", "x"]
    feats = model.tokenize(texts, is_query=False)
    with torch.no_grad():
        plain = model(**feats)
        chunked, mask = get_family("colbert").encode(ChunkedForward(model, model, "cpu", chunk_size=2), texts, is_query=False)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-4)
    assert torch.equal(mask, feats["token_mask"])
