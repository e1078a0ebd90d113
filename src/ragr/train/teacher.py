"""Labelling with a teacher: score every candidate of a data file once, cache it, record provenance.

The teacher is any reranker family, scored through :class:`ragr.infer.Reranker`. A cache entry
(``<cache_dir>/<key>/``: ``raw.npy``, ``prob.npy``, ``offsets.npy``, ``meta.json``) is keyed by the
teacher (config, family, folder contents, dtype) and the scored view of the data (file hash, view),
so a changed teacher or file is re-scored and an unchanged one reused.

Under several ranks every rank scores its own contiguous share of the records, the shares are
gathered (``all_gather_object``, the same call on every rank), and rank 0 writes the entry once.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragr.data.distill import TeacherScores
from ragr.errors import UserError

#: model keys that only matter when the model is trained; a teacher only scores
TRAINING_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora", "dense_dim")
SCORE_CHUNK = 8192  # pairs handed to the teacher's Reranker at a time (it sorts them by length)


def teacher_family(node: dict[str, Any], path: str) -> str:
    """The teacher's family: what its folder says (``ragr.json``, ColBERT head, ST Pooling, architecture) wins
    over the config, because a teacher only scores; the config's family when the folder says nothing."""
    from ragr.infer.detect import detect_family

    try:
        return detect_family(path)
    except UserError:
        return node["family"]


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device() -> torch.device:
    """This rank's device: its own GPU (``LOCAL_RANK``) when there are GPUs, else the CPU."""
    from ragr.device import default_device

    return default_device(int(os.environ.get("LOCAL_RANK", "0")))


def _all_ranks_agree(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (one all_reduce on every rank; ``flag`` in one process)."""
    rank, world = _rank()
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=rank_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def load_teacher(node: dict[str, Any], path: str, family: str, dtype_setting: str):
    """The teacher as a :class:`ragr.infer.Scorer` on the best device, in eval mode.

    Options of the teacher node that the family's ``from_pretrained`` takes are passed on (prompt,
    max_length, pooling ...); training-only ones (LoRA, a fresh Dense head) are dropped.
    """
    import inspect

    from ragr.device import compute_dtype
    from ragr.infer.base import scorer_class
    from ragr.registry import families

    allowed: set[str] = set()
    if family in families:
        from ragr.families import get_family

        allowed = set(inspect.signature(get_family(family).options()).parameters)
    opts = {k: v for k, v in node.items()
            if k not in ("preset", "family", "name_or_path", "key", "dtype") and k not in TRAINING_ONLY and k in allowed}
    cls = scorer_class(family)
    try:
        return cls.load(path, device=rank_device(), dtype=compute_dtype(dtype_setting), **opts)
    except TypeError as exc:
        raise UserError(f"teacher (family {family}): {exc}") from None


def _fingerprint(path: str) -> list[tuple[str, str]]:
    """Names and content hashes (sha256, streamed) of a model folder's files, two levels deep."""
    from ragr.fileio import sha256_file

    root = Path(path)
    return [(str(p.relative_to(root)), sha256_file(str(p)))
            for p in sorted(root.glob("*")) + sorted(root.glob("*/*")) if p.is_file()]


def cache_key(node: dict[str, Any], family: str, path: str, dtype_setting: str, source: dict[str, Any],
              files: list[tuple[str, str]] | None = None) -> str:
    """Key of a cache entry: the teacher (config, family, folder contents, the dtype and device kind actually used)
    + the scored data (hash, view). Another machine's auto dtype (bf16 on a GPU) is another key."""
    from ragr.device import compute_dtype

    teacher = {k: v for k, v in node.items() if k not in TRAINING_ONLY}
    payload = json.dumps({"teacher": teacher, "family": family, "files": files if files is not None else _fingerprint(path),
                          "dtype": str(compute_dtype(dtype_setting) or "torch.float32"), "device": rank_device().type,
                          "source": source}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def score_groups(scorer, groups: Iterable[tuple[str, list[str]]], n_pairs: int, batch_size: int,
                 progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Score every (query, candidate) of ``groups`` with ``scorer``, streaming ``SCORE_CHUNK`` pairs at a time.

    A scorer that encodes texts on their own (embedders, ColBERT: ``score_groups``) encodes each distinct
    text of a chunk once, so a query is not re-encoded with each of its candidates; pair scorers go through
    the Reranker API (length-sorted token-budget batches). Both truncate, as the Reranker's default does.
    """
    from ragr.infer.reranker import Reranker

    by_text = getattr(scorer, "score_groups", None)
    rr = None if by_text is not None else Reranker.from_scorer(scorer, batch_size=batch_size)
    raw = np.empty(n_pairs, dtype=np.float32)
    at, pending, n_pending = 0, [], 0

    def flush():
        nonlocal at, pending, n_pending
        if pending:
            if rr is None:
                got = [s for row in by_text([q for q, _ in pending], [c for _, c in pending], batch_size) for s in row]
                if progress is not None:
                    progress(len(got))
            else:
                got = rr.score([(q, t) for q, texts in pending for t in texts], progress=progress)
            raw[at : at + len(got)] = got
            at += len(got)
            pending, n_pending = [], 0

    for query, texts in groups:
        pending.append((query, list(texts)))
        n_pending += len(texts)
        if n_pending >= SCORE_CHUNK:
            flush()
    flush()
    if at != n_pairs:
        raise RuntimeError(f"scored {at} pairs, expected {n_pairs}")
    prob = np.array([scorer.normalize(float(s)) for s in raw], dtype=np.float32)
    return raw, prob


def _read_entry(entry: Path, n_records: int) -> TeacherScores | None:
    try:
        raw, prob = np.load(entry / "raw.npy"), np.load(entry / "prob.npy")
        offsets = np.load(entry / "offsets.npy")
    except (OSError, ValueError):
        return None
    if len(offsets) != n_records + 1 or int(offsets[-1]) != len(raw) or len(prob) != len(raw):
        return None
    return TeacherScores(raw, prob, offsets)


def _write_entry(entry: Path, scores: TeacherScores, meta: dict[str, Any]) -> None:
    tmp = entry.with_name(f".{entry.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "raw.npy", scores.raw)
    np.save(tmp / "prob.npy", scores.prob)
    np.save(tmp / "offsets.npy", scores.offsets)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)


class TeacherSession:
    """Scores views of the data with one teacher, caching each view under ``cache_dir/<key>/``.

    The teacher is loaded lazily (only when some view is not cached) and freed by :meth:`close`.
    """

    def __init__(self, node: dict[str, Any], path: str, settings: dict[str, Any], cache_dir: Path, console) -> None:
        self.node, self.path, self.settings, self.cache_dir, self.console = node, path, settings, cache_dir, console
        self.family = teacher_family(node, path)
        if self.family != node["family"]:
            console.print(f"teacher: {path} holds a {self.family} model (config said {node['family']}); scoring it as {self.family}")
        self.scorer = None
        self.files: list[tuple[str, str]] | None = None

    def scores(self, source: dict[str, Any], groups_fn, offsets: np.ndarray) -> tuple[TeacherScores, dict[str, Any]]:
        """Teacher scores of one view (``source`` describes it: file, sha256, view); cached unless rescoring.

        Every rank calls this with the same view; the ranks agree on whether the cache serves it, score
        their shares of the records when it does not, and rank 0 writes the entry.
        """
        import torch.distributed as dist

        if self.files is None:  # hashed once per session: the train and eval views share it
            self.files = _fingerprint(self.path)
        key = cache_key(self.node, self.family, self.path, self.settings["teacher_dtype"], source, self.files)
        entry = self.cache_dir / key
        n_records = len(offsets) - 1
        rank, world = _rank()
        found = None
        if not self.settings.get("rescore"):
            found = _read_entry(entry, n_records) if (entry / "meta.json").is_file() else None
        if _all_ranks_agree(found is not None):
            meta = json.loads((entry / "meta.json").read_text())
            self.console.print(f"teacher scores ({source['view']}): reusing {entry}")
            return found, {**meta, "cache": str(entry), "reused": True}
        if self.scorer is None:
            self.scorer = load_teacher(self.node, self.path, self.family, self.settings["teacher_dtype"])
        lo, hi = rank * n_records // world, (rank + 1) * n_records // world
        share = int(offsets[hi] - offsets[lo])
        t0 = time.perf_counter()
        groups = (g for i, g in enumerate(groups_fn()) if lo <= i < hi)
        what = f"teacher scores ({source['view']})" + (f", {world} ranks" if world > 1 else "")
        with self.console.progress(what, share) as advance:
            raw, prob = score_groups(self.scorer, groups, share, self.settings["teacher_batch_size"], advance)
        if world > 1:
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, (raw, prob))
            raw = np.concatenate([p[0] for p in parts]).astype(np.float32)
            prob = np.concatenate([p[1] for p in parts]).astype(np.float32)
        n_pairs = int(offsets[-1])
        if len(raw) != n_pairs:
            raise RuntimeError(f"teacher scored {len(raw)} pairs, expected {n_pairs}")
        scores = TeacherScores(raw, prob, offsets.astype(np.int64))
        meta = {"key": key, "teacher": self.node.get("name_or_path"), "teacher_path": str(self.path),
                "family": self.family, "teacher_preset": self.node.get("preset"),
                "dtype": self.settings["teacher_dtype"], "device": str(rank_device().type), "ranks": world,
                "source": source, "pairs": n_pairs,
                "seconds": round(time.perf_counter() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if rank == 0:
            _write_entry(entry, scores, meta)
        if world > 1:
            dist.barrier()
        return scores, {**meta, "cache": str(entry), "reused": False}

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def add_to_manifest(run_dir: Path, key: str, value: Any) -> None:
    """Record ``key: value`` (teacher provenance) in ``run_dir/manifest.json``."""
    from ragr.train.rundir import atomic_write_text

    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest[key] = value
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))
