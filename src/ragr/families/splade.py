"""Family ``splade``: learned sparse retrieval (SPLADE) — one weight per vocabulary term, dot-product scores.

Model: :class:`Splade`, a masked-LM backbone (``AutoModelForMaskedLM``) whose vocabulary logits go
through ``log(1 + relu(x))`` and are max-pooled over the text's tokens (``pooling="sum"`` sums them),
giving a ``[V]`` vector that is mostly zeros. Padding never counts; the special tokens' own terms
([CLS], [SEP], [PAD], [MASK], [UNK]) never get a weight: their MLM-head bias is held at
``SPECIAL_BIAS`` so ``relu`` zeroes them (saved that way, so ``SparseEncoder`` gives the same vectors;
``mask_special_terms=false`` leaves the head alone). The special tokens' *positions* are pooled like
any other, as in SPLADE and sentence-transformers, so published checkpoints keep their vectors.

Inference-free query side (``inference_free=true``, like SPLADE-v3-doc / OpenSearch's doc-only models
and sentence-transformers' ``SparseStaticEmbedding``): a query's vector is a learned per-token weight
for each distinct token it contains, no encoder; documents go through the MLM.

On disk: the sentence-transformers sparse layout (``modules.json`` with ``MLMTransformer`` +
``SpladePooling``, or a ``Router`` with ``SparseStaticEmbedding`` for queries), so
``sentence_transformers.SparseEncoder(path)`` loads a saved model with equal vectors. Loading reads
that layout (ST 5.x ``MLMTransformer`` or 6.x ``Transformer`` with ``transformer_task: fill-mask``),
or a plain MLM folder (naver/splade-*), or a plain encoder (an MLM head tied to its word embeddings
is added: the decoder is the embedding matrix, the missing transform layer starts as the identity and
the vocabulary bias negative, see :data:`NEW_HEAD_SPARSITY`).

Forward: each side's texts tokenized unpadded, length-planned chunks (collective-safe), like the
embedder. Scorer: :class:`SpladeScorer` (sparse dot products; ``score_groups`` reports active dims).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ragr.families.base import DotProductFamily
from ragr.infer.base import Scorer

#: MLM-head bias of the special tokens' terms: relu(logit) is 0 for them whatever the text
SPECIAL_BIAS = -1.0e4
POOLINGS = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")
RAGR_FILE = "ragr.json"
STATIC_DIR = "query_0_SparseStaticEmbedding"
# sentence-transformers 5.x type names (6.x maps them to its own modules): loadable by both
ST_MLM = "sentence_transformers.sparse_encoder.models.MLMTransformer"
ST_POOLING = "sentence_transformers.sparse_encoder.models.SpladePooling"
ST_STATIC = "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding"
ST_ROUTER = "sentence_transformers.models.Router"
OPTION_DEFAULTS: dict[str, Any] = {"pooling": "max", "activation": "relu", "max_query_length": 64, "max_doc_length": 256,
                                   "mask_special_terms": True}


def splade_pool(logits: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "max",
                activation: str = "relu") -> torch.Tensor:
    """Term weights ``[B, V]`` from MLM logits ``[B, L, V]``: ``log(1 + relu(x))`` pooled over the real tokens.

    ``max``: since ``log1p(relu(.))`` never decreases, the max is taken over the logits first (one ``[B, V]``
    transform instead of ``[B, L, V]``; the same values and gradients as transforming every token).
    ``sum``: the transformed logits summed over the real tokens. ``activation="log1p_relu"`` applies
    ``log1p`` once more to each token's weight (OpenSearch's v3 models). Padding (``attention_mask == 0``) never counts.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling '{pooling}' ({', '.join(POOLINGS)})")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}' ({', '.join(ACTIVATIONS)})")
    pad = ~attention_mask.bool().unsqueeze(-1)

    def transform(x: torch.Tensor) -> torch.Tensor:
        w = torch.log1p(torch.relu(x))
        return torch.log1p(w) if activation == "log1p_relu" else w

    if pooling == "max":
        fill = torch.finfo(logits.dtype).min
        return transform((logits.masked_fill_(pad, fill) if not logits.requires_grad else logits.masked_fill(pad, fill)).amax(1))
    return (transform(logits) * (~pad).to(logits.dtype)).sum(1)


# ---- the sentence-transformers sparse layout -------------------------------------------------------
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _is_mlm_module(kind: str, folder: Path) -> bool:
    if kind.endswith("MLMTransformer"):
        return True
    if kind.endswith("Transformer"):
        conf = _read_json(folder / "sentence_bert_config.json") or {}
        return conf.get("transformer_task") == "fill-mask"
    return False


def read_sparse_layout(path: Path) -> dict[str, Any]:
    """What a model folder says about its SPLADE parts: ``mlm`` (the MLM folder), ``pooling``, ``activation``,
    ``static`` (the query-side SparseStaticEmbedding folder, or None), prompts and ``max_seq_length``.

    A folder without ``modules.json`` is a plain MLM (or encoder) folder, and so is a dense sentence-transformers
    model (no SpladePooling): its transformer's weights start the MLM. Raises ValueError for a sparse model that
    is not a SPLADE model (a CSR autoencoder, separate query and document MLMs, ...).
    """
    found: dict[str, Any] = {"mlm": path, "static": None}
    modules = _read_json(path / "modules.json")
    if modules is None:
        return found
    entries: list[tuple[str, Path, str]] = []  # (type, folder, route)
    for mod in modules:
        kind, sub = str(mod.get("type", "")), path / mod.get("path", "")
        if kind.endswith(("Router", "Asym")):
            conf = _read_json(sub / "router_config.json") or _read_json(sub / "config.json") or {}
            types, structure = conf.get("types", {}), conf.get("structure", {})
            for route, names in structure.items():
                entries += [(types.get(n, ""), sub / n, route) for n in names]
        else:
            entries.append((kind, sub, "all"))
    mlms = [(f, r) for k, f, r in entries if _is_mlm_module(k, f)]
    if not any(k.endswith("SpladePooling") for k, _, _ in entries):  # a dense model: its encoder starts a SPLADE one
        encoders = [f for k, f, _ in entries if k.endswith("Transformer")]
        if not encoders:
            raise ValueError(f"{path}: modules.json holds no transformer (not a SPLADE model or an encoder)")
        found["mlm"] = encoders[0]
        return found
    for kind, folder, route in entries:
        if _is_mlm_module(kind, folder):
            continue
        if kind.endswith("SpladePooling"):
            conf = _read_json(folder / "config.json") or {}
            found["pooling"] = conf.get("pooling_strategy", "max")
            found["activation"] = conf.get("activation_function", "relu")
        elif kind.endswith("SparseStaticEmbedding") and route == "query":
            found["static"] = folder
        else:
            raise ValueError(f"{path}: module {kind.rsplit('.', 1)[-1] or '?'} ({folder.name}) is not part of a SPLADE model "
                             "(an MLM + SpladePooling, optionally with a SparseStaticEmbedding query side)")
    if not mlms or "pooling" not in found:
        raise ValueError(f"{path}: modules.json holds no MLM transformer + SpladePooling (not a SPLADE model)")
    if len({f for f, _ in mlms}) > 1:
        raise ValueError(f"{path}: separate query and document MLM encoders are not supported")
    found["mlm"] = mlms[0][0]
    sbert = _read_json(found["mlm"] / "sentence_bert_config.json") or {}
    if sbert.get("max_seq_length"):
        found["max_seq_length"] = int(sbert["max_seq_length"])
    st_conf = _read_json(path / "config_sentence_transformers.json") or {}
    prompts = st_conf.get("prompts") or {}
    found["query_prompt"], found["doc_prompt"] = prompts.get("query") or "", prompts.get("document") or ""
    return found


def _load_static_weights(folder: Path, tokenizer, vocab: int) -> torch.Tensor:
    """A SparseStaticEmbedding's per-token weights ``[vocab]`` (``model.safetensors``, or an ``idf.json`` token table)."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        weight = load_file(str(folder / "model.safetensors"))["weight"].float()
    elif (folder / "pytorch_model.bin").is_file():
        weight = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)["weight"].float()
    else:
        conf = _read_json(folder / "config.json") or {}
        idf_file = folder / (conf.get("path") or "idf.json")
        if not idf_file.is_file():
            raise ValueError(f"{folder}: no model.safetensors or idf.json with the query token weights")
        idf = json.loads(idf_file.read_text())
        weight = torch.zeros(vocab)
        ids = tokenizer.convert_tokens_to_ids(list(idf))
        weight[torch.tensor(ids, dtype=torch.long)] = torch.tensor(list(idf.values()), dtype=torch.float32)
    if weight.shape[0] != vocab:
        raise ValueError(f"{folder}: {weight.shape[0]} query token weights, but the MLM has {vocab} terms")
    return weight


#: a new MLM head's vocabulary bias is -NEW_HEAD_SPARSITY * ||e_t||: a term fires when a token state aligns with its
#: embedding e_t beyond that many standard deviations of a random unit-variance state (about 200-700 active terms
#: per text on the bundled MiniLM, own tokens first; with a zero bias nearly every term fires and the start is noise)
NEW_HEAD_SPARSITY = 3.5


def _init_missing_head(model: nn.Module, missing: list[str]) -> None:
    """An MLM head the checkpoint lacked (a plain encoder): square projections start as the identity, so the first
    logits are the (layer-normed) token states' dot products with the tied word embeddings — each token's own term
    scores highest — and the vocabulary bias starts at ``-NEW_HEAD_SPARSITY * ||e_t||`` (sparse from the start)."""
    names = set(missing)
    out = model.get_output_embeddings()
    with torch.no_grad():
        for name, module in model.named_modules():
            if module is out:
                if module.bias is not None and f"{name}.bias" in names:
                    module.bias.copy_(-NEW_HEAD_SPARSITY * module.weight.float().norm(dim=1).to(module.bias.dtype))
            elif isinstance(module, nn.Linear) and f"{name}.weight" in names and module.in_features == module.out_features:
                module.weight.copy_(torch.eye(module.in_features, dtype=module.weight.dtype))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Linear) and f"{name}.bias" in names and module.bias is not None:
                module.bias.zero_()


class Splade(nn.Module):
    """SPLADE: ``w_t = pool_i log(1 + relu(MLM(text)_{i, t}))`` for every vocabulary term ``t``.

    Args:
        backbone: a ``transformers`` masked-LM (``AutoModelForMaskedLM``).
        tokenizer: its tokenizer.
        pooling: ``max`` (SPLADE v2 and later) or ``sum`` (SPLADE v1).
        activation: ``relu`` (``log(1 + relu(x))``) or ``log1p_relu`` (``log(1 + log(1 + relu(x)))``).
        query_weights: ``[V]`` per-token query weights (the inference-free query side), or None (queries
            go through the MLM like documents).
        max_query_length / max_doc_length: truncation lengths in tokens.
        query_prompt / doc_prompt: text prepended to queries / documents.
        mask_special_terms: the special tokens' terms never get a weight (see the module docstring).

    References:
        Formal et al., "SPLADE: Sparse Lexical and Expansion Model for First Stage Ranking", SIGIR 2021;
        "SPLADE v2", 2021; Lassance et al., "SPLADE-v3", 2024 (the inference-free doc models).
    """

    family = "splade"
    #: from_pretrained arguments filled by code, not by the config
    runtime_args = ("dtype", "key")

    def __init__(self, backbone: nn.Module, tokenizer, pooling: str = "max", activation: str = "relu",
                 query_weights: torch.Tensor | None = None, max_query_length: int = 64, max_doc_length: int = 256,
                 query_prompt: str = "", doc_prompt: str = "", mask_special_terms: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}' ({', '.join(POOLINGS)})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' ({', '.join(ACTIVATIONS)})")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.pooling, self.activation = pooling, activation
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.query_prompt, self.doc_prompt = query_prompt, doc_prompt
        self.mask_special_terms = mask_special_terms
        self.query_weights = nn.Parameter(query_weights.float()) if query_weights is not None else None
        self._term_mask: torch.Tensor | None = None
        if mask_special_terms:
            self._mask_special_terms()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        pooling: Literal["max", "sum"] | None = None,
        activation: Literal["relu", "log1p_relu"] | None = None,
        inference_free: bool | None = None,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        query_prompt: str | None = None,
        doc_prompt: str | None = None,
        mask_special_terms: bool | None = None,
        dtype: torch.dtype | None = None,
        key: str = "model.name_or_path",
    ) -> Splade:
        """Load a SPLADE folder (sentence-transformers sparse layout or a plain MLM) or start one from an encoder.

        Options left None come from the folder (``ragr.json``, then its sentence-transformers files), else
        from :data:`OPTION_DEFAULTS`; explicit arguments win. ``mask_special_terms`` defaults to false for a
        sentence-transformers SPLADE folder not saved by ragr (its vectors stay those it was published with). ``inference_free=None`` keeps what the folder
        holds (a SparseStaticEmbedding query side or not); ``true`` on a folder without one starts the
        query table at 1 for every ordinary token (0 for special tokens); ``false`` drops it.
        """
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from ragr.errors import UserError
        from ragr.models.hub import resolve_model_path

        path = Path(resolve_model_path(name_or_path, key))
        try:
            layout = read_sparse_layout(path)
        except ValueError as exc:
            raise UserError(f"{key}={name_or_path}: {exc}") from None
        saved = _read_json(path / RAGR_FILE) or {}
        given = {"pooling": pooling, "activation": activation, "max_query_length": max_query_length,
                 "max_doc_length": max_doc_length, "mask_special_terms": mask_special_terms}
        folder = {k: layout[k] for k in ("pooling", "activation") if k in layout}
        if "max_seq_length" in layout:
            folder["max_doc_length"] = layout["max_seq_length"]
        if "pooling" in layout:  # a published SparseEncoder keeps its vectors (its special terms included)
            folder["mask_special_terms"] = False
        options = {k: v if v is not None else saved.get(k, folder.get(k, OPTION_DEFAULTS[k])) for k, v in given.items()}
        mlm_dir = layout["mlm"]
        tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        kwargs = {"dtype": dtype} if dtype is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone, info = AutoModelForMaskedLM.from_pretrained(mlm_dir, output_loading_info=True, **kwargs)
        if info.get("missing_keys"):
            _init_missing_head(backbone, list(info["missing_keys"]))
        vocab = backbone.get_output_embeddings().out_features
        weights = None
        if inference_free is not False:
            if layout["static"] is not None:
                weights = _load_static_weights(layout["static"], tokenizer, vocab)
            elif inference_free:
                weights = torch.ones(vocab)
                special = [i for i in tokenizer.all_special_ids if i < vocab]
                weights[special] = 0.0
        return cls(backbone, tokenizer, options["pooling"], options["activation"], weights,
                   options["max_query_length"], options["max_doc_length"],
                   layout.get("query_prompt", "") if query_prompt is None else query_prompt,
                   layout.get("doc_prompt", "") if doc_prompt is None else doc_prompt,
                   options["mask_special_terms"])

    def _mask_special_terms(self) -> None:
        head = self.backbone.get_output_embeddings()
        special = torch.tensor(sorted(i for i in self.tokenizer.all_special_ids if i < self.vocab_size), dtype=torch.long)
        bias = getattr(head, "bias", None)
        if bias is not None:
            with torch.no_grad():
                bias[special.to(bias.device)] = torch.clamp(bias[special.to(bias.device)], max=SPECIAL_BIAS)
        else:  # no bias to hold them down: mask in the forward (a SparseEncoder of this folder keeps those terms)
            mask = torch.ones(self.vocab_size)
            mask[special] = 0.0
            self._term_mask = mask

    @property
    def vocab_size(self) -> int:
        return self.backbone.get_output_embeddings().out_features

    @property
    def dim(self) -> int:
        return self.vocab_size

    @property
    def inference_free(self) -> bool:
        return self.query_weights is not None

    def options(self) -> dict[str, Any]:
        """The pooling/tokenization options (what ``ragr.json`` stores)."""
        return {k: getattr(self, k) for k in OPTION_DEFAULTS}

    # ---- forward ------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], is_query: bool, padding: bool = True) -> dict[str, Any]:
        """Token ids (and attention masks) of ``texts``; the inference-free query side takes no special tokens."""
        prompt = self.query_prompt if is_query else self.doc_prompt
        max_len = self.max_query_length if is_query else self.max_doc_length
        static = is_query and self.inference_free
        return self.tokenizer([prompt + t for t in texts], padding=padding, truncation=True, max_length=max_len,
                              add_special_tokens=not static, return_tensors="pt" if padding else None)

    def static_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Inference-free query vectors: ``query_weights[t]`` for each distinct token ``t`` of the text, else 0."""
        presence = torch.zeros(input_ids.shape[0], self.vocab_size, device=input_ids.device, dtype=self.query_weights.dtype)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(input_ids)
        real = attention_mask.bool()
        presence[rows[real], input_ids[real]] = 1.0
        return presence * self.query_weights

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, static: torch.Tensor | None = None,
                **extra) -> torch.Tensor:
        """Term weights ``[B, V]``; ``static`` (any tensor) selects the inference-free query table instead of the MLM."""
        if static is not None:
            return self.static_vectors(input_ids, attention_mask) + self._touch(self.backbone.parameters())
        logits = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        w = splade_pool(logits, attention_mask, self.pooling, self.activation)
        if self._term_mask is not None:
            w = w * self._term_mask.to(w.device, w.dtype)
        if self.query_weights is not None:
            w = w + self._touch([self.query_weights])
        return w

    @staticmethod
    def _touch(params) -> torch.Tensor | float:
        """0, depending on every trainable parameter of ``params`` while training: each forward of a step (query
        table or MLM) then uses every parameter, as DDP requires of several forwards before one backward."""
        if not torch.is_grad_enabled():
            return 0.0
        used = [p.reshape(-1)[:1] for p in params if p.requires_grad]
        return torch.cat(used).sum() * 0.0 if used else 0.0

    def _batches(self, texts: Sequence[str], is_query: bool, batch_size: int, progress):
        """``(indices, vectors [b, V] fp32)`` per length-sorted batch, in eval mode, without gradients."""
        from ragr.models.attention import shape_stable_attention

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    feats = self.tokenize([texts[i] for i in idx], is_query)
                    ids, mask = feats["input_ids"].to(device), feats["attention_mask"].to(device)
                    extra = {"token_type_ids": feats["token_type_ids"].to(device)} if "token_type_ids" in feats else {}
                    with shape_stable_attention(device):
                        if is_query and self.inference_free:
                            vecs = self.static_vectors(ids, mask)
                        else:
                            vecs = self(ids, mask, **extra)
                    yield idx, vecs.float()
                    if progress is not None:
                        progress(len(idx))
        finally:
            self.train(was_training)

    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 32,
               progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Dense ``[N, V]`` fp32 CPU term weights (for a few texts; :meth:`encode_sparse` for a corpus)."""
        out = torch.zeros(len(texts), self.vocab_size)
        for idx, vecs in self._batches(texts, is_query, batch_size, progress):
            out[idx] = vecs.cpu()
        return out

    def encode_sparse(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 32,
                      progress: Callable[[int], None] | None = None):
        """``scipy.sparse.csr_matrix [N, V]`` (float32) of the texts' term weights, rows in input order."""
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for idx, vecs in self._batches(texts, is_query, batch_size, progress):
            r, c = vecs.nonzero(as_tuple=True)
            at = torch.tensor(idx, device=vecs.device)
            rows.append(at[r].cpu().numpy())
            cols.append(c.cpu().numpy())
            vals.append(vecs[r, c].cpu().numpy())
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        return sp.csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))),
                             shape=(len(texts), self.vocab_size), dtype=np.float32)

    def term_names(self) -> list[str]:
        """The token string of every output dimension (``[id]`` for ids the tokenizer does not name)."""
        n = len(self.tokenizer)
        names = self.tokenizer.convert_ids_to_tokens(list(range(min(n, self.vocab_size))))
        return [t if t is not None else f"[{i}]" for i, t in enumerate(names)] + [f"[{i}]" for i in range(n, self.vocab_size)]

    # ---- saving -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the sentence-transformers sparse layout (see the module docstring) and ``ragr.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        mlm_dir = path / "document_0_MLMTransformer" if self.inference_free else path
        self._save_mlm(mlm_dir)
        pooling = {"pooling_strategy": self.pooling, "activation_function": self.activation}
        if self.inference_free:
            self._save_router(path, pooling)
        else:
            (path / "1_SpladePooling").mkdir(exist_ok=True)
            (path / "1_SpladePooling" / "config.json").write_text(json.dumps(pooling, indent=2))
            modules = [{"idx": 0, "name": "0", "path": "", "type": ST_MLM},
                       {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": ST_POOLING}]
            (path / "modules.json").write_text(json.dumps(modules, indent=2))
        (path / "config_sentence_transformers.json").write_text(json.dumps({
            "model_type": "SparseEncoder", "prompts": {"query": self.query_prompt, "document": self.doc_prompt},
            "default_prompt_name": None, "similarity_fn_name": "dot"}, indent=2))
        meta = {"family": self.family, "inference_free": self.inference_free, **self.options()}
        (path / RAGR_FILE).write_text(json.dumps(meta, indent=2))

    def _save_mlm(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": self.max_doc_length, "do_lower_case": False}, indent=2))

    def _save_router(self, path: Path, pooling: dict) -> None:
        from safetensors.torch import save_file

        static = path / STATIC_DIR
        static.mkdir(exist_ok=True)
        save_file({"weight": self.query_weights.detach().float().cpu().contiguous()}, str(static / "model.safetensors"))
        (static / "config.json").write_text(json.dumps({"frozen": False}, indent=2))
        self.tokenizer.save_pretrained(static)
        (path / "document_1_SpladePooling").mkdir(exist_ok=True)
        (path / "document_1_SpladePooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        router = {"types": {STATIC_DIR: ST_STATIC, "document_0_MLMTransformer": ST_MLM, "document_1_SpladePooling": ST_POOLING},
                  "structure": {"query": [STATIC_DIR], "document": ["document_0_MLMTransformer", "document_1_SpladePooling"]},
                  "parameters": {"default_route": "document", "allow_empty_key": True}}
        (path / "router_config.json").write_text(json.dumps(router, indent=2))
        (path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": ST_ROUTER}], indent=2))


# ---- inference ------------------------------------------------------------------------------------
class SpladeScorer(Scorer):
    """Score (query, document) pairs by the dot product of their SPLADE term weights (family ``splade``).

    :meth:`score_groups` encodes each distinct text once and remembers the texts' active dimensions
    (mean nonzero terms per query and per document), which :meth:`encode_stats` reports beside the
    ranking metrics. :meth:`sparse_terms` gives ``{token: weight}`` per text (``ragr embed --sparse``,
    ``/embed_sparse``).
    """

    family = "splade"

    def __init__(self, model: Splade, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.max_length = model.max_doc_length
        self.batch_size = batch_size
        self._stats: dict[str, float] = {}
        self._names: list[str] | None = None

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             batch_size: int = 32, **options: Any) -> SpladeScorer:
        from ragr.infer.reranker import parse_dtype

        if max_length is not None:
            options["max_doc_length"] = max_length
        model = Splade.from_pretrained(str(path), dtype=parse_dtype(dtype), key="--model", **options).to(device).eval()
        return cls(model, batch_size=batch_size)

    def parameters(self):  # the Reranker reads the device from here
        return self.model.parameters()

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        uq, ud = list(dict.fromkeys(queries)), list(dict.fromkeys(docs))
        q = self.model.encode(uq, is_query=True, batch_size=self.batch_size)
        d = self.model.encode(ud, is_query=False, batch_size=self.batch_size)
        q_at, d_at = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(ud)}
        qi, di = torch.tensor([q_at[x] for x in queries]), torch.tensor([d_at[x] for x in docs])
        return (q[qi] * d[di]).sum(-1).tolist()

    def score_groups(self, queries: list[str], candidates: list[list[str]], batch_size: int = 64,
                     progress=None) -> list[list[float]]:
        """Each query's candidates scored by sparse dot products; each distinct text is encoded once."""
        uq, ud = sorted(set(queries)), sorted({d for cs in candidates for d in cs})
        q = self.model.encode_sparse(uq, is_query=True, batch_size=batch_size, progress=progress)
        d = self.model.encode_sparse(ud, is_query=False, batch_size=batch_size, progress=progress)
        self._stats = {"active_dims_query": active_dims(q), "active_dims_doc": active_dims(d)}
        q_at, d_at = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(ud)}
        out = []
        for qt, cs in zip(queries, candidates):
            rows = d[[d_at[c] for c in cs]]
            out.append(np.asarray(rows @ q[q_at[qt]].T.toarray()).ravel().astype(np.float64).tolist())
        return out

    def encode_stats(self) -> dict[str, float]:
        """Active dimensions of the texts the last :meth:`score_groups` encoded."""
        return dict(self._stats)

    def sparse_terms(self, texts: list[str], is_query: bool, by: str = "token") -> list[dict]:
        """Per text, its nonzero terms: ``{token: weight}`` (``by="token"``) or ``{id: weight}`` (``by="id"``)."""
        m = self.model.encode_sparse(texts, is_query=is_query, batch_size=self.batch_size)
        if by == "token" and self._names is None:
            self._names = self.model.term_names()
        out = []
        for r in range(m.shape[0]):
            lo, hi = m.indptr[r], m.indptr[r + 1]
            ids, vals = m.indices[lo:hi], m.data[lo:hi]
            order = np.argsort(-vals, kind="stable")
            keys = [int(i) for i in ids[order]] if by == "id" else [self._names[int(i)] for i in ids[order]]
            out.append(dict(zip(keys, (float(v) for v in vals[order]))))
        return out

    def doc_budget(self, query: str) -> int:
        prompt = self.model.doc_prompt
        n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False) - n_prompt)

    def normalize(self, score: float) -> float:
        """A sparse dot product (>= 0 for an MLM query side) mapped to [0, 1) by ``s / (1 + s)`` (no saturation at
        SPLADE's usual scores of 5-40, unlike a sigmoid); a negative score (a learned query table) maps to 0."""
        return max(0.0, score) / (1.0 + max(0.0, score))


def active_dims(matrix) -> float:
    """Mean nonzero terms per row of a ``[N, V]`` scipy sparse matrix or torch tensor (0 for no rows)."""
    if isinstance(matrix, torch.Tensor):
        return float((matrix != 0).sum(-1).float().mean()) if matrix.shape[0] else 0.0
    matrix.eliminate_zeros()
    return float(matrix.getnnz(axis=1).mean()) if matrix.shape[0] else 0.0


# ---- the family -----------------------------------------------------------------------------------
class SpladeFamily(DotProductFamily):
    """learned sparse: MLM logits -> log(1+relu), max-pooled term weights, dot product"""

    name = "splade"
    model_class = Splade
    produces = ("sparse", "pair_scores")
    default_loss = "splade"  # `ragr train model=splade` without a loss= (ragr.config.compose)
    natural_temperature = 1.0  # dot products of term weights (scores ~5-40): InfoNCE at temperature 1 (ST's scale 1)
    token_budget = True

    def scorer_class(self) -> type:
        return SpladeScorer

    def scorer(self, model):
        return SpladeScorer(model)

    def prepare(self, model: Splade, texts: Sequence[str], is_query: bool):
        """``(lengths, make_chunk)``: unpadded ids, each chunk padded to its longest (the query table on an
        inference-free query side: the chunk carries ``static``)."""
        enc = model.tokenize(texts, is_query, padding=False)
        ids, masks = enc["input_ids"], enc["attention_mask"]
        static = is_query and model.inference_free

        def make_chunk(idx: list[int]) -> dict[str, torch.Tensor]:
            padded = model.tokenizer.pad({"input_ids": [ids[i] for i in idx], "attention_mask": [masks[i] for i in idx]},
                                         return_tensors="pt")
            chunk = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
            if static:
                chunk["static"] = torch.ones(1)
            return chunk

        return [max(1, len(x)) for x in ids], make_chunk

    def token_ids(self, model: Splade, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        return model.tokenize(texts, is_query, padding=False)["input_ids"]
