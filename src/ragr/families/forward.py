"""How a family's batch becomes model outputs in training: planned chunks, one of three strategies, collective-safe.

A family hands :meth:`ChunkedForward.run` the length of each input and a ``make_chunk(indices)``
that pads those inputs into one forward's features; the runner plans the chunks, shares one
input-embedding lookup among them, and returns the outputs in input order. How the chunks are cut
and what shape the transformer sees is the **forward strategy** (``trainer.forward``):

* ``chunked`` (:class:`ChunkedForward`, a CPU's choice): length-sorted chunks of at most
  ``chunk_size`` inputs, each padded to its own longest (:func:`ragr.models.chunking.plan_chunks`).
  Least padding, many shapes: right where arithmetic dominates, wrong on a GPU, where every new
  shape costs host time (kernel selection, cuDNN graphs) and small chunks leave the card idle.
* ``packed`` (:class:`PackedForward`): padding-free. Each forward takes up to ``forward_tokens``
  real tokens (long and short inputs mixed, :func:`plan_packed`), and the backbone runs on *packed rows*: the kept tokens of several inputs laid end to
  end in rows of a bucketed width, each sequence's positions restarting, and attention kept inside
  each sequence. How is the transformers model's own: a decoder (Llama, Qwen2, Gemma ...) reads the
  sequence boundaries from ``position_ids`` (``masking_utils.find_packed_sequence_indices``, for
  sdpa, eager and flex attention; flash attention's varlen kernels through ``cu_seq_lens_*``); an
  encoder (BERT) takes a prepared 4D block-diagonal mask, which transformers passes to sdpa / eager
  unchanged, or flash attention's ``cu_seq_lens_*`` keyword arguments. Models outside
  :data:`ENCODER_POSITIONS` / :data:`PACKED_DECODERS` (or with another attention implementation)
  have no packed path: ``auto`` picks ``bucketed`` for them.
* ``bucketed`` (:class:`BucketedForward`): few forwards over shapes from a small fixed set: each
  chunk's length is rounded up to :func:`bucket_length` (powers of two to 64, then multiples of 64)
  and its row count to :func:`bucket_rows`, so kernels, autotuning and graphs are reused.
* ``auto``: ``packed`` on CUDA where the model supports it, else ``bucketed``; ``chunked`` off CUDA.

The packed and bucketed strategies change nothing in the families: they reshape the call of the
backbone (the outermost transformers base model inside the family's model) with a forward pre-hook,
and put its output back into the padded ``[rows, length, hidden]`` layout the family's head expects
(pad positions are zeros; a pooler is re-run on the restored states) with a forward hook. A text's
output does not depend on the strategy (attention masks and restarting positions; tests compare each
with one plainly padded forward). :func:`reshaped_forward` does the same for inference calls.

**Every rank makes the same calls.** DDP broadcasts buffers in each forward, FSDP and ZeRO-3
gather parameters in each forward: a rank that runs three chunks while another runs two waits
forever. So, under several ranks, the ranks first agree on the chunk count (one ``all_reduce(MAX)``
of a small integer per call, the same call on every rank), and a rank with fewer chunks splits
its largest ones (exact: a text's output does not depend on its chunk) or, with fewer inputs than
chunks, runs one-input filler chunks whose outputs enter the result multiplied by zero, so every
rank also runs the same backward. The wrapped module is therefore called a rank-independent number
of times per micro-step, whatever the strategy (every strategy plans through :meth:`ChunkedForward.plan`,
and reshaping a chunk never changes how often the module is called).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ragr.models.chunking import chunk_overhead, forward_chunks, input_embedding_to_share, plan_chunks, shared_input_embeddings

STRATEGIES = ("auto", "chunked", "packed", "bucketed")
#: tokens per forward pass of the packed and bucketed strategies when ``trainer.forward_tokens`` is null
FORWARD_TOKENS = 32768
#: the narrowest packed row (tokens); a row is never narrower than the longest input it holds
PACK_ROW_TOKENS = 256

#: encoders with a packed path (a 4D block-diagonal mask, or flash varlen), and how their plain padded forward
#: numbers positions: ``column`` (BERT: the column index) or ``roberta`` (padding_idx + 1 + rank among non-pad ids)
ENCODER_POSITIONS = {"bert": "column", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
#: decoders whose transformers implementation reads packed sequences from ``position_ids`` (create_causal_mask)
PACKED_DECODERS = frozenset({"llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2"})
#: attention implementations a prepared 4D mask works with (bool for sdpa, additive for eager)
MASK_ATTENTION = ("sdpa", "eager")
#: attention implementations with variable-length kernels (one packed row, ``cu_seq_lens_*``)
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
DECODER_ATTENTION = ("sdpa", "eager", "flex_attention")


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agree_count(n: int, device: torch.device) -> int:
    """The largest ``n`` over all ranks (``n`` itself in one process): one all_reduce, on every rank."""
    if _world() == 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def split_to(plan: list[list[int]], count: int) -> tuple[list[list[int]], int]:
    """``plan`` cut into exactly ``count`` chunks where it has enough inputs; returns ``(plan, fillers)``.

    The chunk with the most rows is halved until the count is reached (the halves keep the length
    order, so the padding cost grows least); ``fillers`` is how many one-input chunks are still missing.
    """
    plan = [list(c) for c in plan if c]
    while len(plan) < count:
        k = max(range(len(plan)), key=lambda i: len(plan[i])) if plan else None
        if k is None or len(plan[k]) < 2:
            break
        c = plan.pop(k)
        plan[k:k] = [c[: len(c) // 2], c[len(c) // 2 :]]
    return plan, count - len(plan)


# ---- shapes ---------------------------------------------------------------------------------------
def bucket_length(n: int) -> int:
    """The bucketed sequence length for ``n`` tokens: the next power of two up to 64 (at least 8), then the
    next multiple of 64."""
    n = max(1, int(n))
    if n <= 64:
        return max(8, 1 << (n - 1).bit_length())
    return -(-n // 64) * 64


def pack_rows(n: int) -> int:
    """The packed row count for ``n`` rows: the next power of two up to 8, then the next multiple of 8 (packed
    shapes need no fixed set: no kernel here sets itself up per shape; rounding only keeps them few)."""
    n = max(1, int(n))
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def bucket_rows(n: int) -> int:
    """The bucketed row count for ``n`` rows: the next power of two up to 16, then the next multiple of 16."""
    n = max(1, int(n))
    if n <= 16:
        return 1 << (n - 1).bit_length()
    return -(-n // 16) * 16


def plan_bucketed(lengths: Sequence[int], budget: int, overhead: int) -> list[list[int]]:
    """Indices of ``lengths`` cut into length-sorted chunks minimising ``sum(bucket_rows(rows) x
    bucket_length(longest) + overhead)`` with ``bucket_rows(rows) x bucket_length(longest) <= budget`` (an
    input longer than the budget gets a chunk of its own). Exact over cuts at bucketed row counts."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = bucket_length(lengths[order[end - 1]])
        cap = max(1, budget // width)
        sizes, k = [], 1
        while k <= min(cap, end):
            sizes.append(k)
            k = bucket_rows(k + 1)
        if end <= cap and end not in sizes:
            sizes.append(end)
        for rows in sizes:
            start = end - rows
            cost = best[start] + bucket_rows(rows) * width + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], n
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


def plan_packed(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` cut into chunks of at most ``budget`` real tokens each (an input longer than the
    budget alone), every chunk a mix of long and short inputs so its packed rows fill well: longest first, each
    input joins the chunk holding the fewest tokens that still has room, else opens a chunk (starting from
    ``ceil(total / budget)`` chunks, an input counted at most ``budget``). Deterministic; each chunk lists its inputs longest first."""
    sizes = [max(1, int(x)) for x in lengths]
    if not sizes:
        return []
    k = max(1, -(-sum(min(n, budget) for n in sizes) // budget))
    chunks: list[list[int]] = [[] for _ in range(k)]
    totals = [0] * k
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        c = min(range(len(chunks)), key=lambda j: (totals[j], j))
        if totals[c] and totals[c] + sizes[i] > budget:
            chunks.append([])
            totals.append(0)
            c = len(chunks) - 1
        chunks[c].append(i)
        totals[c] += sizes[i]
    return [c for c in chunks if c]


# ---- the backbone -----------------------------------------------------------------------------------
def base_models(root: nn.Module) -> list[nn.Module]:
    """The outermost transformers base models (``model.base_model is model``) inside ``root``."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return []
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in root.modules():
        if id(m) in inside:
            continue
        if isinstance(m, PreTrainedModel) and getattr(m, "base_model", None) is m:
            found.append(m)
            inside.update(id(x) for x in m.modules())
    return found


def _attn(m: nn.Module) -> str:
    return getattr(m.config, "_attn_implementation", None) or "eager"


def packed_kind(m: nn.Module) -> tuple[str, str] | None:
    """``(encoder|decoder, rows|varlen)`` when base model ``m`` has a packed path here, else None."""
    mt, impl = getattr(m.config, "model_type", ""), _attn(m)
    if mt in ENCODER_POSITIONS and not getattr(m.config, "is_decoder", False):
        if impl in MASK_ATTENTION:
            return "encoder", "rows"
        if impl in VARLEN_ATTENTION:
            return "encoder", "varlen"
    if mt in PACKED_DECODERS:
        if impl in DECODER_ATTENTION:
            return "decoder", "rows"
        if impl in VARLEN_ATTENTION:
            return "decoder", "varlen"
    return None


def packing_support(root: nn.Module) -> str | None:
    """Why ``root`` cannot run packed (one line), or None when it can."""
    bases = base_models(root)
    if len(bases) != 1:
        return f"{type(root).__name__} holds {len(bases)} transformers base models (packing needs exactly one)"
    m = bases[0]
    if packed_kind(m) is None:
        return (f"{type(m).__name__} (model_type '{getattr(m.config, 'model_type', '?')}', attention "
                f"'{_attn(m)}') has no packed path in ragr (encoders: {', '.join(sorted(ENCODER_POSITIONS))} with "
                f"{'/'.join(MASK_ATTENTION + VARLEN_ATTENTION)}; decoders: {', '.join(sorted(PACKED_DECODERS))})")
    return None


def resolve_strategy(name: str, device: torch.device | str, root: nn.Module | None = None, key: str = "trainer.forward") -> str:
    """The concrete strategy for ``name`` on ``device``: ``auto`` becomes ``packed`` on CUDA when ``root``
    supports it, ``bucketed`` on CUDA otherwise, ``chunked`` elsewhere. An explicit ``packed`` that ``root``
    does not support is a UserError."""
    from ragr.errors import UserError, did_you_mean

    if name not in STRATEGIES:
        raise UserError(f"{key}={name!r} is not a forward strategy{did_you_mean(str(name), STRATEGIES)}; "
                        f"choices: {', '.join(STRATEGIES)}")
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if name == "auto":
        if kind != "cuda":
            return "chunked"
        return "packed" if root is not None and packing_support(root) is None else "bucketed"
    if name == "packed" and root is not None:
        why = packing_support(root)
        if why is not None:
            raise UserError(f"{key}=packed: {why}; use {key}=bucketed (or auto)")
    return name


# ---- reshaping one backbone call ----------------------------------------------------------------------
def _embedding_dtype(m: nn.Module) -> torch.dtype:
    get = getattr(m, "get_input_embeddings", None)
    emb = get() if get is not None else None
    weight = getattr(emb, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32


@dataclass
class Packing:
    """Where each token of a padded ``[B, L]`` call sits in the packed ``[rows, width]`` call, and back.

    ``src[s]``: the flat ``B*L`` index of packed slot ``s`` (``-1``: a pad slot); ``dst[k]`` / ``slot[k]``:
    the flat index and the packed slot of the ``k``-th kept token. ``segment`` / ``attended`` (encoder rows)
    decide the block-diagonal mask: a query attends to the keys of its own segment that are attended
    (kept tokens outside the attention mask, such as ColBERT's [MASK] augmentation, attend but are not
    attended to, as in the padded forward; pad slots form their own segments). ``cu`` / ``max_len``: the
    varlen layout's cumulative sequence lengths.
    """

    shape: tuple[int, int]
    kind: str
    layout: str
    rows: int
    width: int
    src: torch.Tensor
    dst: torch.Tensor
    slot: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor | None = None
    attended: torch.Tensor | None = None
    cu: torch.Tensor | None = None
    max_len: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # packed inputs, once built

    def to(self, device: torch.device) -> Packing:
        move = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
                if k != "tensors"}
        return Packing(**move, tensors={k: v.to(device, non_blocking=True) for k, v in self.tensors.items()})

    def gather(self, x: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """``x [B, L]`` laid out as ``[rows, width]`` (pad slots ``fill``)."""
        flat = x.reshape(-1)
        src = self.src.to(flat.device)
        out = flat[src.clamp(min=0)]
        out = torch.where(src >= 0, out, torch.full_like(out, fill))
        return out.view(self.rows, self.width)

    def unpack(self, h: torch.Tensor) -> torch.Tensor:
        """Packed states ``[rows, width, ...]`` back to ``[B, L, ...]`` (zeros where nothing was kept)."""
        b, length = self.shape
        flat = h.reshape(self.rows * self.width, *h.shape[2:])
        kept = flat.index_select(0, self.slot.to(flat.device))
        return flat.new_zeros(b * length, *h.shape[2:]).index_copy(0, self.dst.to(flat.device), kept).view(
            b, length, *h.shape[2:])


def plan_packing(attention_mask: torch.Tensor, kind: str, layout: str, lengths: Sequence[int] | None = None,
                 input_ids: torch.Tensor | None = None, positions: str = "column", pad_id: int | None = None,
                 row_tokens: int = PACK_ROW_TOKENS) -> Packing | None:
    """The packed layout of one padded call (CPU tensors in, CPU tensors out), or None when it cannot be packed.

    Kept tokens: those of ``attention_mask``, plus, for a row padded on the right, the first ``lengths[i]``
    columns and (encoders) masked columns whose id is not ``pad_id``: tokens the family reads although they are
    not attended to, such as ColBERT's [MASK] augmentation. A decoder cannot hold such tokens (its mask comes
    from the positions alone): None. Rows (``layout='rows'``) are filled first-fit by
    decreasing length, ``width = bucket_length(max(longest, min(total, row_tokens)))`` and the row count is
    rounded by :func:`pack_rows`; ``layout='varlen'`` is one row of exactly the kept tokens.
    """
    import numpy as np

    mask = attention_mask.detach().to("cpu").bool().numpy()
    b, length = mask.shape
    keep = mask.copy()
    right = (mask[:, 0] | ~mask.any(1))[:, None]
    if lengths is not None:
        extent = np.arange(length)[None, :] < np.asarray([int(x) for x in lengths])[:, None]
        keep |= extent & right
    if kind == "encoder" and input_ids is not None and pad_id is not None:  # a masked slot holding a real id, not
        keep |= ~mask & (input_ids.detach().to("cpu").numpy() != pad_id) & right  # padding (ColBERT's [MASK]s)
    if kind == "decoder" and bool((keep & ~mask).any()):
        return None
    n = keep.sum(1)
    if bool((n == 0).any()):
        return None
    rank = keep.cumsum(1) - 1
    if kind == "decoder":
        pos = np.maximum(rank, 0)
    elif positions == "roberta":
        if input_ids is None or pad_id is None:
            return None
        real = (input_ids.detach().to("cpu").numpy() != pad_id).astype(np.int64)
        pos = real.cumsum(1) * real + pad_id
    else:
        pos = np.broadcast_to(np.arange(length), (b, length))
    if layout == "varlen":
        rows, width = 1, int(n.sum())
        first = np.concatenate([[0], n.cumsum()[:-1]])
    else:
        width = bucket_length(max(int(n.max()), min(int(n.sum()), row_tokens)))
        free = np.full(b, width, dtype=np.int64)  # first-fit by decreasing length; at most b rows
        used = 0
        first = np.zeros(b, dtype=np.int64)
        for i in sorted(range(b), key=lambda i: (-int(n[i]), i)):
            fits = np.flatnonzero(free[:used] >= n[i])
            r = int(fits[0]) if len(fits) else used
            used += r == used
            first[i] = r * width + (width - free[r])
            free[r] -= n[i]
        rows = pack_rows(used)
    slots = rows * width
    kb, kc = np.nonzero(keep)  # row-major: each input's kept columns in order
    slot = first[kb] + rank[kb, kc]
    dst = kb * length + kc
    src = np.full(slots, -1, dtype=np.int64)
    src[slot] = dst
    position_ids = np.zeros(slots, dtype=np.int64)
    position_ids[slot] = pos[kb, kc]
    segment = np.repeat(-(np.arange(rows) + 1), width)  # pad slots: one segment per row, never a sequence's
    segment[slot] = kb
    attended = np.ones(slots, dtype=bool)
    attended[slot] = mask[kb, kc]
    cu = torch.from_numpy(np.concatenate([[0], n.cumsum()]).astype(np.int32)) if layout == "varlen" else None
    t = torch.from_numpy
    return Packing(shape=(b, length), kind=kind, layout=layout, rows=rows, width=width, src=t(src), dst=t(dst),
                   slot=t(slot), position_ids=t(position_ids).view(rows, width), segment=t(segment).view(rows, width),
                   attended=t(attended).view(rows, width), cu=cu, max_len=int(n.max()))


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@lru_cache(maxsize=64)
def _parameters(cls: type) -> tuple[tuple[str, ...], bool]:
    """``forward``'s positional parameter names (without self), and whether it takes ``use_cache``."""
    params = inspect.signature(cls.forward).parameters
    names = tuple(p.name for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")
    return names, "use_cache" in params


def _bind(mod: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name (positional ones named by ``forward``'s signature)."""
    if not args:
        return dict(kwargs)
    bound = dict(zip(_parameters(type(mod))[0], args))
    bound.update(kwargs)
    return bound


class Reshape:
    """How one backbone call is reshaped (see :func:`reshape_for`): ``inputs`` gives the new keyword arguments,
    ``restore`` puts the output back into the padded layout. ``ids`` is what the input embedding will see."""

    ids: torch.Tensor | None = None

    def matches(self, bound: dict[str, Any]) -> bool:
        raise NotImplementedError

    def inputs(self, mod: nn.Module, bound: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, mod: nn.Module, output: Any) -> Any:
        raise NotImplementedError

    def to(self, device: torch.device) -> Reshape:
        return self


def _set_states(mod: nn.Module, output: Any, fn: Callable[[torch.Tensor], torch.Tensor], rows: Callable | None = None) -> Any:
    """Apply ``fn`` to the output's token states; re-run the pooler (or slice its rows with ``rows``)."""
    from transformers.utils import ModelOutput

    if not isinstance(output, ModelOutput):
        raise RuntimeError(f"ragr's forward strategies need {type(mod).__name__} to return a ModelOutput, "
                           f"got {type(output).__name__} (call it with return_dict=True)")
    output.last_hidden_state = fn(output.last_hidden_state)
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(fn(h) for h in output.hidden_states)
    if getattr(output, "pooler_output", None) is not None:
        if rows is not None:
            output.pooler_output = rows(output.pooler_output)
        else:
            pooler = getattr(mod, "pooler", None)
            if pooler is None:
                raise RuntimeError(f"{type(mod).__name__} returns a pooled output but has no .pooler to re-run")
            output.pooler_output = pooler(output.last_hidden_state)
    return output


class PackReshape(Reshape):
    """Padding-free: the call runs on :class:`Packing` rows."""

    def __init__(self, packing: Packing, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> None:
        self.p = packing
        self.ref = input_ids
        self.ids = packing.tensors.get("input_ids")
        if self.ids is None:
            self.ids = packing.tensors["input_ids"] = packing.gather(input_ids)
            if token_type_ids is not None:
                packing.tensors["token_type_ids"] = packing.gather(token_type_ids)

    def matches(self, bound: dict[str, Any]) -> bool:
        ids = bound.get("input_ids")
        return ids is not None and (ids is self.ref or (tuple(ids.shape) == tuple(self.ref.shape) and torch.equal(ids, self.ref)))

    def to(self, device: torch.device) -> PackReshape:
        p = self.p.to(device)
        return PackReshape(p, self.ref.to(device, non_blocking=True))

    def inputs(self, mod: nn.Module, bound: dict[str, Any]) -> dict[str, Any]:
        p = self.p
        new = {k: v for k, v in bound.items() if k not in _INPUT_KEYS}
        new["input_ids"] = self.ids
        if "token_type_ids" in p.tensors:
            new["token_type_ids"] = p.tensors["token_type_ids"]
        elif bound.get("token_type_ids") is not None:
            new["token_type_ids"] = p.gather(bound["token_type_ids"])
        new["position_ids"] = p.position_ids
        if _parameters(type(mod))[1]:
            new["use_cache"] = False
        if p.layout == "varlen":
            new["attention_mask"] = None
            new.update(cu_seq_lens_q=p.cu, cu_seq_lens_k=p.cu, max_length_q=p.max_len, max_length_k=p.max_len)
        elif p.kind == "decoder":
            new["attention_mask"] = None  # transformers reads the sequences from position_ids
        else:
            seg, att = p.segment, p.attended
            allowed = ((seg[:, :, None] == seg[:, None, :]) & att[:, None, :])[:, None]
            if _attn(mod) == "eager":
                dtype = _embedding_dtype(mod)
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min)
            new["attention_mask"] = allowed
        return new

    def restore(self, mod: nn.Module, output: Any) -> Any:
        return _set_states(mod, output, self.p.unpack)


class BucketReshape(Reshape):
    """The call padded to ``[bucket_rows(B), bucket_length(L)]``: extra columns masked out, extra rows copies of row 0."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None = None) -> None:
        self.ref = input_ids
        b, length = input_ids.shape
        self.shape = (b, length)
        self.rows, self.width = bucket_rows(b), bucket_length(length)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.tensors = {"input_ids": self._pad(input_ids), "attention_mask": self._pad(attention_mask)}
        if token_type_ids is not None:
            self.tensors["token_type_ids"] = self._pad(token_type_ids)
        self.ids = self.tensors["input_ids"]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        b, length = self.shape
        if self.width > length:
            x = torch.nn.functional.pad(x, (0, self.width - length))
        if self.rows > b:
            x = torch.cat([x, x[:1].expand(self.rows - b, *x.shape[1:])])
        return x

    def matches(self, bound: dict[str, Any]) -> bool:
        ids = bound.get("input_ids")
        return ids is not None and (ids is self.ref or (tuple(ids.shape) == tuple(self.ref.shape) and torch.equal(ids, self.ref)))

    def to(self, device: torch.device) -> BucketReshape:
        new = object.__new__(BucketReshape)
        new.ref, new.shape, new.rows, new.width = self.ref.to(device, non_blocking=True), self.shape, self.rows, self.width
        new.tensors = {k: v.to(device, non_blocking=True) for k, v in self.tensors.items()}
        new.ids = new.tensors["input_ids"]
        return new

    def inputs(self, mod: nn.Module, bound: dict[str, Any]) -> dict[str, Any]:
        new = {k: v for k, v in bound.items() if k not in _INPUT_KEYS}
        new.update(self.tensors)
        if bound.get("token_type_ids") is not None and "token_type_ids" not in self.tensors:
            new["token_type_ids"] = self._pad(bound["token_type_ids"])
        if bound.get("position_ids") is not None:
            new["position_ids"] = self._pad(bound["position_ids"])
        return new

    def restore(self, mod: nn.Module, output: Any) -> Any:
        b, length = self.shape
        return _set_states(mod, output, lambda h: h[:b, :length], rows=lambda p: p[:b])


def reshape_for(strategy: str, base: nn.Module, feats: dict[str, torch.Tensor], lengths: Sequence[int] | None = None,
                row_tokens: int = PACK_ROW_TOKENS) -> Reshape | None:
    """The :class:`Reshape` of a backbone call with ``feats`` (``input_ids``, ``attention_mask``, maybe
    ``token_type_ids``) under ``strategy`` (``packed`` / ``bucketed``); None: run it as it is."""
    ids = feats.get("input_ids")
    if ids is None or ids.dim() != 2:
        return None
    mask = feats.get("attention_mask")
    tt = feats.get("token_type_ids")
    if strategy == "bucketed":
        return BucketReshape(ids, mask, tt)
    if strategy != "packed":
        return None
    how = packed_kind(base)
    if how is None:
        return None
    if mask is None:
        mask = torch.ones_like(ids)
    if mask.dim() != 2:
        return None
    mt = getattr(base.config, "model_type", "")
    packing = plan_packing(mask, how[0], how[1], lengths, input_ids=ids, positions=ENCODER_POSITIONS.get(mt, "column"),
                           pad_id=getattr(base.config, "pad_token_id", None), row_tokens=row_tokens)
    if packing is None:
        return None
    return PackReshape(packing, ids, tt)


@contextmanager
def _hooked(bases: Sequence[nn.Module], next_reshape: Callable[[nn.Module, dict], Reshape | None]) -> Iterator[None]:
    """While active, each call of a module in ``bases`` is reshaped by ``next_reshape(module, arguments)``."""
    stack: list[Reshape | None] = []

    def pre(mod, args, kwargs):
        bound = _bind(mod, args, kwargs)
        r = None
        if bound.get("inputs_embeds") is None and bound.get("position_ids") is None:
            r = next_reshape(mod, bound)
        stack.append(r)
        return None if r is None else ((), r.inputs(mod, bound))

    def post(mod, args, kwargs, output):
        r = stack.pop() if stack else None
        return None if r is None else r.restore(mod, output)

    handles = []
    try:
        for m in bases:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def reshaped_forward(root: nn.Module, strategy: str, row_tokens: int = PACK_ROW_TOKENS) -> Iterator[None]:
    """Inference: while active, every backbone call inside ``root`` runs ``packed`` or ``bucketed``
    (computed from the call's own inputs; packing reads the attention mask on the host). ``chunked`` (and a
    model without a packed path, for ``packed``) leaves the calls as they are."""
    bases = base_models(root) if strategy in ("packed", "bucketed") else []
    if not bases:
        yield
        return

    def make(mod, bound):
        feats = {k: bound.get(k) for k in _INPUT_KEYS if bound.get(k) is not None}
        if strategy == "packed" and "input_ids" in feats:
            cpu = {k: v.to("cpu") for k, v in feats.items()}
            r = reshape_for(strategy, mod, cpu, row_tokens=row_tokens)
            if r is None:
                return None
            r = r.to(feats["input_ids"].device)
            r.ref = feats["input_ids"]
            return r
        return reshape_for(strategy, mod, feats, row_tokens=row_tokens)

    with _hooked(bases, make):
        yield


# ---- training -----------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """One planned forward: the module's features (on the device), its input count, and its backbone reshape."""

    feats: dict[str, torch.Tensor]
    rows: int
    reshape: Reshape | None = None

    @property
    def embed_ids(self) -> torch.Tensor:
        """What the input embedding will look up in this forward (for the shared lookup)."""
        return self.reshape.ids if self.reshape is not None and self.reshape.ids is not None else self.feats["input_ids"]


class ChunkedForward:
    """Calls ``module`` (the wrapped model) on length-planned chunks; see the module docstring (``chunked``).

    Args:
        module: what to call (the model, or DDP / FSDP / DeepSpeed around it).
        model: the unwrapped model (its input embeddings are shared across chunks).
        device: where the features go.
        chunk_size: at most this many inputs per forward.
    """

    strategy = "chunked"

    def __init__(self, module: nn.Module, model: nn.Module, device: torch.device | str, chunk_size: int) -> None:
        self.module, self.model, self.device, self.chunk_size = module, model, torch.device(device), chunk_size

    def _local_plan(self, lengths: Sequence[int]) -> list[list[int]]:
        return plan_chunks(list(lengths), self.chunk_size, chunk_overhead(self.device))

    def plan(self, lengths: Sequence[int]) -> tuple[list[list[int]], int]:
        """``(chunks of input indices, filler count)``, with the chunk count agreed across ranks."""
        plan = self._local_plan(lengths)
        count = agree_count(len(plan), self.device)
        return split_to(plan, count) if count != len(plan) else (plan, 0)

    def _reshape(self, feats: dict[str, torch.Tensor], lengths: list[int] | None) -> Reshape | None:
        return None

    def features(self, plan: list[list[int]], fillers: int, make_chunk: Callable[[list[int]], dict],
                 lengths: Sequence[int] | None = None) -> list[Chunk]:
        """Each chunk's features on the device; filler chunks repeat input 0 (their outputs are zeroed)."""
        chunks = []
        for idx in [*plan, *([[0]] * fillers)]:
            feats = make_chunk(idx)
            r = self._reshape(feats, [lengths[i] for i in idx] if lengths is not None else None)
            chunks.append(Chunk({k: v.to(self.device, non_blocking=True) for k, v in feats.items()}, len(idx),
                                r.to(self.device) if r is not None else None))
        if any(c.reshape is not None for c in chunks):  # the hook recognises its call by the very tensor passed
            for c in chunks:
                if c.reshape is not None and "input_ids" in c.feats:
                    c.reshape.ref = c.feats["input_ids"]
        return chunks

    def call(self, chunk: Chunk) -> torch.Tensor:
        """The module's output for one chunk (its backbone call reshaped by the strategy)."""
        if chunk.reshape is None:
            return self.module(**chunk.feats)
        pending = [chunk.reshape]

        def take(mod, bound):
            if pending and pending[0].matches(bound):
                return pending.pop()
            return None

        with _hooked(self._bases, take):
            return self.module(**chunk.feats)

    @property
    def _bases(self) -> list[nn.Module]:
        if not hasattr(self, "_base_cache"):
            self._base_cache = base_models(self.model)
        return self._base_cache

    def run(self, lengths: Sequence[int], make_chunk: Callable[[list[int]], dict],
            post: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs for every input, in input order (``post`` maps each chunk's output before joining)."""
        if not len(lengths):
            raise ValueError(f"{type(self).__name__}.run needs at least one input")
        plan, fillers = self.plan(lengths)
        chunks = self.features(plan, fillers, make_chunk, lengths)
        order = [i for idx in plan for i in idx]
        if all(c.reshape is None for c in chunks):
            return forward_chunks(self.module, self.model, order, [c.feats for c in chunks], post=post, fillers=fillers)
        with shared_input_embeddings(input_embedding_to_share(self.model, self.module), [c.embed_ids for c in chunks]):
            parts = [self.call(c) for c in chunks]
        extra = parts[len(parts) - fillers :] if fillers else []
        parts = parts[: len(parts) - fillers]
        out = torch.cat([post(p) for p in parts] if post is not None else parts)
        for filler in extra:
            out = out + filler.sum() * 0
        at = torch.tensor(order, device=out.device)
        inverse = torch.empty_like(at)
        inverse[at] = torch.arange(len(at), device=out.device)
        return out[inverse]


class BucketedForward(ChunkedForward):
    """``bucketed``: chunks planned over bucketed shapes (see the module docstring), each backbone call padded
    to ``[bucket_rows, bucket_length]``. ``forward_tokens`` bounds one forward's padded tokens."""

    strategy = "bucketed"

    def __init__(self, module: nn.Module, model: nn.Module, device: torch.device | str, chunk_size: int,
                 forward_tokens: int | None = None) -> None:
        super().__init__(module, model, device, chunk_size)
        self.forward_tokens = int(forward_tokens or FORWARD_TOKENS)

    def _local_plan(self, lengths: Sequence[int]) -> list[list[int]]:
        return plan_bucketed(list(lengths), self.forward_tokens, chunk_overhead(self.device))

    def _reshape(self, feats, lengths):
        return reshape_for("bucketed", self._bases[0], feats) if self._bases else None


class PackedForward(ChunkedForward):
    """``packed``: chunks of up to ``forward_tokens`` real tokens, each backbone call padding-free (see the
    module docstring). ``row_tokens``: the narrowest packed row."""

    strategy = "packed"

    def __init__(self, module: nn.Module, model: nn.Module, device: torch.device | str, chunk_size: int,
                 forward_tokens: int | None = None, row_tokens: int = PACK_ROW_TOKENS) -> None:
        super().__init__(module, model, device, chunk_size)
        why = packing_support(model)
        if why is not None:
            from ragr.errors import UserError

            raise UserError(f"trainer.forward=packed: {why}; use trainer.forward=bucketed (or auto)")
        self.forward_tokens, self.row_tokens = int(forward_tokens or FORWARD_TOKENS), int(row_tokens)

    def _local_plan(self, lengths: Sequence[int]) -> list[list[int]]:
        return plan_packed(list(lengths), self.forward_tokens)

    def _reshape(self, feats, lengths):
        return reshape_for("packed", self._bases[0], feats, lengths, row_tokens=self.row_tokens)


FORWARDS = {"chunked": ChunkedForward, "bucketed": BucketedForward, "packed": PackedForward}


def make_forward(module: nn.Module, model: nn.Module, device: torch.device | str, trainer: dict[str, Any]) -> ChunkedForward:
    """The training forward ``trainer.forward`` names (``auto`` resolved for ``device`` and ``model``)."""
    name = resolve_strategy(trainer.get("forward") or "auto", device, model)
    if name == "chunked":
        return ChunkedForward(module, model, device, trainer["chunk_size"])
    return FORWARDS[name](module, model, device, trainer["chunk_size"], trainer.get("forward_tokens"))
