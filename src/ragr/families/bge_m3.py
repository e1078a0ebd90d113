"""Family ``bge_m3``: one encoder, three retrievers — dense (CLS), sparse (lexical weights) and ColBERT — trained together.

Model: :class:`BGEM3` (Chen et al., "BGE M3-Embedding", 2024; FlagEmbedding's layout). From the encoder's last
hidden states ``h``:

* dense: ``normalize(h[CLS])``, scored by dot product (a cosine);
* sparse: a weight ``relu(sparse_linear(h_i))`` per token; a term's weight is the max over the positions holding
  it ([CLS], </s>, padding and [UNK] never count); scored by ``sum_t w_q(t) w_d(t)`` over shared terms;
* ColBERT: ``normalize(colbert_linear(h_i))`` for every token after [CLS], scored by MaxSim divided by the
  number of query tokens.

On disk: the published bge-m3 layout — the backbone and tokenizer at the folder root, ``colbert_linear.pt`` and
``sparse_linear.pt`` (state dicts), plus a sentence-transformers dense layout (CLS pooling + Normalize, so
``SentenceTransformer(path)`` gives the dense vectors) and ``ragr.json``. ``BAAI/bge-m3`` loads as it is; a
plain encoder gets new heads. ``fix_encoder=true`` trains the heads only.

Training forward: each chunk's outputs are packed into one tensor (``[n, L, H + D + 1]``: the dense vector at
position 0, the ColBERT vectors at positions 1.., the token weight in the last channel) so the collective-safe
chunked forward carries them like ColBERT's token vectors; :meth:`BGEM3Family.encode` unpacks them.
The unified loss (``loss=m3``, :mod:`ragr.losses.m3`) takes the three score matrices :meth:`similarity` gives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ragr.families.base import Family
from ragr.infer.base import Scorer
from ragr.models.colbert import load_linear, maxsim, maxsim_pairs

COLBERT_FILE, SPARSE_FILE, RAGR_FILE = "colbert_linear.pt", "sparse_linear.pt", "ragr.json"
OPTION_DEFAULTS: dict[str, Any] = {"max_query_length": 64, "max_doc_length": 512}
#: how the scorer combines the three scores (FlagEmbedding's BGEM3FlagModel.compute_score default)
MODE_WEIGHTS = {"dense": (1.0, 0.0, 0.0), "sparse": (0.0, 1.0, 0.0), "colbert": (0.0, 0.0, 1.0), "ensemble": (0.4, 0.2, 0.4)}


def sparse_score_matrix(wq: torch.Tensor, idq: torch.Tensor, wd: torch.Tensor, idd: torch.Tensor) -> torch.Tensor:
    """``[Bq, Nd]`` lexical scores ``sum_t w_q(t) w_d(t)``, a term's weight being its max over the text's positions.

    ``wq [Bq, Lq]`` / ``wd [Nd, Ld]`` are token weights (0 where a token does not count), ``idq`` / ``idd`` the
    token ids. The terms are the batch's own distinct ids (not the whole vocabulary), so memory stays small.
    """
    ids = torch.cat([idq.reshape(-1), idd.reshape(-1)])
    terms, inverse = torch.unique(ids, return_inverse=True)
    iq, idx_d = inverse[: idq.numel()].view(idq.shape), inverse[idq.numel():].view(idd.shape)
    q = torch.zeros(wq.shape[0], len(terms), dtype=wq.dtype, device=wq.device).scatter_reduce(1, iq, wq, "amax")
    d = torch.zeros(wd.shape[0], len(terms), dtype=wd.dtype, device=wd.device).scatter_reduce(1, idx_d, wd, "amax")
    return q.float() @ d.float().T


class BGEM3(nn.Module):
    """bge-m3: an encoder with a dense, a sparse and a ColBERT head (see the module docstring).

    Args:
        backbone: a ``transformers`` encoder (``AutoModel``; XLM-RoBERTa for bge-m3).
        tokenizer: its tokenizer.
        colbert_linear: ``nn.Linear(hidden, dim)``; sparse_linear: ``nn.Linear(hidden, 1)``.
        max_query_length / max_doc_length: truncation lengths in tokens.
        fix_encoder: freeze the backbone (train the heads only).
    """

    family = "bge_m3"
    runtime_args = ("dtype", "key")

    def __init__(self, backbone: nn.Module, tokenizer, colbert_linear: nn.Linear, sparse_linear: nn.Linear,
                 max_query_length: int = 64, max_doc_length: int = 512, fix_encoder: bool = False) -> None:
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        self.tokenizer.padding_side = "right"
        self.colbert_linear, self.sparse_linear = colbert_linear, sparse_linear
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.fix_encoder = fix_encoder
        if fix_encoder:
            self.backbone.requires_grad_(False)
        unused = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                  tokenizer.unk_token_id, tokenizer.bos_token_id}
        self.register_buffer("unused_ids", torch.tensor(sorted(i for i in unused if i is not None), dtype=torch.long),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, colbert_dim: int | None = None, max_query_length: int | None = None,
                        max_doc_length: int | None = None, fix_encoder: bool = False,
                        dtype: torch.dtype | None = None, key: str = "model.name_or_path") -> BGEM3:
        """Load a bge-m3 folder (its ``colbert_linear.pt`` / ``sparse_linear.pt``), or start new heads on an encoder
        (ColBERT ``Linear(hidden, colbert_dim or hidden)``, orthogonal; sparse ``Linear(hidden, 1)``). Options left
        None come from ``ragr.json``, else :data:`OPTION_DEFAULTS`."""
        from transformers import AutoModel, AutoTokenizer

        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        saved = json.loads((path / RAGR_FILE).read_text()) if (path / RAGR_FILE).is_file() else {}
        given = {"max_query_length": max_query_length, "max_doc_length": max_doc_length}
        options = {k: v if v is not None else saved.get(k, OPTION_DEFAULTS[k]) for k, v in given.items()}
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = AutoModel.from_pretrained(path, **kwargs)
        hidden = backbone.config.hidden_size
        if (path / COLBERT_FILE).is_file():
            colbert = load_linear(path / COLBERT_FILE)
        else:
            colbert = nn.Linear(hidden, colbert_dim or hidden)
            nn.init.orthogonal_(colbert.weight)
            nn.init.zeros_(colbert.bias)
        if (path / SPARSE_FILE).is_file():
            sparse = load_linear(path / SPARSE_FILE)
        else:
            sparse = nn.Linear(hidden, 1)
        if dtype is not None:
            colbert, sparse = colbert.to(dtype), sparse.to(dtype)
        return cls(backbone, tokenizer, colbert, sparse, fix_encoder=fix_encoder, **options)

    @property
    def dim(self) -> int:
        return self.colbert_linear.out_features

    @property
    def hidden(self) -> int:
        return self.backbone.config.hidden_size

    # ---- forward ------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        max_len = self.max_query_length if is_query else self.max_doc_length
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Packed outputs ``[B, L, H + D + 1]`` (see the module docstring); masked positions are zero."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        dense = torch.zeros_like(h)
        dense[:, 0] = F.normalize(h[:, 0], dim=-1)
        colbert = F.normalize(self.colbert_linear(h), dim=-1) * mask
        colbert = torch.cat([torch.zeros_like(colbert[:, :1]), colbert[:, 1:]], 1)  # no vector for [CLS]
        keep = mask.squeeze(-1) * (~torch.isin(input_ids, self.unused_ids.to(input_ids.device))).to(h.dtype)
        weights = torch.relu(self.sparse_linear(h)).squeeze(-1) * keep
        return torch.cat([dense, colbert.to(h.dtype), weights.unsqueeze(-1).to(h.dtype)], -1)

    def unpack(self, packed: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{dense [B, H], colbert [B, L-1, D], colbert_mask [B, L-1], weights [B, L], ids [B, L]}``."""
        h, d = self.hidden, self.dim
        packed = packed.float()
        return {"dense": packed[:, 0, :h], "colbert": packed[:, 1:, h : h + d],
                "colbert_mask": attention_mask[:, 1:].bool().to(packed.device), "weights": packed[..., -1],
                "ids": input_ids.to(packed.device)}

    @torch.no_grad()
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 32,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Per text: ``dense [H]``, ``sparse {id: weight}``, ``colbert [n, D]`` (fp32, CPU; padding dropped)."""
        from ragr.models.attention import shape_stable_attention

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out: list[dict[str, Any] | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], is_query).items()}
            with shape_stable_attention(device):
                parts = self.unpack(self(**feats), feats["input_ids"], feats["attention_mask"])
            for row, i in enumerate(idx):
                terms: dict[int, float] = {}
                for t, w in zip(parts["ids"][row].tolist(), parts["weights"][row].cpu().tolist()):
                    if w > 0 and w > terms.get(t, 0.0):
                        terms[t] = w
                cm = parts["colbert_mask"][row]
                out[i] = {"dense": parts["dense"][row].cpu(), "sparse": terms, "colbert": parts["colbert"][row][cm].cpu()}
            if progress is not None:
                progress(len(idx))
        self.train(was_training)
        return out  # type: ignore[return-value]

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """The bge-m3 layout (backbone, tokenizer, ``colbert_linear.pt``, ``sparse_linear.pt``) + a sentence-transformers
        dense layout (CLS pooling, Normalize) + ``ragr.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        for layer, name in ((self.colbert_linear, COLBERT_FILE), (self.sparse_linear, SPARSE_FILE)):
            torch.save({k: v.detach().float().cpu().contiguous() for k, v in layer.state_dict().items()}, path / name)
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": self.hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        (path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
        (path / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": self.max_doc_length, "do_lower_case": False}, indent=2))
        (path / RAGR_FILE).write_text(json.dumps({"family": self.family, "dim": self.dim,
                                                  "max_query_length": self.max_query_length,
                                                  "max_doc_length": self.max_doc_length}, indent=2))


def pair_scores(q: dict[str, Any], d: dict[str, Any]) -> tuple[float, float, float]:
    """``(dense, sparse, colbert)`` scores of two :meth:`BGEM3.encode` outputs (the inference formulas)."""
    dense = float(q["dense"] @ d["dense"])
    sparse = float(sum(w * d["sparse"].get(t, 0.0) for t, w in q["sparse"].items()))
    colbert = float((q["colbert"] @ d["colbert"].T).max(-1).values.sum() / max(1, q["colbert"].shape[0])) \
        if q["colbert"].shape[0] and d["colbert"].shape[0] else 0.0
    return dense, sparse, colbert


# ---- inference ------------------------------------------------------------------------------------
class BGEM3Scorer(Scorer):
    """Score pairs with a bge-m3 model: ``mode`` dense | sparse | colbert | ensemble (0.4 dense + 0.2 sparse +
    0.4 ColBERT, FlagEmbedding's default). ``score_groups`` also reports the sparse side's active terms."""

    family = "bge_m3"

    def __init__(self, model: BGEM3, mode: str = "ensemble", batch_size: int = 32) -> None:
        if mode not in MODE_WEIGHTS:
            raise ValueError(f"mode must be one of {', '.join(MODE_WEIGHTS)}, got {mode!r}")
        self.model, self.mode, self.batch_size = model, mode, batch_size
        self.tokenizer, self.max_length = model.tokenizer, model.max_doc_length
        self._stats: dict[str, float] = {}

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             mode: str = "ensemble", batch_size: int = 32, **options: Any) -> BGEM3Scorer:
        from ragr.infer.reranker import parse_dtype

        if max_length is not None:
            options["max_doc_length"] = max_length
        model = BGEM3.from_pretrained(str(path), dtype=parse_dtype(dtype), key="--model", **options).to(device).eval()
        return cls(model, mode=mode, batch_size=batch_size)

    def parameters(self):
        return self.model.parameters()

    def _combine(self, parts: tuple[float, float, float]) -> float:
        return sum(w * s for w, s in zip(MODE_WEIGHTS[self.mode], parts))

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        uq, ud = list(dict.fromkeys(queries)), list(dict.fromkeys(docs))
        qe = dict(zip(uq, self.model.encode(uq, is_query=True, batch_size=self.batch_size)))
        de = dict(zip(ud, self.model.encode(ud, is_query=False, batch_size=self.batch_size)))
        return [self._combine(pair_scores(qe[q], de[d])) for q, d in zip(queries, docs)]

    def score_groups(self, queries: list[str], candidates: list[list[str]], batch_size: int = 64,
                     progress=None) -> list[list[float]]:
        uq, ud = sorted(set(queries)), sorted({d for cs in candidates for d in cs})
        qe = dict(zip(uq, self.model.encode(uq, is_query=True, batch_size=batch_size, progress=progress)))
        de = dict(zip(ud, self.model.encode(ud, is_query=False, batch_size=batch_size, progress=progress)))
        self._stats = {"active_dims_query": sum(len(e["sparse"]) for e in qe.values()) / max(1, len(qe)),
                       "active_dims_doc": sum(len(e["sparse"]) for e in de.values()) / max(1, len(de))}
        return [[self._combine(pair_scores(qe[q], de[c])) for c in cs] for q, cs in zip(queries, candidates)]

    def encode_stats(self) -> dict[str, float]:
        return dict(self._stats)

    def doc_budget(self, query: str) -> int:
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False))

    def normalize(self, score: float) -> float:
        """dense / ColBERT / ensemble lie in [-1, 1] (mapped linearly to [0, 1]); sparse is >= 0 (s / (1 + s))."""
        if self.mode == "sparse":
            return max(0.0, score) / (1.0 + max(0.0, score))
        return min(1.0, max(0.0, (score + 1.0) / 2.0))


# ---- the family -----------------------------------------------------------------------------------
class BGEM3Family(Family):
    """unified: one encoder, dense (CLS) + sparse (lexical weights) + ColBERT heads, bge-m3 layout"""

    name = "bge_m3"
    model_class = BGEM3
    produces = ("unified", "pair_scores")
    default_loss = "m3"  # `ragr train model=bge-m3` without a loss= (ragr.config.compose)
    natural_temperature = 0.02
    token_budget = True

    def scorer_class(self) -> type:
        return BGEM3Scorer

    def scorer(self, model):
        return BGEM3Scorer(model)

    def encode(self, fwd, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        m = fwd.model
        feats = m.tokenize(texts, is_query)
        lengths = feats["attention_mask"].sum(1).tolist()
        width = feats["input_ids"].shape[1]

        def make_chunk(idx: list[int]) -> dict[str, torch.Tensor]:
            rows = torch.tensor(idx)
            return {k: v[rows, : max(lengths[i] for i in idx)] for k, v in feats.items()}

        packed = fwd.run(lengths, make_chunk, post=lambda out: F.pad(out, (0, 0, 0, width - out.shape[1])))
        return m.unpack(packed, feats["input_ids"], feats["attention_mask"])

    def similarity(self, model: BGEM3, q, d) -> dict[str, torch.Tensor]:
        """All-pairs ``{"dense", "sparse", "colbert"}`` score matrices ``[Bq, Nd]`` (the unified loss takes all three)."""
        return {"dense": q["dense"] @ d["dense"].T,
                "sparse": sparse_score_matrix(q["weights"], q["ids"], d["weights"], d["ids"]),
                "colbert": maxsim(q["colbert"], q["colbert_mask"], d["colbert"], d["colbert_mask"], True)}

    def own_group_scores(self, model: BGEM3, q, d) -> dict[str, torch.Tensor]:
        """:meth:`similarity` with only each query's own group scored (the rest at the lowest float)."""
        full = self.similarity(model, q, d)
        b, n = full["dense"].shape
        g = n // b
        own = torch.zeros(b, n, dtype=torch.bool, device=full["dense"].device)
        for i in range(b):
            own[i, i * g : (i + 1) * g] = True
        return {k: v.masked_fill(~own, torch.finfo(v.dtype).min) for k, v in full.items()}

    def pair_similarity(self, model: BGEM3, q, d, rep: torch.Tensor) -> torch.Tensor:
        """Ensemble pair scores ``dense + 0.3 sparse + colbert`` of document ``j`` against query ``rep[j]``."""
        dense = (q["dense"][rep] * d["dense"]).sum(-1)
        sparse = torch.stack([sparse_score_matrix(q["weights"][r : r + 1], q["ids"][r : r + 1], d["weights"][j : j + 1],
                                                  d["ids"][j : j + 1])[0, 0] for j, r in enumerate(rep.tolist())])
        colbert = maxsim_pairs(q["colbert"][rep], q["colbert_mask"][rep], d["colbert"], d["colbert_mask"], True)
        return dense + 0.3 * sparse + colbert

    def text_lengths(self, model: BGEM3, texts: Sequence[str], is_query: bool) -> list[int]:
        if not texts:
            return []
        max_len = model.max_query_length if is_query else model.max_doc_length
        return [len(x) for x in model.tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]]
