"""The scorer interface every reranker family implements, and how families are registered.

:class:`ragr.infer.Reranker` does the batching (length-sorted), the long-document strategy and the
normalization; a family only has to score one batch of pairs. To add a family (ColBERT, or your
own model), subclass :class:`Scorer`::

    from ragr.infer import Scorer, register_scorer

    @register_scorer("my_family")
    class MyScorer(Scorer):
        family = "my_family"

        @classmethod
        def load(cls, path, *, device="cpu", dtype=None, max_length=None, **options):
            ...  # read the model folder `path`; set self.tokenizer and self.max_length
            return scorer

        def score_pairs(self, queries, docs):
            return [...]  # one raw fp32 score per pair, in input order

        def doc_budget(self, query):   # optional: only needed for long_doc="max-chunk"
            return self.max_length - ...

A family that can tokenize pairs up front may also implement :meth:`Scorer.tokenize_pairs` and
:meth:`Scorer.score_tokenized` (the cross-encoder does): the Reranker then sorts pairs by exact token
length and cuts batches by a token budget with the least padding (:func:`token_batches`).

Registered names are looked up in :data:`ragr.registry.scorers` (lazy ``"module:Class"`` entries,
appended in ``registry.py`` for built-in families), then among classes registered with
:func:`register_scorer`, then in the ``ragr.rerankers`` entry-point group of installed packages
(``[project.entry-points."ragr.rerankers"] my_family = "my_pkg.mod:MyScorer"``).
A model folder names its family in ``ragr.json`` (``{"family": "my_family"}``), so
``Reranker(path)``, ``ragr rerank --model path`` and ``ragr eval`` find it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ragr.errors import UserError

#: Classes registered with :func:`register_scorer` (importable by name or not, e.g. defined in a script).
_LOCAL: dict[str, type] = {}


class Scorer:
    """Base class of a reranker family: scores (query, document) pairs.

    Attributes:
        family: the registry name of the family.
        tokenizer: a Hugging Face tokenizer; ``max-chunk`` splits documents with it (a fast tokenizer
            gives exact character windows through offsets).
        max_length: the longest input, in tokens, the scorer feeds the model.

    Subclasses implement :meth:`load` and :meth:`score_pairs`, and :meth:`doc_budget` to support
    ``long_doc="max-chunk"``.
    """

    family: ClassVar[str] = ""
    tokenizer: Any = None
    max_length: int = 512

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> Scorer:
        """Load the scorer from the local model folder ``path`` onto ``device``, in eval mode.

        Args:
            path: a local directory (aliases and hub ids are resolved before this is called).
            device: a torch device.
            dtype: a ``torch.dtype`` for the weights, or None for the family's default (fp32).
            max_length: input length in tokens; None keeps what the model folder or family says.
            **options: family options (an LLM's ``prompt``, ...); unknown ones should raise TypeError.
        """
        raise NotImplementedError

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        """Raw scores (fp32, higher = more relevant) of one batch of pairs, in input order.

        The caller (:class:`ragr.infer.Reranker`) has already cut the input into batches of
        ``batch_size`` pairs of similar length and, for ``max-chunk``, into windows.
        """
        raise NotImplementedError

    def tokenize_pairs(self, queries: list[str], docs: list[str]) -> list[dict[str, list[int]]] | None:
        """Optional fast path: each pair's model inputs, tokenized once and unpadded, or None (not supported).

        When a family returns features here, :class:`ragr.infer.Reranker` sorts pairs by their exact
        token length, cuts batches by a token budget and calls :meth:`score_tokenized`; otherwise it
        sorts by characters and calls :meth:`score_pairs` with ``batch_size`` pairs. Each dict holds
        ``input_ids`` (and e.g. ``token_type_ids``) for one pair; its length is ``len(input_ids)``.
        """
        return None

    def score_tokenized(self, features: list[dict[str, list[int]]]) -> list[float]:
        """Raw fp32 scores of one batch of :meth:`tokenize_pairs` features (pad each batch to its own longest)."""
        raise NotImplementedError

    def doc_budget(self, query: str) -> int:
        """How many document tokens fit beside ``query`` within :attr:`max_length`."""
        raise NotImplementedError(f"reranker family '{self.family}' does not support long_doc='max-chunk'")

    def normalize(self, score: float) -> float:
        """Map a raw score to [0, 1] (``normalize=True``); the sigmoid of a logit by default."""
        if score >= 0:
            return 1.0 / (1.0 + math.exp(-score))
        e = math.exp(score)
        return e / (1.0 + e)


def register_scorer(name: str, help: str = ""):
    """Class decorator: make a :class:`Scorer` subclass available as reranker family ``name``."""
    from ragr.registry import scorers

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Scorer)):
            raise TypeError(f"@register_scorer('{name}') needs a Scorer subclass, got {cls!r}")
        scorers.register(name, f"{cls.__module__}:{cls.__qualname__}", help or (cls.__doc__ or "").strip().split("\n")[0])
        _LOCAL[name] = cls
        return cls

    return deco


def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group="ragr.rerankers"):
        if ep.name == name:
            return ep
    return None


def scorer_class(family: str) -> type:
    """The Scorer class of ``family``: :func:`register_scorer`, a model family's scorer, inference-only
    registry entries, then entry points."""
    from ragr.registry import families, scorers

    if family in _LOCAL:
        cls = _LOCAL[family]
    elif family in families or family in scorers:
        try:
            if family in families:
                from ragr.families import get_family

                cls = get_family(family).scorer_class()
            else:
                cls = scorers.get(family)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"reranker family '{family}' is registered but cannot be imported ({exc})") from None
    else:
        ep = _entry_point(family)
        if ep is None:
            choices = sorted(set(families.names()) | set(scorers.names()))
            from ragr.errors import did_you_mean

            raise UserError(f"unknown reranker family '{family}'{did_you_mean(family, choices)}; choices: {', '.join(choices)}")
        cls = ep.load()
    if not all(callable(getattr(cls, m, None)) for m in ("load", "score_pairs")):
        raise UserError(f"reranker family '{family}' ({cls.__name__}) does not implement the Scorer interface (load, score_pairs)")
    return cls


def token_batches(lengths: list[int], max_tokens: int, max_pairs: int | None = None,
                  overhead: int = 64, strategy: str = "chunked") -> list[list[int]]:
    """Cut items into batches of similar length that pad as little as possible within a token budget.

    ``strategy`` is the forward strategy the batches will run under (:mod:`ragr.families.forward`):
    ``chunked`` (below), ``packed`` (padding-free: batches of at most ``max_tokens`` *real* tokens, long and
    short items mixed so packed rows fill) or ``bucketed`` (each batch costs ``bucket_rows(pairs) x
    bucket_length(longest)``).

    Items are sorted by ``lengths`` (longest first, ties in input order) and cut into consecutive
    batches; a batch costs its padded size (pairs x its longest) plus ``overhead`` token-equivalents
    (the fixed cost of one forward pass), and the cut minimizing the total cost is found exactly by
    dynamic programming, subject to ``pairs x longest <= max_tokens`` and ``pairs <= max_pairs``. An
    item longer than the budget gets a batch of its own. Returns lists of item indices, longest
    batches first.
    """
    import numpy as np

    if strategy == "packed":
        return _packed_batches(lengths, max_tokens, max_pairs)
    if strategy == "bucketed":
        from ragr.families.forward import plan_bucketed

        cut = plan_bucketed(lengths, max_tokens, overhead)  # shortest first, sized to bucketed shapes
        if max_pairs:
            cut = [c[i : i + max_pairs] for c in cut for i in range(0, len(c), max_pairs)]
        return [c[::-1] for c in cut[::-1]]  # longest batches first, as below
    n = len(lengths)
    order = sorted(range(n), key=lambda k: -lengths[k])
    s = np.array([max(1, int(lengths[k])) for k in order], dtype=np.int64)
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    cap = max_pairs or n
    for i in range(1, n + 1):  # best[i]: cheapest cut of the first i items; the last batch is start[i]..i-1
        back = min(cap, i, max(1, max_tokens // int(s[i - 1])))  # s[j] >= s[i-1]: longer batches exceed the budget
        j = np.arange(i - back, i)
        size = (i - j) * s[j]
        cost = best[j] + size
        cost[size > max_tokens] = np.inf
        cost[-1] = best[i - 1] + s[i - 1]  # a single item always fits
        k = int(np.argmin(cost))
        best[i], start[i] = cost[k] + overhead, j[k]
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(order[start[i] : i])
        i = int(start[i])
    return batches[::-1]


def _packed_batches(lengths: list[int], max_tokens: int, max_pairs: int | None) -> list[list[int]]:
    """Batches of at most ``max_tokens`` real tokens (and ``max_pairs`` items), each mixing long and short items so
    its packed rows fill well (:func:`ragr.families.forward.plan_packed`)."""
    from ragr.families.forward import plan_packed

    batches = plan_packed(lengths, max_tokens)
    if max_pairs:
        batches = [b[i : i + max_pairs] for b in batches for i in range(0, len(b), max_pairs)]
    return batches


def scorer_module(scorer: Any):
    """The ``nn.Module`` that holds a scorer's model (the scorer itself, or its ``model``), or None."""
    from torch import nn

    if isinstance(scorer, nn.Module):
        return scorer
    model = getattr(scorer, "model", None)
    return model if isinstance(model, nn.Module) else None


def forward_context(scorer: Any, strategy: str):
    """A context in which ``scorer``'s backbone calls run under the forward ``strategy`` (``chunked``:
    unchanged); see :func:`ragr.families.forward.reshaped_forward`."""
    from contextlib import nullcontext

    module = scorer_module(scorer)
    if module is None or strategy == "chunked":
        return nullcontext()
    from ragr.families.forward import reshaped_forward

    return reshaped_forward(module, strategy)


def token_windows(tokenizer: Any, text: str, size: int, overlap: int) -> list[str]:
    """Split ``text`` into overlapping windows of at most ``size`` tokens (as text).

    Consecutive windows share ``overlap`` tokens (capped at half a window). With a fast tokenizer
    the windows are exact slices of ``text`` (character offsets), otherwise decoded token slices.
    A text that fits in one window is returned unchanged.
    """
    size = max(1, int(size))
    stride = size - min(max(0, overlap), size // 2)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= size:
            return [text]
        out = []
        for start in range(0, len(offsets), stride):
            end = min(start + size, len(offsets))
            out.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end == len(offsets):
                break
        return out
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= size:
        return [text]
    out = []
    for start in range(0, len(ids), stride):
        end = min(start + size, len(ids))
        out.append(tokenizer.decode(ids[start:end]))
        if end == len(ids):
            break
    return out


class ModuleScorer(Scorer):
    """:meth:`Scorer.score_pairs` for ``nn.Module`` scorers whose ``tokenize(queries, docs)`` feeds
    ``forward(**features) -> scores [N]`` (cross-encoders, LLM rerankers)."""

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        import torch

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        from ragr.models.attention import shape_stable_attention

        with torch.no_grad(), shape_stable_attention(device):
            feats = {k: v.to(device) for k, v in self.tokenize(queries, docs).items()}
            scores = self(**feats).float().cpu().tolist()
        self.train(was_training)
        return scores
