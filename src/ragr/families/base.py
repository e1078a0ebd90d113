"""The :class:`Family` contract: what every model family provides to training, evaluation and inference.

Outputs a family can produce (its ``produces``), and what consumes them:

* ``vectors`` — one vector per text (:meth:`Family.encode` -> ``[N, D]``); dot products score pairs.
  Consumed by the contrastive objective (InfoNCE, MRL) and the vectors objective (Stella).
* ``multivectors`` — token vectors per text (:meth:`Family.encode` -> ``([N, L, D], mask [N, L])``),
  scored by the family's :meth:`Family.similarity` (ColBERT's MaxSim). Contrastive objective.
* ``sparse`` — one vocabulary-wide term-weight vector per text (:meth:`Family.encode` -> ``[N, V]``, mostly
  zeros; SPLADE), scored by dot products. Consumed by the contrastive objective through sparse losses
  (``loss=splade``: ranking loss + FLOPS regulariser), which need the vectors, not only their scores.
* ``unified`` — one encoder's dense, sparse and token vectors at once (bge-m3), scored by the family's
  :meth:`Family.similarity` into a dict of score matrices (``dense``, ``sparse``, ``colbert``). Contrastive
  objective, through ``loss=m3``.
* ``pair_scores`` — one score per (query, document) pair (:meth:`Family.score_pairs`). Every family
  produces these (vector families through their similarity). The grouped-scores objective (reranker
  labels or teacher scores) consumes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

OUTPUTS = ("vectors", "multivectors", "sparse", "unified", "pair_scores")

#: Families registered at run time (:func:`register_family`), by name.
_LOCAL: dict[str, Family] = {}


class Family:
    """Base class of a model family. Subclasses set the class attributes and override what they produce.

    Attributes:
        name: the registry name (``model.family`` in configs; ``ragr.json``'s ``family``).
        model_class: an ``nn.Module`` class with ``from_pretrained(name_or_path, **options)`` and ``save(path)``;
            its ``from_pretrained`` keyword arguments are the family's config keys.
        produces: which of :data:`OUTPUTS` it computes.
        natural_temperature: the scale of its raw scores (distillation divides student scores by it
            when ``loss.temperature`` is null): 1 for logits, small for cosines.
        grad_cache: whether the contrastive objective can run it GradCache-style (``trainer.grad_cache``).
        token_budget: whether :meth:`example_costs` supports ``trainer.max_tokens_per_batch``.
    """

    name: ClassVar[str] = ""
    model_class: ClassVar[type] = nn.Module
    produces: ClassVar[tuple[str, ...]] = ("pair_scores",)
    natural_temperature: ClassVar[float] = 1.0
    grad_cache: ClassVar[bool] = False
    token_budget: ClassVar[bool] = False

    # ---- construction -------------------------------------------------------------------------
    def build(self, node: dict[str, Any], **runtime: Any) -> nn.Module:
        """The model for a config node (``family``, ``name_or_path`` + the ``from_pretrained`` options)."""
        kwargs = {k: v for k, v in node.items() if k not in ("preset", "family", "name_or_path")}
        return self.model_class.from_pretrained(node["name_or_path"], **kwargs, **runtime)

    def options(self) -> Any:
        """The callable whose keyword arguments are this family's config keys (checked at compose time)."""
        return self.model_class.from_pretrained

    def runtime_args(self) -> tuple[str, ...]:
        """``from_pretrained`` arguments filled by code, never by the config."""
        return tuple(getattr(self.model_class, "runtime_args", ("dtype", "key")))

    # ---- inference / evaluation ---------------------------------------------------------------
    def scorer_class(self) -> type:
        """The :class:`ragr.infer.Scorer` that loads a saved model of this family for scoring."""
        return self.model_class

    def scorer(self, model: nn.Module):
        """A :class:`ragr.infer.Scorer` view of a live (training) model: evaluation and agreement use it."""
        return model

    # ---- training forwards --------------------------------------------------------------------
    def encode(self, fwd, texts: Sequence[str], is_query: bool):
        """``vectors`` / ``multivectors``: the texts' outputs with gradients, through ``fwd`` (a
        :class:`ragr.families.forward.ChunkedForward`)."""
        raise NotImplementedError(f"family '{self.name}' does not encode texts separately")

    def similarity(self, model: nn.Module, q, d) -> torch.Tensor:
        """All-pairs scores ``[Nq, Nd]`` of two :meth:`encode` outputs."""
        raise NotImplementedError

    def pair_similarity(self, model: nn.Module, q, d, rep: torch.Tensor) -> torch.Tensor:
        """Scores ``[N]`` of document ``j`` against query ``rep[j]`` (two :meth:`encode` outputs)."""
        raise NotImplementedError

    def score_pairs(self, fwd, queries: Sequence[str], docs: Sequence[str], pair_query: torch.Tensor) -> torch.Tensor:
        """``pair_scores``: the score of ``docs[j]`` for ``queries[pair_query[j]]``, with gradients.

        The default (vector families) encodes each query once and each document once.
        """
        q = self.encode(fwd, queries, is_query=True)
        d = self.encode(fwd, docs, is_query=False)
        return self.pair_similarity(fwd.model, q, d, pair_query.to(fwd.device))

    # ---- costs (trainer.max_tokens_per_batch) -------------------------------------------------
    def text_lengths(self, model: nn.Module, texts: Sequence[str], is_query: bool) -> list[int]:
        """Token count of each text as the model would see it (truncated)."""
        raise NotImplementedError(f"family '{self.name}' has no per-text token lengths")

    def example_costs(self, model: nn.Module, dataset, block: int = 1024) -> np.ndarray:
        """Expected tokens of each training example: the query, plus the mean of its positives, plus
        ``num_negatives`` times the mean of its negatives (when the data has them)."""
        n_neg = dataset.num_negatives if getattr(dataset, "use_negatives", False) else 0
        costs = np.zeros(len(dataset))
        for start in range(0, len(dataset), block):
            recs = [dataset.index[i] for i in range(start, min(start + block, len(dataset)))]
            q = self.text_lengths(model, [(r.get("prompt") or "") + r["query"] for r in recs], True)
            for k, r in enumerate(recs):
                pos = self.text_lengths(model, list(r["pos"]), False)
                neg = self.text_lengths(model, list(r.get("neg") or []), False) if n_neg else []
                costs[start + k] = q[k] + float(np.mean(pos)) + (n_neg * float(np.mean(neg)) if neg else 0.0)
        return costs

    def __repr__(self) -> str:
        return f"<family {self.name}>"


class DotProductFamily(Family):
    """A family whose texts each become one vector (dense or vocabulary-wide sparse), scored by dot products.

    Subclasses provide :meth:`prepare` (``(lengths, make_chunk)`` for the chunked forward) and
    :meth:`token_ids` (each text's unpadded, truncated ids); encoding, both similarities and the token
    lengths follow from them.
    """

    def prepare(self, model: nn.Module, texts: Sequence[str], is_query: bool):
        raise NotImplementedError

    def token_ids(self, model: nn.Module, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, fwd, texts: Sequence[str], is_query: bool) -> torch.Tensor:
        lengths, make_chunk = self.prepare(fwd.model, texts, is_query)
        return fwd.run(lengths, make_chunk)

    def similarity(self, model: nn.Module, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return q.float() @ d.float().T

    def pair_similarity(self, model: nn.Module, q: torch.Tensor, d: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        return (q.float()[rep] * d.float()).sum(-1)

    def text_lengths(self, model: nn.Module, texts: Sequence[str], is_query: bool) -> list[int]:
        return [len(x) for x in self.token_ids(model, texts, is_query)] if texts else []


def register_family(family: Family | type, name: str | None = None) -> Family:
    """Make ``family`` (a :class:`Family` subclass or instance) available as ``model.family=<name>``."""
    from ragr.registry import families

    inst = family() if isinstance(family, type) else family
    name = name or inst.name
    if not name:
        raise ValueError("a family needs a name")
    families.register_object(name, inst, (type(inst).__doc__ or "").strip().split("\n")[0])
    _LOCAL[name] = inst
    return inst


def get_family(name: str) -> Family:
    """The family registered as ``name`` (an instance; unknown names raise a UserError with a hint)."""
    if name in _LOCAL:
        return _LOCAL[name]
    from ragr.registry import families

    obj = families.get(name)
    return obj() if isinstance(obj, type) else obj
