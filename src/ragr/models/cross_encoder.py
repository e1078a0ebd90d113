"""Cross-encoder reranker: ``AutoModelForSequenceClassification`` with one label over (query, document).

Saved as a plain transformers folder (plus ``ragr.json``), so ``sentence_transformers.CrossEncoder(path)``
and ``AutoModelForSequenceClassification.from_pretrained(path)`` load it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragr.infer.base import ModuleScorer
from ragr.models.attention import shape_stable_attention


def _read_ragr_json(path: Path) -> dict[str, Any]:
    f = path / "ragr.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def default_max_length(tokenizer, config, cap: int = 512) -> int:
    """The longest input a checkpoint takes: min(cap, tokenizer.model_max_length, position embeddings)."""
    limits = [cap]
    if isinstance(getattr(tokenizer, "model_max_length", None), int) and tokenizer.model_max_length < 10**6:
        limits.append(tokenizer.model_max_length)
    mpe = getattr(config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        limits.append(mpe - (2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0))
    return min(limits)


class CrossEncoder(nn.Module, ModuleScorer):
    """A BERT-family cross-encoder scoring a (query, document) pair with one logit.

    Args:
        backbone: a ``transformers`` sequence-classification model.
        tokenizer: its tokenizer.
        max_length: pairs are truncated to this many tokens (longest sequence first, as
            sentence-transformers does).
    """

    family = "cross_encoder"
    #: from_pretrained arguments filled by code, not by the config
    runtime_args = ("dtype", "key")

    def __init__(self, backbone: nn.Module, tokenizer, max_length: int = 512) -> None:
        super().__init__()
        self.backbone, self.tokenizer, self.max_length = backbone, tokenizer, int(max_length)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int | None = None, dtype: torch.dtype | None = None,
                        key: str = "model.name_or_path") -> CrossEncoder:
        """Load a cross-encoder, or put a fresh one-label head on an encoder backbone (BERT, XLM-R ...).

        ``max_length`` None takes the folder's ``ragr.json`` value, else the checkpoint's limit (at most 512).
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        config = AutoConfig.from_pretrained(path)
        has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        kwargs: dict[str, Any] = {} if has_head else {"num_labels": 1}
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:  # SDPA attention (fused kernels on CPU and GPU); transformers' own default for BERT-likes
            backbone = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError):  # an architecture without SDPA support
            backbone = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if max_length is None:
            max_length = _read_ragr_json(path).get("max_length") or default_max_length(tokenizer, backbone.config)
        return cls(backbone, tokenizer, max_length=max_length)

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> CrossEncoder:
        """Load for inference; under bf16/fp16 the scoring head (pooler, classifier) stays fp32."""
        model = cls.from_pretrained(path, max_length=max_length, dtype=dtype, **options)
        if dtype is not None and dtype != torch.float32:
            model.fp32_head()
        return model.to(device).eval()

    def fp32_head(self) -> CrossEncoder:
        """Keep the pooler and classification head in fp32 (inputs upcast), the encoder in its own dtype.

        The head is a tiny share of the compute; in fp32 the scores keep a full mantissa, so
        near-tied documents are not rounded onto the same bf16 value and the ranking stays stable.
        """
        def upcast(module, args, kwargs):
            cast = lambda v: v.float() if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
            return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

        for name, module in self.backbone.named_modules():
            last = name.rsplit(".", 1)[-1]
            if (name in ("classifier", "score") or (last == "pooler" and name.count(".") <= 1)) and module is not None:
                module.float()
                module.register_forward_pre_hook(upcast, with_kwargs=True)
        return self

    # ---- forward ------------------------------------------------------------------------------
    def tokenize(self, queries: list[str], docs: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(queries), list(docs), padding=True, truncation="longest_first",
                              max_length=self.max_length, return_tensors="pt")

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        """Scores ``[N]``: the logit (one label), or logit 1 - logit 0 for a two-label head."""
        logits = self.backbone(**features).logits
        if logits.shape[-1] == 1:
            return logits[:, 0]
        if logits.shape[-1] == 2:
            return logits[:, 1] - logits[:, 0]
        raise ValueError(f"a cross-encoder needs 1 or 2 labels, this one has {logits.shape[-1]}")

    def tokenize_pairs(self, queries: list[str], docs: list[str]) -> list[dict[str, list[int]]]:
        """Each pair's token ids (and token types), unpadded, truncated longest-first to ``max_length``."""
        enc = self.tokenizer(list(queries), list(docs), truncation="longest_first", max_length=self.max_length,
                             padding=False, return_attention_mask=False)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(queries))]

    def pad_features(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad one batch of :meth:`tokenize_pairs` features to its own longest pair."""
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out = {"input_ids": torch.full((len(features), width), pad_id, dtype=torch.long)}
        if "token_type_ids" in features[0]:
            out["token_type_ids"] = torch.zeros((len(features), width), dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, (f, n) in enumerate(zip(features, lengths)):
            cols = slice(width - n, width) if left else slice(0, n)
            for k in out:
                out[k][r, cols] = torch.tensor(f[k], dtype=torch.long)
            mask[r, cols] = 1
        if min(lengths) < width:  # no padding at all: no mask, the attention kernels take their fast path
            out["attention_mask"] = mask
        return out

    @torch.inference_mode()
    def score_tokenized(self, features: list[dict[str, list[int]]]) -> list[float]:
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats = {k: v.to(device) for k, v in self.pad_features(features).items()}
        with shape_stable_attention(device):
            scores = self(**feats).float().cpu().tolist()
        self.train(was_training)
        return scores

    def doc_budget(self, query: str) -> int:
        q = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        q = min(q, self.max_length // 2)
        return max(1, self.max_length - q - self.tokenizer.num_special_tokens_to_add(pair=True))

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a transformers folder (weights, config, tokenizer) and ``ragr.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.model_max_length = self.max_length  # sentence-transformers reads its max_length here
        self.tokenizer.save_pretrained(path)
        (path / "ragr.json").write_text(json.dumps({"family": self.family, "max_length": self.max_length}, indent=2))
