"""LLM rerankers on a decoder (Qwen, Llama, Gemma ...), two ways:

* ``llm_seqcls`` — a sequence-classification head (one label) on the last real token;
* ``llm_yes`` — generative: the logit of a "yes" token at the last position after a prompt
  (optionally minus the logit of "no"), one forward pass, no generation.

The input text is built from a :class:`ragr.infer.presets.PromptFormat`. Fine-tuning may go through
LoRA (peft); the result is saved merged (a plain transformers folder) or as a peft adapter beside a
``ragr.json`` that records the family, prompt and length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ragr.errors import UserError
from ragr.infer.base import ModuleScorer
from ragr.infer.presets import DEFAULT_SEQCLS, DEFAULT_YES, PromptFormat


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


class LLMReranker(nn.Module, ModuleScorer):
    """A decoder scoring a (query, document) pair, by a classification head or by the "yes" logit.

    Args:
        backbone: ``AutoModelForSequenceClassification`` (head ``seqcls``) or ``AutoModelForCausalLM``
            (head ``yes``), possibly wrapped in a peft model.
        tokenizer: its tokenizer.
        prompt: how a pair becomes text.
        max_length: the longest input in tokens (the fixed prompt segments always fit).
        merge_lora: on save, merge LoRA weights into the model (else save the adapter).
    """

    head: ClassVar[str] = "yes"
    family: ClassVar[str] = "llm_yes"
    #: from_pretrained arguments filled by code, not by the config
    runtime_args = ("dtype", "key")

    def __init__(self, backbone: nn.Module, tokenizer, prompt: PromptFormat, max_length: int = 512,
                 merge_lora: bool = True) -> None:
        super().__init__()
        self.backbone, self.tokenizer, self.prompt = backbone, tokenizer, prompt
        self.max_length, self.merge_lora = int(max_length), merge_lora
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._fixed = {i: self._ids(prompt.fill(i)) for i in range(len(prompt.segments))
                       if i not in (prompt.query_index, prompt.doc_index)}
        self._bos = [tokenizer.bos_token_id] if prompt.bos and tokenizer.bos_token_id is not None else []
        self.yes_id = self._token_id(prompt.yes_token) if self.head == "yes" else None
        self.no_id = self._token_id(prompt.no_token) if self.head == "yes" and prompt.no_token else None
        fixed = len(self._bos) + sum(len(v) for v in self._fixed.values())
        if fixed + 2 > self.max_length:
            raise UserError(f"the prompt alone takes {fixed} tokens; max_length={self.max_length} leaves no room")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        max_length: int | None = None,
        prompt: dict | None = None,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        merge_lora: bool = True,
        dtype: torch.dtype | None = None,
        key: str = "model.name_or_path",
    ) -> LLMReranker:
        """Load a decoder (or a ragr-saved LLM reranker, merged or adapter) and its prompt format.

        Args:
            name_or_path: model folder, alias or hub id.
            max_length: input length in tokens; None: the folder's ``ragr.json`` value, else 512.
            prompt: a :class:`PromptFormat` as a dict (``segments``, ``bos``, ``instruction``,
                ``yes_token``, ``no_token``); None: the folder's ``ragr.json`` prompt, else the default.
            lora_r: LoRA rank; 0 trains every weight.
            lora_alpha, lora_dropout, lora_target_modules: LoRA settings (``None`` targets all linear layers).
            merge_lora: save merged weights (True) or the adapter alone (False).
        """
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        meta = _read_json(path / "ragr.json")
        adapter = _read_json(path / "adapter_config.json")
        base_path = adapter.get("base_model_name_or_path") if adapter else None
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        auto = AutoModelForSequenceClassification if cls.head == "seqcls" else AutoModelForCausalLM
        if cls.head == "seqcls":
            kwargs["num_labels"] = 1
        tokenizer = AutoTokenizer.from_pretrained(path if (path / "tokenizer_config.json").is_file() or not base_path else base_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if adapter:
            from peft import PeftModel

            base = auto.from_pretrained(resolve_model_path(base_path, key), **kwargs)
            base.config.pad_token_id = tokenizer.pad_token_id
            backbone = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        else:
            backbone = auto.from_pretrained(path, **kwargs)
        backbone.config.pad_token_id = tokenizer.pad_token_id
        if lora_r:
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                              target_modules=lora_target_modules or "all-linear",
                              task_type="SEQ_CLS" if cls.head == "seqcls" else "CAUSAL_LM")
            backbone = get_peft_model(backbone, lcfg)
        fmt = PromptFormat.from_dict(prompt if prompt is not None else meta.get("prompt")) if (
            prompt is not None or meta.get("prompt")) else (DEFAULT_SEQCLS if cls.head == "seqcls" else DEFAULT_YES)
        max_length = max_length or meta.get("max_length") or 512
        return cls(backbone, tokenizer, fmt, max_length=max_length, merge_lora=merge_lora)

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> LLMReranker:
        return cls.from_pretrained(path, max_length=max_length, dtype=dtype, **options).to(device).eval()

    # ---- tokenization -------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _token_id(self, token: str) -> int:
        ids = self._ids(token)
        if len(ids) != 1:
            raise UserError(f"the answer token {token!r} is {len(ids)} tokens for this tokenizer; it must be exactly one")
        return ids[0]

    def _query_ids(self, query: str) -> list[int]:
        return self._ids(self.prompt.fill(self.prompt.query_index, query=query))[: self.max_length * 3 // 4]

    def _fixed_len(self) -> int:
        return len(self._bos) + sum(len(v) for v in self._fixed.values())

    def encode_pair(self, query: str, doc: str) -> list[int]:
        """Token ids of one pair: fixed segments whole, query segment capped, document segment fit to what is left."""
        p = self.prompt
        q = self._query_ids(query)
        budget = max(0, self.max_length - self._fixed_len() - len(q))
        d = self._ids(p.fill(p.doc_index, document=doc))[:budget]
        ids = list(self._bos)
        for i in range(len(p.segments)):
            ids += q if i == p.query_index else d if i == p.doc_index else self._fixed[i]
        return ids

    def doc_budget(self, query: str) -> int:
        p = self.prompt
        empty_doc = len(self._ids(p.fill(p.doc_index, document="")))
        return max(1, self.max_length - self._fixed_len() - len(self._query_ids(query)) - empty_doc)

    def tokenize(self, queries: list[str], docs: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` / ``attention_mask`` for a batch of pairs."""
        seqs = [self.encode_pair(q, d) for q, d in zip(queries, docs)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ---- forward ------------------------------------------------------------------------------
    def _hf(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        """Scores ``[N]`` read at each sequence's last real token (right padding)."""
        hf = self._hf()
        decoder = getattr(hf, hf.base_model_prefix)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.long().sum(1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.head == "seqcls":
            return hf.score(h)[:, 0]
        logits = hf.get_output_embeddings()(h)
        cap = getattr(hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        score = logits[:, self.yes_id]
        if self.no_id is not None:
            score = score - logits[:, self.no_id]
        return score

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model (LoRA merged, or the peft adapter when ``merge_lora`` is False), tokenizer, ``ragr.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(self.backbone, "get_base_model") and self.merge_lora:
            # merged weights written without merging the live model: a mid-training save keeps LoRA training
            from ragr.models.lora import merged_lora_state

            self.backbone.get_base_model().save_pretrained(path, state_dict=merged_lora_state(self.backbone))
        else:
            self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {"family": self.family, "max_length": self.max_length, "prompt": self.prompt.to_dict()}
        (path / "ragr.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))


class LLMYesReranker(LLMReranker):
    """Generative LLM reranker: the logit of the "yes" token at the last position of the prompt."""

    head = "yes"
    family = "llm_yes"


class LLMSeqClsReranker(LLMReranker):
    """LLM reranker with a one-label classification head on the last real token."""

    head = "seqcls"
    family = "llm_seqcls"
