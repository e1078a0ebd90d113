"""Bi-encoder embedder: a Hugging Face encoder (or decoder) + pooling + optional Dense head + L2 norm.

Saved in the sentence-transformers layout, so ``SentenceTransformer(path)`` loads it unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ragr.models.attention import shape_stable_attention
from ragr.models.lora import merged_lora_state

POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``[B, L, H]`` with attention ``mask [B, L]`` into ``[B, H]``."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "last":  # the last real token, for left or right padding alike
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling '{mode}' (cls, mean, last)")


def _read_st_layout(path: Path) -> dict:
    """Pooling / Dense / Normalize / prompts found in a sentence-transformers folder (empty if none)."""
    found: dict = {}
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return found
    for mod in json.loads(modules_file.read_text()):
        kind = mod["type"].rsplit(".", 1)[-1]
        sub = path / mod.get("path", "")
        if kind == "Pooling":
            conf = json.loads((sub / "config.json").read_text())
            if "pooling_mode" in conf:
                mode = conf["pooling_mode"]
                mode = mode[0] if isinstance(mode, list) else mode
                found["pooling"] = {"lasttoken": "last"}.get(mode, mode)
            else:
                for name, key in POOLING_KEYS.items():
                    if conf.get(key):
                        found["pooling"] = name
        elif kind == "Dense":
            found["dense_dir"] = str(sub)
        elif kind == "Normalize":
            found["normalize"] = True
    found.setdefault("normalize", False)
    st_conf = path / "config_sentence_transformers.json"
    if st_conf.is_file():
        prompts = json.loads(st_conf.read_text()).get("prompts") or {}
        if prompts.get("query"):
            found["query_prompt"] = prompts["query"]
        if prompts.get("document"):
            found["doc_prompt"] = prompts["document"]
    return found


class Embedder(nn.Module):
    """Encode texts into (optionally normalized) vectors.

    Args:
        backbone: a ``transformers`` base model (``AutoModel``).
        tokenizer: its tokenizer.
        pooling: ``cls``, ``mean`` or ``last`` (last real token; for decoder backbones).
        normalize: L2-normalize the output.
        dense: optional ``nn.Linear`` head applied after pooling (``dense_dim`` in the config).
        max_query_length / max_doc_length: truncation lengths in tokens.
        query_prompt / doc_prompt: text prepended to queries / documents.
    """

    family = "embedder"
    #: from_pretrained arguments filled by code, not by the config
    runtime_args = ("dtype", "key")

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        pooling: str = "mean",
        normalize: bool = True,
        dense: nn.Linear | None = None,
        max_query_length: int = 64,
        max_doc_length: int = 256,
        query_prompt: str = "",
        doc_prompt: str = "",
    ) -> None:
        super().__init__()
        if pooling not in POOLING_KEYS:
            raise ValueError(f"unknown pooling '{pooling}' (cls, mean, last)")
        self.backbone, self.tokenizer, self.dense = backbone, tokenizer, dense
        self.pooling, self.normalize = pooling, normalize
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.query_prompt, self.doc_prompt = query_prompt, doc_prompt

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        pooling: Literal["cls", "mean", "last"] | None = None,
        normalize: bool | None = None,
        dense_dim: int | None = None,
        max_query_length: int = 64,
        max_doc_length: int = 256,
        query_prompt: str = "",
        doc_prompt: str = "",
        padding_side: Literal["left", "right"] | None = None,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        dtype: torch.dtype | None = None,
        key: str = "model.name_or_path",
    ) -> Embedder:
        """Load a backbone (and any sentence-transformers Pooling/Dense/Normalize/prompts it ships).

        What the model folder says about pooling, Dense and normalization wins over the arguments,
        so a saved model reloads exactly; arguments fill in what the folder does not say.

        LLM embedders: a decoder checkpoint loads as its base model (``AutoModel``); use
        ``pooling="last"`` (the last real token, for either padding side) and ``padding_side`` to
        pad on the left as decoder embedders usually do (None keeps the tokenizer's). ``lora_r > 0``
        wraps the backbone in peft LoRA (``lora_target_modules`` None: every linear layer); :meth:`save`
        writes the weights with LoRA merged in (the live model keeps its adapters), so the saved folder
        stays a plain sentence-transformers model.
        """
        from transformers import AutoModel, AutoTokenizer

        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        st = _read_st_layout(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = AutoModel.from_pretrained(path, **kwargs)
        hidden = backbone.config.hidden_size
        dense = None
        if "dense_dir" in st:
            dense = _load_dense(Path(st["dense_dir"]))
        elif dense_dim:
            dense = nn.Linear(hidden, dense_dim)
        if dense is not None and dtype is not None:
            dense = dense.to(dtype)  # the head computes in the backbone's dtype
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if padding_side is not None:
            tokenizer.padding_side = padding_side
        if lora_r:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(
                r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                target_modules=lora_target_modules or "all-linear", task_type="FEATURE_EXTRACTION"))
        return cls(
            backbone,
            tokenizer,
            pooling=pooling or st.get("pooling", "mean"),  # an explicit setting wins over what the folder says
            normalize=normalize if normalize is not None else (st["normalize"] if "pooling" in st else True),
            dense=dense,
            max_query_length=max_query_length,
            max_doc_length=max_doc_length,
            query_prompt=st.get("query_prompt", query_prompt),
            doc_prompt=st.get("doc_prompt", doc_prompt),
        )

    @property
    def dim(self) -> int:
        return self.dense.out_features if self.dense is not None else self.backbone.config.hidden_size

    # ---- forward ------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        prompt = self.query_prompt if is_query else self.doc_prompt
        max_len = self.max_query_length if is_query else self.max_doc_length
        return self.tokenizer(
            [prompt + t for t in texts], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        emb = pool(out.last_hidden_state, attention_mask, self.pooling)
        if self.dense is not None:
            emb = self.dense(emb)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.no_grad()
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 64, progress=None) -> torch.Tensor:
        """Embed ``texts`` (length-sorted batches to cut padding); returns a float32 CPU tensor ``[N, dim]``."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], is_query).items()}
            with shape_stable_attention(device):
                out[idx] = self(**feats).float().cpu()
            if progress is not None:
                progress(len(idx))
        self.train(was_training)
        return out

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a sentence-transformers folder: backbone + tokenizer at the root, then Pooling/Dense/Normalize."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(self.backbone, "get_base_model"):  # LoRA: save merged weights, so the folder is a plain model
            self.backbone.get_base_model().save_pretrained(path, state_dict=merged_lora_state(self.backbone))
        else:
            self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        hidden = self.backbone.config.hidden_size
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max(self.max_query_length, self.max_doc_length), "do_lower_case": False}, indent=2)
        )
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": hidden, **{k: self.pooling == n for n, k in POOLING_KEYS.items()}}
        pooling.update(pooling_mode_max_tokens=False, pooling_mode_mean_sqrt_len_tokens=False, include_prompt=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
        if self.dense is not None:
            ddir = path / "2_Dense"
            ddir.mkdir(exist_ok=True)
            (ddir / "config.json").write_text(json.dumps({
                "in_features": self.dense.in_features, "out_features": self.dense.out_features,
                "bias": self.dense.bias is not None, "activation_function": "torch.nn.modules.linear.Identity",
            }, indent=2))
            tensors = {"linear.weight": self.dense.weight.detach().float().cpu().contiguous()}
            if self.dense.bias is not None:
                tensors["linear.bias"] = self.dense.bias.detach().float().cpu().contiguous()
            save_file(tensors, str(ddir / "model.safetensors"))
            modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        if self.normalize:
            n = len(modules)
            modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        prompts = {"query": self.query_prompt, "document": self.doc_prompt}
        (path / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"},
            indent=2,
        ))
        (path / "ragr.json").write_text(json.dumps({"family": self.family}, indent=2))


def _load_dense(path: Path) -> nn.Linear:
    from safetensors.torch import load_file

    conf = json.loads((path / "config.json").read_text())
    act = conf.get("activation_function", "torch.nn.modules.linear.Identity")
    if not act.endswith("Identity"):
        raise ValueError(f"{path}: Dense activation {act} is not supported (only Identity)")
    layer = nn.Linear(conf["in_features"], conf["out_features"], bias=conf.get("bias", True))
    weights_file = path / "model.safetensors"
    state = load_file(str(weights_file)) if weights_file.is_file() else torch.load(path / "pytorch_model.bin", map_location="cpu",
                                                                                        weights_only=True)
    layer.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return layer
