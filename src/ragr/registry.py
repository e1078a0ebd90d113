"""Typed, lazy registries: names in configs resolve here, never as dotted import paths.

Each entry is a ``"module:Attr"`` string imported on first use, so ``ragr ls`` and ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ragr.errors import UserError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    help: str


class Registry(Generic[T]):
    """A named collection of lazily imported objects of one kind (losses, model families, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str, help: str = "") -> None:
        """Add ``name`` -> ``"module:Attr"``; registering a taken name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered as {self._entries[name].target}")
        if ":" not in target:
            raise ValueError(f"registry target must look like 'module:Attr', got {target!r}")
        self._entries[name] = Entry(name, target, help)

    def get(self, name: str) -> T:
        """Import and return the object registered as ``name``; unknown names raise UserError with a hint."""
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"choices: {', '.join(sorted(self._entries))}"
            )
        module, attr = self._entries[name].target.split(":")
        return getattr(importlib.import_module(module), attr)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> list[Entry]:
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self) -> list[str]:
        return sorted(self._entries)


losses: Registry[Any] = Registry("loss")
losses.register("infonce", "ragr.losses.infonce:InfoNCE", "contrastive loss over positive, hard and in-batch negatives")
losses.register("mrl", "ragr.losses.mrl:MatryoshkaLoss", "Matryoshka: an inner loss averaged over prefix dimensions")

families: Registry[Any] = Registry("model family")
families.register("embedder", "ragr.models.embedder:Embedder", "bi-encoder: cls/mean pooling, optional Dense head, L2 norm")
families.register("colbert", "ragr.models.colbert:ColBERT", "late interaction: token vectors, MaxSim, bge-m3 layout")

launchers: Registry[Any] = Registry("launcher")
launchers.register("local", "ragr.launch.local:run_local", "run in this process (CPU or one GPU)")

ALL: dict[str, Registry[Any]] = {"losses": losses, "models": families, "launchers": launchers}

tasks: Registry[Any] = Registry("training task")
tasks.register("embedder", "ragr.train.tasks:EmbedderTask", "InfoNCE/MRL bi-encoder training, reranking eval")
tasks.register("colbert", "ragr.train.colbert_task:ColBERTTask", "InfoNCE on MaxSim scores, reranking eval")

ALL["tasks"] = tasks

# ---- rerankers (issue 3) -------------------------------------------------------------------------
losses.register("pointwise", "ragr.losses.rerank:PointwiseLoss", "reranker: BCE on labels scaled to [0,1], or MSE on sigmoid")
losses.register("pairwise", "ragr.losses.rerank:PairwiseLoss", "reranker: RankNet over pairs in a group, weighted by label gap")
losses.register("listwise", "ragr.losses.rerank:ListwiseLoss", "reranker: cross-entropy over a group (one positive or graded labels)")

families.register("cross_encoder", "ragr.models.cross_encoder:CrossEncoder", "reranker: BERT-family cross-encoder, one logit")
families.register("llm_seqcls", "ragr.models.llm_reranker:LLMSeqClsReranker", "reranker: decoder + classification head on the last token")
families.register("llm_yes", "ragr.models.llm_reranker:LLMYesReranker", "reranker: decoder, logit of 'yes' after a prompt")

tasks.register("cross_encoder", "ragr.train.rerank_task:RerankerTask", "pointwise/pairwise/listwise reranker training")
tasks.register("llm_seqcls", "ragr.train.rerank_task:RerankerTask", "pointwise/pairwise/listwise reranker training")
tasks.register("llm_yes", "ragr.train.rerank_task:RerankerTask", "pointwise/pairwise/listwise reranker training")

#: Inference scorers (ragr.infer.Scorer subclasses) by family; see ragr/infer/base.py for the interface.
scorers: Registry[Any] = Registry("reranker family")
scorers.register("cross_encoder", "ragr.models.cross_encoder:CrossEncoder", "BERT-family cross-encoder logit")
scorers.register("llm_seqcls", "ragr.models.llm_reranker:LLMSeqClsReranker", "LLM classification head on the last token")
scorers.register("llm_yes", "ragr.models.llm_reranker:LLMYesReranker", "LLM logit of 'yes' (minus 'no') after a prompt")
scorers.register("embedder", "ragr.infer.embedder:EmbedderScorer", "bi-encoder cosine similarity")
scorers.register("colbert", "ragr.infer.colbert:ColBERTScorer", "ColBERT MaxSim over token vectors")
ALL["rerankers"] = scorers

# ---- multi-process launchers (issue 7) -----------------------------------------------------------
launchers.register("ddp", "ragr.launch.distributed:run_distributed", "data-parallel ranks via torchrun: NCCL on GPUs, gloo on CPUs")
launchers.register("deepspeed-zero1", "ragr.launch.distributed:run_distributed", "DeepSpeed ZeRO-1 via accelerate (optimizer states sharded)")
launchers.register("deepspeed-zero2", "ragr.launch.distributed:run_distributed", "DeepSpeed ZeRO-2 via accelerate (+ gradients sharded; optimizer offload)")
launchers.register("deepspeed-zero3", "ragr.launch.distributed:run_distributed", "DeepSpeed ZeRO-3 via accelerate (+ parameters sharded; param offload)")
launchers.register("fsdp", "ragr.launch.distributed:run_distributed", "PyTorch FSDP via accelerate, wrapping the model's own layer class")

# ---- distillation (issue 5) ----------------------------------------------------------------------
losses.register("distill-kl", "ragr.losses.distill:KLDistillLoss", "distill: KL between teacher and student softmax over each query's candidates")
losses.register("distill-mse", "ragr.losses.distill:MSEDistillLoss", "distill: MSE between student and teacher scores (raw, or sigmoid vs probability)")
losses.register("distill-bce", "ragr.losses.distill:BCEDistillLoss", "distill: BCE of the student's logit against the teacher's probability")
losses.register("llm-preference", "ragr.losses.distill:LLMPreferenceLoss", "distill: retriever softmax vs softmax of given (LLM) scores, per query")
losses.register("stella", "ragr.losses.stella:StellaLoss", "distill: Stella/Jasper stage 3 from teacher vectors (cosine + sim MSE + hinge)")
tasks.register("distill-scores", "ragr.train.distill_task:ScoreDistillTask", "ragr distill: a student learns teacher scores (model or data)")
tasks.register("distill-vectors", "ragr.train.distill_task:VectorDistillTask", "ragr distill: Stella/Jasper stage 3 from teacher vectors")
