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

from ragr.infer.base import Scorer


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


class CrossEncoder(nn.Module, Scorer):
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
        backbone = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if max_length is None:
            max_length = _read_ragr_json(path).get("max_length") or default_max_length(tokenizer, backbone.config)
        return cls(backbone, tokenizer, max_length=max_length)

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> CrossEncoder:
        return cls.from_pretrained(path, max_length=max_length, dtype=dtype, **options).to(device).eval()

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

    @torch.no_grad()
    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats = {k: v.to(device) for k, v in self.tokenize(queries, docs).items()}
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
