"""FSDP wraps the model's own transformer layer class, found from the model (never a hard-coded BertLayer)."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import GemmaConfig, LlamaConfig, Qwen2Config, XLMRobertaConfig

from ragr.errors import UserError
from ragr.launch.layers import layer_classes_for_model, transformer_layer_classes

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128)


def test_tiny_bert_wraps_bertlayer(tiny_bert):
    assert layer_classes_for_model({"name_or_path": tiny_bert}) == ["BertLayer"]


@pytest.mark.parametrize("config, expected", [
    (Qwen2Config(num_key_value_heads=2, **TINY), "Qwen2DecoderLayer"),
    (LlamaConfig(num_key_value_heads=2, **TINY), "LlamaDecoderLayer"),
    (GemmaConfig(num_key_value_heads=2, head_dim=16, **TINY), "GemmaDecoderLayer"),
    (XLMRobertaConfig(**TINY), "XLMRobertaLayer"),
])
def test_decoder_and_encoder_families(tmp_path, config, expected):
    config.save_pretrained(tmp_path)  # a config alone: the skeleton is built on the meta device
    assert layer_classes_for_model({"name_or_path": str(tmp_path)}) == [expected]


def test_found_inside_ragr_model_wrappers(tiny_bert):
    from ragr.models.embedder import Embedder

    model = Embedder.from_pretrained(tiny_bert, dense_dim=16)
    assert transformer_layer_classes(model) == ["BertLayer"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ff = nn.Linear(8, 8)


class NoList(nn.Module):
    _no_split_modules = ["Block", "MissingBlock", "FooEmbeddings"]

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = Block(), Block(), nn.Linear(8, 2)


def test_falls_back_to_no_split_modules_present_in_the_model():
    assert transformer_layer_classes(NoList()) == ["Block"]


def test_the_largest_layer_stack_wins():
    model = nn.Module()
    model.small = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    model.blocks = nn.ModuleList([Block(), Block()])
    assert transformer_layer_classes(model) == ["Block"]


def test_no_layers_is_a_user_error_naming_the_override(tmp_path):
    with pytest.raises(UserError, match="launcher.layer_cls"):
        layer_classes_for_model({"name_or_path": str(tmp_path)})  # no config.json
