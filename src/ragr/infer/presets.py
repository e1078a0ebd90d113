"""How each public reranker expects its input: family, prompt format and length, keyed by hub id.

A preset applies when a model is asked for by an alias (``qwen-reranker``) or its hub id; a local
directory written by ragr carries its own format in ``ragr.json``. Nothing here is guessed from a
substring of a name: lookups are exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ragr.errors import UserError


@dataclass(frozen=True)
class PromptFormat:
    """The text an LLM reranker reads for one (query, document) pair.

    The input is ``[bos] + segment_1 + segment_2 + ...``, each segment tokenized on its own (as the
    reference implementations of bge-reranker-v2-gemma and Qwen3-Reranker do). Exactly one segment
    holds ``{query}`` and another ``{document}``; ``{instruction}`` may appear in any segment. The
    query segment is cut to 3/4 of ``max_length`` tokens, the document segment to what is left, so
    fixed segments (the question asking for "yes") are never truncated.

    Args:
        segments: the segments, in order.
        bos: prepend the tokenizer's BOS token.
        instruction: text substituted for ``{instruction}``.
        yes_token: generative scoring reads the logit of this token at the last position.
        no_token: when set, the score is ``logit(yes) - logit(no)`` (its sigmoid is the softmax
            probability of "yes" over the two), as Qwen3-Reranker computes it.
    """

    segments: tuple[str, ...] = ("query: {query}", "\n", "document: {document}")
    bos: bool = False
    instruction: str = ""
    yes_token: str = "yes"
    no_token: str | None = None

    def __post_init__(self) -> None:
        segs = tuple(self.segments)
        object.__setattr__(self, "segments", segs)
        q = [i for i, s in enumerate(segs) if "{query}" in s]
        d = [i for i, s in enumerate(segs) if "{document}" in s]
        if len(q) != 1 or len(d) != 1 or q == d:
            raise UserError("a prompt format needs one segment with {query} and another one with {document}")

    @property
    def query_index(self) -> int:
        return next(i for i, s in enumerate(self.segments) if "{query}" in s)

    @property
    def doc_index(self) -> int:
        return next(i for i, s in enumerate(self.segments) if "{document}" in s)

    def fill(self, i: int, query: str = "", document: str = "") -> str:
        """Segment ``i`` with the placeholders filled."""
        seg = self.segments[i]
        for key, value in (("{instruction}", self.instruction), ("{query}", query), ("{document}", document)):
            seg = seg.replace(key, value)
        return seg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segments"] = list(self.segments)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PromptFormat:
        d = dict(d or {})
        known = {"segments", "bos", "instruction", "yes_token", "no_token"}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown prompt keys {sorted(unknown)} (valid: {', '.join(sorted(known))})")
        if "segments" in d:
            d["segments"] = tuple(d["segments"])
        return cls(**d)


#: What RAG-Retrieval's LLM rerankers use ("query: {}", "\n", "document: {}").
DEFAULT_SEQCLS = PromptFormat()
#: ragr's default generative prompt for a decoder fine-tuned here.
DEFAULT_YES = PromptFormat(
    segments=("Query: {query}\n", "Document: {document}\n",
              "Does the document answer the query? Answer yes or no.\nAnswer:"),
    yes_token=" yes",
)

_QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
)
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_RERANKER = PromptFormat(
    segments=(_QWEN3_PREFIX, "<Instruct>: {instruction}\n<Query>: {query}\n", "<Document>: {document}", _QWEN3_SUFFIX),
    instruction="Given a web search query, retrieve relevant passages that answer the query",
    yes_token="yes",
    no_token="no",
)
BGE_GEMMA = PromptFormat(
    segments=("A: {query}", "\n", "B: {document}", "\n",
              "Given a query A and a passage B, determine whether the passage contains an answer to the query "
              "by providing a prediction of either 'Yes' or 'No'."),
    bos=True,
    yes_token="Yes",
)


@dataclass(frozen=True)
class Preset:
    """A public model: its family, input length and (LLMs) prompt format."""

    family: str
    max_length: int = 512
    prompt: PromptFormat | None = None
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments for the family's ``load``."""
        opts = {"max_length": self.max_length, **self.options}
        if self.prompt is not None:
            opts["prompt"] = self.prompt.to_dict()
        return opts


#: Presets by Hugging Face hub id.
PRESETS: dict[str, Preset] = {
    "BAAI/bge-reranker-base": Preset("cross_encoder", 512, note="XLM-R cross-encoder, zh/en"),
    "BAAI/bge-reranker-large": Preset("cross_encoder", 512, note="XLM-R large cross-encoder, zh/en"),
    "BAAI/bge-reranker-v2-m3": Preset("cross_encoder", 512, note="bge-m3 cross-encoder, multilingual (up to 8192 tokens)"),
    "maidalun1020/bce-reranker-base_v1": Preset("cross_encoder", 512, note="NetEase BCE reranker, zh/en"),
    "cross-encoder/ms-marco-MiniLM-L6-v2": Preset("cross_encoder", 512, note="MS MARCO MiniLM cross-encoder, en"),
    "BAAI/bge-reranker-v2-gemma": Preset("llm_yes", 1024, BGE_GEMMA, note="gemma-2b, logit of 'Yes'"),
    "Qwen/Qwen3-Reranker-0.6B": Preset("llm_yes", 8192, QWEN3_RERANKER, note="Qwen3 0.6B, logit(yes) - logit(no)"),
}

def preset_for(name: str) -> Preset | None:
    """The preset of ``name`` when it is exactly an alias or a hub id in the table, else None."""
    from ragr.models.hub import ALIASES

    return PRESETS.get(ALIASES.get(name, name))
