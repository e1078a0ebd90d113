"""ColBERT late-interaction model: encoder + Linear(hidden, dim) + L2 norm, scored with MaxSim.

Saved in the bge-m3 layout: the backbone and tokenizer files at the folder root, the projection as
``colbert_linear.pt`` (a state dict with ``weight [dim, hidden]`` and ``bias [dim]``), and a small
``ragr.json`` with the family and the scoring options. A bge-m3 folder (or any folder in that
layout) loads as it is; a folder without ``colbert_linear.pt`` gets a freshly initialized projection.

MaxSim (Khattab & Zaharia, 2020): for every unmasked query token, the largest dot product with an
unmasked document token; summed over query tokens and, with ``normalize_by_query_length``, divided
by their number (as bge-m3 and RAG-Retrieval do, which keeps scores in [-1, 1] like a cosine).
"""

from __future__ import annotations

import json
import os
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Default element budget of one MaxSim block (2**26 fp32 elements = 256 MiB).
DEFAULT_MAX_SCORE_ELEMENTS = 2**26
LINEAR_FILE = "colbert_linear.pt"
RAGR_FILE = "ragr.json"

#: Scoring/tokenization options and their defaults; stored in ``ragr.json`` so a saved model reloads as it was.
OPTION_DEFAULTS: dict[str, Any] = {
    "max_query_length": 32,
    "max_doc_length": 180,
    "normalize_by_query_length": True,
    "mask_query_cls": True,
    "mask_doc_cls": True,
    "mask_punctuation": False,
    "query_augmentation": False,
}
DEFAULT_DIM = 128


def _block_sizes(bq: int, n: int, lq: int, ld: int, max_elements: int) -> tuple[int, int]:
    """(query rows, documents) per block so one ``[q, n, Lq, Ld]`` block holds <= max(max_elements, Lq*Ld) elements."""
    per_pair = max(1, lq * ld)
    q_chunk = bq if bq * per_pair <= max_elements else max(1, max_elements // per_pair)
    d_chunk = max(1, min(n, max_elements // (q_chunk * per_pair)))
    return q_chunk, d_chunk


def maxsim(
    q: torch.Tensor,
    q_mask: torch.Tensor,
    d: torch.Tensor,
    d_mask: torch.Tensor,
    normalize: bool = True,
    max_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
) -> torch.Tensor:
    """All-pairs MaxSim scores ``[Bq, N]`` of queries ``q [Bq, Lq, D]`` against documents ``d [N, Ld, D]``.

    ``q_mask [Bq, Lq]`` and ``d_mask [N, Ld]`` are bool (True = the token counts). Masked document
    tokens never win the max; masked query tokens add nothing (and are not counted when
    ``normalize`` divides by the query length). A document with no unmasked token scores 0.

    Memory bound: the token-level similarities are computed block by block, never as a whole
    ``[Bq, N, Lq, Ld]`` tensor. A block covers ``q_chunk`` queries x ``d_chunk`` documents with
    ``q_chunk * d_chunk * Lq * Ld <= max(max_elements, Lq * Ld)`` fp32 elements (queries are split
    too only when one document against all queries would exceed the budget). The block is filled in
    place, so the forward pass holds one block at a time, and autograd keeps only
    ``[Bq, N, Lq]``-sized max values/indices (the einsum keeps references to ``q`` and ``d``, not the
    block). Backward rebuilds one block-sized gradient per block, one block at a time. Extra peak
    memory is therefore about ``4 * max(max_elements, Lq * Ld)`` bytes plus ``O(Bq * N * Lq)``.
    Scores are computed in fp32 whatever the input dtype.
    """
    bq, lq, dim = q.shape
    n, ld, _ = d.shape
    q, d = q.float(), d.float()
    q_mask, d_mask = q_mask.bool(), d_mask.bool()
    q_weight = q_mask.float()
    d_any = d_mask.any(-1)
    fill = torch.finfo(torch.float32).min
    q_chunk, d_chunk = _block_sizes(bq, n, lq, ld, max_elements)
    rows = []
    for qs in range(0, bq, q_chunk):
        qb = q[qs : qs + q_chunk]
        cols = []
        for ds in range(0, n, d_chunk):
            db = d[ds : ds + d_chunk]
            sim = (qb.reshape(-1, dim) @ db.reshape(-1, dim).T).view(qb.shape[0], lq, db.shape[0], ld)
            sim.masked_fill_(~d_mask[None, None, ds : ds + d_chunk], fill)
            best = sim.max(-1).values  # [q_chunk, Lq, d_chunk]; autograd keeps only the indices
            best = torch.where(d_any[None, None, ds : ds + d_chunk], best, torch.zeros((), device=best.device))
            cols.append((best * q_weight[qs : qs + q_chunk, :, None]).sum(1))
        rows.append(torch.cat(cols, 1))
    scores = torch.cat(rows, 0)
    if normalize:
        scores = scores / q_weight.sum(-1, keepdim=True).clamp(min=1)
    return scores


def maxsim_pairs(
    q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """MaxSim of aligned pairs: query ``i`` against document ``i`` only; returns ``[N]`` (fp32)."""
    q, d = q.float(), d.float()
    q_weight = q_mask.float()
    sim = torch.bmm(q, d.transpose(1, 2))  # [N, Lq, Ld]
    sim.masked_fill_(~d_mask.bool()[:, None, :], torch.finfo(torch.float32).min)
    best = torch.where(d_mask.bool().any(-1)[:, None], sim.max(-1).values, torch.zeros((), device=sim.device))
    scores = (best * q_weight).sum(-1)
    return scores / q_weight.sum(-1).clamp(min=1) if normalize else scores


def pad_vectors(vecs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length ``[n_i, D]`` token vectors into ``[N, max n_i, D]`` plus a bool mask."""
    length = max((v.shape[0] for v in vecs), default=0)
    dim = vecs[0].shape[1] if vecs else 0
    out = torch.zeros(len(vecs), max(length, 1), dim, dtype=vecs[0].dtype if vecs else torch.float32)
    mask = torch.zeros(len(vecs), max(length, 1), dtype=torch.bool)
    for i, v in enumerate(vecs):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = True
    return out, mask


def _punctuation_table(tokenizer) -> torch.Tensor:
    """Bool ``[vocab]``: True for tokens made only of punctuation (after stripping subword markers)."""
    size = len(tokenizer)
    table = torch.zeros(size, dtype=torch.bool)
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        if tok is None or i in tokenizer.all_special_ids:
            continue
        text = tok.removeprefix("##").lstrip("\u2581\u0120")
        if text and all(unicodedata.category(c).startswith("P") for c in text):
            table[i] = True
    return table


class ColBERT(nn.Module):
    """ColBERT: contextual token vectors, ``normalize(Linear(hidden, dim)(h_t))``, scored by MaxSim.

    Args:
        backbone: a ``transformers`` base model (``AutoModel``).
        tokenizer: its tokenizer (right padding is enforced).
        linear: the projection ``nn.Linear(hidden, dim)``.
        max_query_length / max_doc_length: truncation lengths in tokens.
        normalize_by_query_length: divide the MaxSim sum by the number of (unmasked) query tokens.
        mask_query_cls / mask_doc_cls: drop the leading special token ([CLS] / <s>) from the score.
            bge-m3 and RAG-Retrieval drop it on both sides; both default to True.
        mask_punctuation: drop document tokens made only of punctuation (ColBERT's skiplist).
        query_augmentation: pad every query to ``max_query_length`` with [MASK] tokens whose vectors
            take part in MaxSim (ColBERT's query augmentation; the masks are not attended to).
        max_score_elements: element budget of one MaxSim block in training (see :func:`maxsim`).

    References:
        Khattab & Zaharia, "ColBERT: Efficient and Effective Passage Search via Contextualized Late
        Interaction over BERT", SIGIR 2020. Chen et al., "BGE M3-Embedding", 2024.
    """

    family = "colbert"
    #: from_pretrained arguments filled by code, not by the config
    runtime_args = ("dtype", "key")

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        linear: nn.Linear,
        max_query_length: int = OPTION_DEFAULTS["max_query_length"],
        max_doc_length: int = OPTION_DEFAULTS["max_doc_length"],
        normalize_by_query_length: bool = True,
        mask_query_cls: bool = True,
        mask_doc_cls: bool = True,
        mask_punctuation: bool = False,
        query_augmentation: bool = False,
        max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
    ) -> None:
        super().__init__()
        self.backbone, self.tokenizer, self.linear = backbone, tokenizer, linear
        self.tokenizer.padding_side = "right"
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.normalize_by_query_length = normalize_by_query_length
        self.mask_query_cls, self.mask_doc_cls = mask_query_cls, mask_doc_cls
        self.mask_punctuation, self.query_augmentation = mask_punctuation, query_augmentation
        self.max_score_elements = max_score_elements
        if query_augmentation and tokenizer.mask_token_id is None:
            raise ValueError("query_augmentation needs a tokenizer with a [MASK] token")
        self.punctuation = _punctuation_table(tokenizer) if mask_punctuation else None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dim: int | None = None,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        normalize_by_query_length: bool | None = None,
        mask_query_cls: bool | None = None,
        mask_doc_cls: bool | None = None,
        mask_punctuation: bool | None = None,
        query_augmentation: bool | None = None,
        max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
        dtype: torch.dtype | None = None,
        key: str = "model.name_or_path",
    ) -> ColBERT:
        """Load a backbone and its ColBERT projection (``colbert_linear.pt``) if the folder has one.

        Options left ``None`` come from the folder's ``ragr.json`` (a model saved by ragr), else from
        the defaults in :data:`OPTION_DEFAULTS`; explicit arguments win. ``dim`` is taken from
        ``colbert_linear.pt`` when present (a different ``dim`` argument is ignored with a warning);
        otherwise a new ``Linear(hidden, dim or 128)`` is initialized (orthogonal weight, zero bias).
        """
        from transformers import AutoModel, AutoTokenizer

        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        saved = json.loads((path / RAGR_FILE).read_text()) if (path / RAGR_FILE).is_file() else {}
        given = {
            "max_query_length": max_query_length, "max_doc_length": max_doc_length,
            "normalize_by_query_length": normalize_by_query_length, "mask_query_cls": mask_query_cls,
            "mask_doc_cls": mask_doc_cls, "mask_punctuation": mask_punctuation, "query_augmentation": query_augmentation,
        }
        options = {k: v if v is not None else saved.get(k, OPTION_DEFAULTS[k]) for k, v in given.items()}
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = AutoModel.from_pretrained(path, **kwargs)
        linear = load_linear(path / LINEAR_FILE) if (path / LINEAR_FILE).is_file() else None
        if linear is not None:
            if dim is not None and dim != linear.out_features:
                warnings.warn(f"{path / LINEAR_FILE} projects to {linear.out_features} dimensions; "
                              f"ignoring dim={dim}", stacklevel=2)
        else:
            linear = nn.Linear(backbone.config.hidden_size, dim or DEFAULT_DIM)
            nn.init.orthogonal_(linear.weight)
            nn.init.zeros_(linear.bias)
        if dtype is not None:
            linear = linear.to(dtype)
        return cls(backbone, tokenizer, linear, max_score_elements=max_score_elements, **options)

    @property
    def dim(self) -> int:
        return self.linear.out_features

    def options(self) -> dict[str, Any]:
        """The scoring/tokenization options (what ``ragr.json`` stores)."""
        return {k: getattr(self, k) for k in OPTION_DEFAULTS}

    # ---- tokens -> vectors --------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        """Token ids, the backbone's ``attention_mask`` and ``token_mask`` (bool: tokens that take part in MaxSim)."""
        max_len = self.max_query_length if is_query else self.max_doc_length
        augment = is_query and self.query_augmentation
        feats = self.tokenizer(list(texts), padding="max_length" if augment else True, truncation=True,
                               max_length=max_len, return_tensors="pt")
        ids, attn = feats["input_ids"], feats["attention_mask"]
        token_mask = attn.bool().clone()
        if augment:  # [MASK] in place of padding; scored, but (as in ColBERT) not attended to
            ids = ids.masked_fill(~attn.bool(), self.tokenizer.mask_token_id)
            token_mask[:] = True
        if (self.mask_query_cls if is_query else self.mask_doc_cls) and ids.shape[1] > 0:
            special = torch.tensor(sorted(self.tokenizer.all_special_ids))
            token_mask[:, 0] &= ~torch.isin(ids[:, 0], special)
        if not is_query and self.punctuation is not None:
            token_mask &= ~self.punctuation[ids.clamp(max=len(self.punctuation) - 1)]
        out = {"input_ids": ids, "attention_mask": attn, "token_mask": token_mask}
        if "token_type_ids" in feats:
            out["token_type_ids"] = feats["token_type_ids"]
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_mask: torch.Tensor | None = None,
                **extra) -> torch.Tensor:
        """Token vectors ``[B, L, dim]``, L2-normalized; positions outside ``token_mask`` are zero."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        vecs = F.normalize(self.linear(hidden), dim=-1)
        mask = attention_mask if token_mask is None else token_mask
        return vecs * mask.unsqueeze(-1).to(vecs.dtype)

    def score_matrix(self, q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        """All-pairs MaxSim ``[Bq, N]`` in memory-bounded blocks (see :func:`maxsim`)."""
        return maxsim(q, q_mask, d, d_mask, self.normalize_by_query_length, self.max_score_elements)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 32,
               progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Per text, its scored token vectors ``[n_i, dim]`` (float32, CPU; masked tokens dropped)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out: list[torch.Tensor | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], is_query).items()}
            vecs = self(**feats).float().cpu()
            mask = feats["token_mask"].cpu()
            for row, i in enumerate(idx):
                out[i] = vecs[row][mask[row]].clone()
            if progress is not None:
                progress(len(idx))
        self.train(was_training)
        return out  # type: ignore[return-value]

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the bge-m3 layout: backbone + tokenizer, ``colbert_linear.pt`` and ``ragr.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.linear.state_dict().items()}
        torch.save(state, path / LINEAR_FILE)
        meta = {"family": self.family, "dim": self.dim, **self.options()}
        (path / RAGR_FILE).write_text(json.dumps(meta, indent=2))


def load_linear(file: Path) -> nn.Linear:
    """An ``nn.Linear`` from a bge-m3 head file (``colbert_linear.pt`` / ``sparse_linear.pt``: a state dict with
    ``weight [out, hidden]`` and an optional ``bias``)."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "weight" not in state or state["weight"].ndim != 2:
        raise ValueError(f"{file}: expected a state dict with a 2-D 'weight' (the bge-m3 layout)")
    out_features, in_features = state["weight"].shape
    linear = nn.Linear(in_features, out_features, bias="bias" in state)
    linear.load_state_dict({k: state[k] for k in ("weight", "bias") if k in state})
    return linear
