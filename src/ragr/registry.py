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
        self._objects: dict[str, Any] = {}  # entries registered as objects (defined at run time)

    def register(self, name: str, target: str, help: str = "") -> None:
        """Add ``name`` -> ``"module:Attr"``; registering a taken name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered as {self._entries[name].target}")
        if ":" not in target:
            raise ValueError(f"registry target must look like 'module:Attr', got {target!r}")
        self._entries[name] = Entry(name, target, help)

    def register_object(self, name: str, obj: Any, help: str = "") -> None:
        """Add ``name`` -> ``obj`` itself (a class or instance defined at run time, e.g. in a test module)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered as {self._entries[name].target}")
        self._entries[name] = Entry(name, f"{getattr(obj, '__module__', '?')}:{type(obj).__qualname__}", help)
        self._objects[name] = obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (run-time registrations, e.g. a test's family, clean up with this)."""
        self._entries.pop(name, None)
        self._objects.pop(name, None)

    def get(self, name: str) -> T:
        """Import and return the object registered as ``name``; unknown names raise UserError with a hint."""
        if name in self._objects:
            return self._objects[name]
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

#: Model families (ragr.families.Family subclasses): one module each, one line here.
families: Registry[Any] = Registry("model family")
families.register("embedder", "ragr.families.embedder:EmbedderFamily", "bi-encoder: cls/mean pooling, optional Dense head, L2 norm")
families.register("colbert", "ragr.families.colbert:ColBERTFamily", "late interaction: token vectors, MaxSim, bge-m3 layout")
families.register("cross_encoder", "ragr.families.rerankers:CrossEncoderFamily", "reranker: BERT-family cross-encoder, one logit")
families.register("llm_seqcls", "ragr.families.rerankers:LLMSeqClsFamily", "reranker: decoder + classification head on the last token")
families.register("llm_yes", "ragr.families.rerankers:LLMYesFamily", "reranker: decoder, logit of 'yes' after a prompt")

launchers: Registry[Any] = Registry("launcher")
launchers.register("local", "ragr.launch.local:run_local", "run in this process (CPU or one GPU)")

ALL: dict[str, Registry[Any]] = {"losses": losses, "models": families, "launchers": launchers}

# ---- rerankers (issue 3) -------------------------------------------------------------------------
losses.register("pointwise", "ragr.losses.rerank:PointwiseLoss", "reranker: BCE on labels scaled to [0,1], or MSE on sigmoid")
losses.register("pairwise", "ragr.losses.rerank:PairwiseLoss", "reranker: RankNet over pairs in a group, weighted by label gap")
losses.register("listwise", "ragr.losses.rerank:ListwiseLoss", "reranker: cross-entropy over a group (one positive or graded labels)")

#: Inference-only scorers (ragr.infer.Scorer subclasses, e.g. from @register_scorer or a plug-in); every model
#: family above scores too, through its Family.scorer_class() (see ragr/infer/base.py:scorer_class).
scorers: Registry[Any] = Registry("reranker family")
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

# ---- sparse retrieval (issue 15) -----------------------------------------------------------------
families.register("splade", "ragr.families.splade:SpladeFamily", "learned sparse: MLM logits -> log(1+relu), max-pooled term weights, dot product")
losses.register("splade", "ragr.losses.splade:SpladeLoss", "sparse: InfoNCE on term-weight dot products + FLOPS regulariser (queries, documents)")
losses.register("splade-distill", "ragr.losses.splade:SpladeDistillLoss", "sparse distill: KL or margin-MSE to teacher scores + FLOPS regulariser")
families.register("bge_m3", "ragr.families.bge_m3:BGEM3Family", "unified: one encoder, dense (CLS) + sparse + ColBERT heads, bge-m3 layout")
losses.register("m3", "ragr.losses.m3:M3Loss", "bge-m3 unified: dense + sparse + ColBERT + ensemble InfoNCE, optional self-distillation")
