"""Dataclass schemas for the composed config. Unknown keys and wrong types are user errors.

Each section is a dataclass; the ``loss`` node is checked against the loss class's own signature
(see :func:`ragr.losses.build_loss`), so a new loss needs no schema edit.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ragr.errors import UserError, did_you_mean


@dataclass
class DataConfig:
    train: Optional[str] = None   # JSONL, .jsonl.gz, parquet, a save_to_disk folder or hf:NAME[:CONFIG][@SPLIT]
    eval: Optional[str] = None
    format: Literal["auto", "pair", "triplet", "scored", "pointwise", "grouped"] = "auto"
    num_negatives: int = 3   # hard negatives per query (embedder / colbert), or per group (rerankers: group = 1 + n)
    label_key: str = "label"  # pointwise data: the field holding the label
    # {field: column | [columns]}: the columns of data.train / data.eval that hold ragr's fields (ragr.data.sources)
    columns: Optional[dict[str, Any]] = None
    # ragr eval only (see src/ragr/eval/retrieval.py and src/ragr/eval/mteb.py)
    beir: Optional[str] = None        # a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): retrieval eval
    split: Optional[str] = None       # its qrels split (default: test, else the only one)
    tasks_dir: Optional[str] = None   # local copies of named reranking tasks: <tasks_dir>/<TaskName>.jsonl


@dataclass
class TrainerConfig:
    epochs: int = 2
    max_steps: Optional[int] = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: Optional[float] = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    chunk_size: int = 32     # at most this many sequences per forward pass, length-planned (cuts padding; exact)
    # how the training forward runs (src/ragr/families/forward.py): auto = packed on CUDA where the model supports it,
    # else bucketed; chunked off CUDA. chunked: chunk_size rows per forward; packed/bucketed: forward_tokens per forward
    forward: Literal["auto", "chunked", "packed", "bucketed"] = "auto"
    forward_tokens: Optional[int] = None   # packed / bucketed: tokens per forward pass (null: 32768)
    grad_cache: bool = False  # embedder: GradCache (loss and gradients unchanged, memory of one chunk, +1 forward)
    max_tokens_per_batch: Optional[int] = None  # embedder: micro-batches by token budget instead of batch_size
    log_every: int = 10
    save_every: int = 0
    save_total_limit: int = 2
    resume: Optional[str] = None
    resume_force: bool = False     # resume even when the config or the data differ from the run's (see rundir.py)
    eval_before: bool = True
    eval_after: bool = True
    eval_every: int = 0            # steps between dev evaluations during training (0: none); keeps run_dir/best/
    best_metric: str = "ndcg@10"   # the dev metric (higher is better) that picks run_dir/best/
    tensorboard: bool = False


@dataclass
class LauncherConfig:
    name: str = "local"
    num_processes: int = 1   # all ranks on all machines (accelerate's meaning), not per machine
    # multi-process launchers (ddp, deepspeed-zero1/2/3, fsdp); see src/ragr/launch/distributed.py
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: Optional[str] = None     # required with num_machines > 1
    main_process_port: Optional[int] = None   # null: a free port on one machine, 29500 across machines
    zero_stage: Optional[int] = None          # deepspeed-zero{1,2,3}
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"   # deepspeed
    offload_params: Literal["none", "cpu", "nvme"] = "none"      # deepspeed-zero3 (cpu/nvme), fsdp (cpu)
    nvme_path: Optional[str] = None           # deepspeed offload to nvme
    fsdp_version: Literal[1, 2] = 2
    sharding: Literal["full_shard", "shard_grad_op"] = "full_shard"   # fsdp
    layer_cls: Optional[list[str]] = None     # fsdp: layer class names to wrap (default: found from the model)
    timeout_s: float = 300.0                  # a training step stuck this long on any rank is an error, not a hang


@dataclass
class EvalConfig:
    batch_size: int = 64
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    tasks: list[str] = field(default_factory=list)   # named reranking tasks / suites (C-MTEB, MTEB-en, T2Reranking ...)
    top_k: int = 100                  # retrieval: documents retrieved per query
    reranker: Optional[str] = None    # retrieval: rerank the top hits with this model (folder, alias or hub id)
    reranker_family: Optional[str] = None
    rerank_top_k: int = 100           # retrieval: hits per query given to the reranker
    search: Literal["auto", "torch", "faiss"] = "auto"   # exact search backend (auto: faiss when installed)
    save_run: bool = True             # retrieval: write TREC run files beside eval.json


@dataclass
class TrainConfig:
    model: dict[str, Any]
    data: DataConfig
    trainer: TrainerConfig
    launcher: LauncherConfig
    loss: dict[str, Any]
    seed: int = 42
    name: str = "run"
    output_dir: str = "runs/run"


@dataclass
class EvalRunConfig:
    model: dict[str, Any]
    data: DataConfig
    eval: EvalConfig
    seed: int = 42
    output_dir: str = "runs/eval"


SCHEMAS = {"train": TrainConfig, "eval": EvalRunConfig}


# ---- ragr distill (issue 5): teacher / student nodes instead of model --------------------------
@dataclass
class DistillSettings:
    cache_dir: Optional[str] = None          # teacher-score cache (null: output_dir/teacher_scores)
    rescore: bool = False                    # recompute cached teacher scores
    teacher_batch_size: int = 32
    teacher_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    group_size: Optional[int] = None         # candidates per query (null: 1 + data.num_negatives)
    agreement_queries: int = 100             # queries for the student-teacher agreement before / after


@dataclass
class DistillRunConfig:
    teacher: dict[str, Any]
    student: dict[str, Any]
    data: DataConfig
    trainer: TrainerConfig
    launcher: LauncherConfig
    loss: dict[str, Any]
    distill: DistillSettings = field(default_factory=DistillSettings)
    seed: int = 42
    name: str = "distill"
    output_dir: str = "runs/distill"


SCHEMAS["distill"] = DistillRunConfig


# ---- ranges: every config value with a valid range, checked once the config is composed -----------------------
#: ``key -> range``. A range is ``">= 1"``, ``"> 0"`` or an interval ``"in [0, 1]"`` / ``"in [0, 1)"``; a list value
#: is checked item by item with ``"each ..."``, and ``"non-empty, each ..."`` also refuses an empty list. Null is
#: never range-checked (the type says whether null is allowed). Keys of the model and loss nodes are declared
#: once for every node of that kind: ``model.*`` applies to ``model``, ``student`` and ``teacher``, ``loss.*`` to
#: ``loss`` and ``loss.inner``; ``loss[NAME].key`` overrides ``loss.key`` for the loss NAME. A key a node does not
#: have is not checked (a loss without a temperature has nothing to check).
RANGES: dict[str, str] = {
    "seed": "in [0, 4294967295]",
    "data.num_negatives": ">= 0",
    "trainer.epochs": ">= 1",
    "trainer.max_steps": ">= 1",
    "trainer.batch_size": ">= 1",
    "trainer.grad_accum": ">= 1",
    "trainer.lr": "> 0",
    "trainer.weight_decay": ">= 0",
    "trainer.warmup_ratio": "in [0, 1]",
    "trainer.max_grad_norm": ">= 0",           # 0: no clipping
    "trainer.chunk_size": ">= 1",
    "trainer.forward_tokens": ">= 1",
    "trainer.max_tokens_per_batch": ">= 1",
    "trainer.log_every": ">= 1",
    "trainer.save_every": ">= 0",              # 0: only at the end
    "trainer.save_total_limit": ">= 1",
    "trainer.eval_every": ">= 0",              # 0: none
    "launcher.num_processes": ">= 1",
    "launcher.num_machines": ">= 1",
    "launcher.machine_rank": ">= 0",
    "launcher.main_process_port": "in [1, 65535]",
    "launcher.zero_stage": "in [0, 3]",
    "launcher.timeout_s": "> 0",
    "eval.batch_size": ">= 1",
    "eval.ks": "each >= 1",
    "eval.top_k": ">= 1",
    "eval.rerank_top_k": ">= 1",
    "distill.teacher_batch_size": ">= 1",
    "distill.group_size": ">= 1",
    "distill.agreement_queries": ">= 0",
    # model nodes (model, student, teacher)
    "model.max_length": ">= 1",
    "model.max_query_length": ">= 1",
    "model.max_doc_length": ">= 1",
    "model.dim": ">= 1",
    "model.dense_dim": ">= 1",
    "model.max_score_elements": ">= 1",
    "model.lora_r": ">= 0",                    # 0: train every weight
    "model.lora_alpha": "> 0",
    "model.lora_dropout": "in [0, 1)",
    # loss nodes (loss, loss.inner): the common arguments of the losses
    "loss.temperature": "> 0",
    "loss.teacher_temperature": "> 0",
    "loss.label_temperature": "> 0",
    "loss.hard_weight": "in [0, 1]",
    "loss.margin": ">= 0",
    "loss.sigma": "> 0",
    "loss.label_max": "> 0",
    "loss.dims": "non-empty, each >= 1",
    "loss[stella].dims": "each >= 1",          # empty (or null): the full width
    "loss.weights": "each >= 0",
    "loss.cosine_weight": ">= 0",
    "loss.similarity_weight": ">= 0",
    "loss.hinge_weight": ">= 0",
    "loss.lambda_q": ">= 0",                   # SPLADE FLOPS weights
    "loss.lambda_d": ">= 0",
    "loss.warmup_steps": ">= 0",
    "loss.dense_weight": ">= 0",               # bge-m3 unified loss
    "loss.sparse_weight": ">= 0",
    "loss.colbert_weight": ">= 0",
    "loss.ensemble_weight": ">= 0",
    "loss.ensemble_sparse_weight": ">= 0",
    "loss.self_distill_start_step": ">= 0",
    "model.colbert_dim": ">= 1",
}
#: node kinds whose ranges are declared once under ``model.`` / ``loss.``
RANGE_NODES = {"model": "model", "student": "model", "teacher": "model", "loss": "loss", "loss.inner": "loss"}

_RANGE = re.compile(r"^(?P<nonempty>non-empty, )?(?P<each>each )?(?:(?P<op>>=|>|<=|<) (?P<bound>\S+)|"
                    r"in (?P<lo_b>[\[(])(?P<lo>[^,]+), (?P<hi>[^\])]+)(?P<hi_b>[\])]))$")


def _in_range(value: float, m: re.Match) -> bool:
    if m["op"]:
        bound = float(m["bound"])
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[m["op"]]
    lo, hi = float(m["lo"]), float(m["hi"])
    return (value >= lo if m["lo_b"] == "[" else value > lo) and (value <= hi if m["hi_b"] == "]" else value < hi)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_range(path: str, value: Any, spec: str) -> None:
    """Refuse ``value`` outside ``spec`` (see :data:`RANGES`) with one line naming the key, the value and the range."""
    m = _RANGE.match(spec)
    if m is None:  # a typo in the table itself
        raise ValueError(f"bad range {spec!r} for {path}")
    if value is None:
        return
    if m["each"]:
        if not isinstance(value, list):
            return  # the type check reports it
        if m["nonempty"] and not value:
            raise UserError(f"config key '{path}' must be {spec}, got []")
        bad = [v for v in value if _is_number(v) and not _in_range(v, m)]
        if bad:
            raise UserError(f"config key '{path}' must be {spec}, got {value!r}")
        return
    if _is_number(value) and not _in_range(value, m):
        raise UserError(f"config key '{path}' must be {spec}, got {value!r}")


def _get(cfg: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_ranges(cfg: dict[str, Any]) -> None:
    """Apply :data:`RANGES` to a composed config: the sections' keys, then every model and loss node."""
    for key, spec in RANGES.items():
        if key.split(".", 1)[0].split("[", 1)[0] in ("model", "loss"):
            continue
        found, value = _get(cfg, key)
        if found:
            check_range(key, value, spec)
    for path, kind in RANGE_NODES.items():
        found, node = _get(cfg, path)
        if not found or not isinstance(node, dict):
            continue
        name = node.get("name") if kind == "loss" else None
        for key, value in node.items():
            spec = RANGES.get(f"{kind}[{name}].{key}") or RANGES.get(f"{kind}.{key}")
            if spec is not None and not isinstance(value, dict):
                check_range(f"{path}.{key}", value, spec)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is None and isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a type this checker does not model: let the constructor decide


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, collections.abc.Sequence):
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if tp is type(None):
        return "null"
    if origin is dict:
        return "a mapping"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_fields(node: dict[str, Any], schema: type, prefix: str) -> None:
    """Check ``node`` against a dataclass: unknown keys, missing required keys and types."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{k}" for k in fields]
            raise UserError(f"unknown config key '{path}'{did_you_mean(path, valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key '{path}' must be a mapping, got {value!r}")
            check_fields(value, tp, f"{path}.")
        elif not _type_ok(value, tp):
            raise UserError(f"config key '{path}' must be {_describe(tp)}, got {value!r}")
    for name, f in fields.items():
        if name not in node and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"config key '{prefix}{name}' is required")


MODEL_COMMON = ("preset", "family", "name_or_path")


def check_model_config(node: Any, path: str) -> None:
    """Check a model node: ``family`` picks the model family; other keys must be its ``from_pretrained`` arguments."""
    from ragr.families import get_family

    if not isinstance(node, dict) or "family" not in node or "name_or_path" not in node:
        raise UserError(f"config key '{path}' must be a mapping with 'family' and 'name_or_path'")
    family = get_family(node["family"])
    check_kwargs(node, family.options(), path, skip=MODEL_COMMON, runtime=family.runtime_args())


def check_kwargs(node: dict[str, Any], fn: Any, path: str, skip: tuple[str, ...] = ("name",),
                 runtime: tuple[str, ...] = ()) -> None:
    """Keys of ``node`` (except ``skip``) must be keyword arguments of ``fn`` other than ``runtime`` ones."""
    import inspect

    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if k not in ("self", "cls") and p.kind is p.POSITIONAL_OR_KEYWORD and k not in runtime}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks
        hints = {}
    for key, value in node.items():
        if key in skip:
            continue
        if key not in params:
            valid = [f"{path}.{k}" for k in list(params) + list(skip)]
            raise UserError(f"unknown config key '{path}.{key}'{did_you_mean(f'{path}.{key}', valid)}")
        if key in hints and not _type_ok(value, hints[key]):
            raise UserError(f"config key '{path}.{key}' must be {_describe(hints[key])}, got {value!r}")


def validate(command: str, cfg: dict[str, Any]) -> None:
    """Validate a resolved config (plain dict) for ``command``; raises UserError naming the key.

    In order: the shape (unknown keys, types, the model and loss nodes), the ranges (:data:`RANGES`), what the
    run trains (family x loss x settings, :mod:`ragr.config.checks`), then the input files.
    """
    from ragr.config import checks

    check_fields(cfg, SCHEMAS[command], "")
    if command == "distill":  # teacher / student nodes instead of model
        checks.check_distill_nodes(cfg)
    else:
        check_model_config(cfg["model"], "model")
        if "launcher" in cfg:
            from ragr.registry import launchers

            launchers.get(cfg["launcher"]["name"])
        if "loss" in cfg:
            from ragr.losses import check_loss_config

            check_loss_config(cfg["loss"], "loss")
    check_ranges(cfg)
    if command == "distill":
        checks.check_distill_objective(cfg)
    elif "loss" in cfg:
        checks.check_training(cfg, "model", ("labels", "positives"))
    checks.check_input_files(cfg)
