"""LLM embedders: a decoder backbone with last-token pooling (either padding side), query instructions, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.models.embedder import Embedder

TEXTS = ["how far is the moon?", "a", "The quick brown fox jumps over the lazy dog near the river bank."]


def manual_last_token(path: str, texts: list[str]) -> torch.Tensor:
    """Each text alone (no padding) through the transformers base model; the last position's state, normalized."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")
            out.append(model(**ids).last_hidden_state[0, -1])
    return F.normalize(torch.stack(out), dim=-1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_pooling_equals_a_manual_forward_under_both_padding_sides(tiny_llama, side):
    model = Embedder.from_pretrained(tiny_llama, pooling="last", padding_side=side)
    assert model.tokenizer.padding_side == side
    feats = model.tokenize(TEXTS, is_query=False)
    pad_col = 0 if side == "left" else -1
    assert feats["attention_mask"][1, pad_col] == 0  # the short text really is padded on that side
    want = manual_last_token(tiny_llama, TEXTS)
    assert torch.allclose(model.encode(TEXTS, batch_size=3), want, atol=1e-5)
    # the training path (length-sorted chunks, gradients on) pools the same token
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward

    model.eval()
    with torch.no_grad():
        got = get_family("embedder").encode(ChunkedForward(model, model, "cpu", chunk_size=2), TEXTS, is_query=False)
    assert torch.allclose(got, want, atol=1e-5)


def test_query_instruction_is_prepended_to_queries_only(tiny_llama):
    prompt = "Instruct: find the answer\nQuery:"
    model = Embedder.from_pretrained(tiny_llama, pooling="last", padding_side="left", query_prompt=prompt)
    assert torch.allclose(model.encode(TEXTS, is_query=True), manual_last_token(tiny_llama, [prompt + t for t in TEXTS]), atol=1e-5)
    assert torch.allclose(model.encode(TEXTS, is_query=False), manual_last_token(tiny_llama, TEXTS), atol=1e-5)


def test_lora_trains_only_adapters_and_saves_merged(tiny_llama, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = Embedder.from_pretrained(tiny_llama, pooling="last", padding_side="left", lora_r=4, lora_alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.allclose(model.encode(TEXTS), manual_last_token(tiny_llama, TEXTS), atol=1e-5)  # LoRA B starts at 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    changed = model.encode(TEXTS)
    model.save(tmp_path / "m")
    # saving (also mid-training, for the best checkpoint) leaves the LoRA model as it was
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert torch.allclose(model.encode(TEXTS), changed, atol=1e-6)
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["LlamaModel"]
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert st.tokenizer.padding_side == "left"
    assert torch.allclose(torch.tensor(st.encode(TEXTS)), changed, atol=1e-5)
    assert torch.allclose(Embedder.from_pretrained(str(tmp_path / "m")).encode(TEXTS), changed, atol=1e-5)


@pytest.mark.parametrize("loss", ["infonce", "mrl"])
def test_llm_embedder_trains_with_infonce_and_mrl_lora_and_checkpointing(tiny_llama, data_dir, tmp_path, loss):
    from sentence_transformers import SentenceTransformer

    extra = ["loss.dims=[16,32]"] if loss == "mrl" else []
    res = CliRunner().invoke(app, [
        "train", "--quiet", "model=llm-embedder", f"model.name_or_path={tiny_llama}", "model.lora_r=4",
        "model.max_query_length=32", "model.max_doc_length=32", f"loss={loss}", *extra,
        f"data.train={data_dir / 'train.jsonl'}", "data.eval=null", "trainer.max_steps=2", "trainer.batch_size=4",
        "trainer.gradient_checkpointing=true", f"output_dir={tmp_path / 'run'}"])
    assert res.exit_code == 0, res.output
    saved = tmp_path / "run" / "model"
    ours = Embedder.from_pretrained(str(saved))
    assert ours.pooling == "last" and ours.query_prompt.startswith("Instruct:")
    st = SentenceTransformer(str(saved), device="cpu")
    assert torch.allclose(torch.tensor(st.encode(TEXTS)), ours.encode(TEXTS), atol=1e-5)


def test_a_dense_head_follows_the_dtype(tiny_bert):
    """bf16 weights with a Dense head (as a teacher on a GPU loads them) encode without a dtype clash."""
    model = Embedder.from_pretrained(tiny_bert, dense_dim=8, dtype=torch.bfloat16)
    assert model.dense.weight.dtype == torch.bfloat16
    assert model.encode(TEXTS).shape == (3, 8)
