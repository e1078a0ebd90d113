"""``ragr distill``: a teacher teaches a student, as two tasks for the family-agnostic engine.

* :class:`ScoreDistillTask` — the student (cross-encoder, LLM reranker, embedder or ColBERT) learns the
  teacher's scores of each query's candidates with a score-distillation loss (``distill-kl``,
  ``distill-mse``, ``distill-bce``, ``llm-preference``). The teacher is any reranker, scored through
  :class:`ragr.infer.Reranker` in a first, cached step (see :func:`teacher_scores`), or the scores
  already in the data (``teacher=data``).
* :class:`VectorDistillTask` — Stella/Jasper stage 3: an embedder student with a Dense head to the
  teacher width learns precomputed teacher vectors (``teacher=vectors``, ``loss=stella``).

Both report the student's agreement with the teacher before and after training (Spearman of the
student's and the teacher's scores per query, and top-1 agreement; for vectors: mean cosine to the
teacher vectors and Spearman of the in-batch similarities).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragr.errors import DataError, UserError

RERANKER_FAMILIES = ("cross_encoder", "llm_seqcls", "llm_yes")
STUDENT_FAMILIES = RERANKER_FAMILIES + ("embedder", "colbert")
SCORE_LOSSES = ("distill-kl", "distill-mse", "distill-bce", "llm-preference")
PSEUDO_TEACHERS = ("data", "vectors")
#: model keys that only matter when the model is trained; a teacher only scores
TRAINING_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora", "dense_dim")
SCORE_CHUNK = 8192  # pairs handed to the teacher's Reranker at a time (it sorts them by length)


# ---- config ---------------------------------------------------------------------------------------
def validate_distill(cfg: dict[str, Any]) -> None:
    """Validate the composed ``distill`` config (after the dataclass check); raises UserError naming the key."""
    from ragr.config.schema import MODEL_COMMON, check_model_config
    from ragr.errors import did_you_mean
    from ragr.losses import check_loss_config
    from ragr.registry import launchers

    student, teacher = cfg["student"], cfg["teacher"]
    check_model_config(student, "student")
    if student["family"] not in STUDENT_FAMILIES:
        raise UserError(f"student.family={student['family']} cannot be distilled into; "
                        f"choose one of {', '.join(STUDENT_FAMILIES)}")
    kind = teacher.get("family") if isinstance(teacher, dict) else None
    if kind in PSEUDO_TEACHERS:
        for key in teacher:
            if key not in MODEL_COMMON:
                raise UserError(f"unknown config key 'teacher.{key}'"
                                f"{did_you_mean(f'teacher.{key}', [f'teacher.{k}' for k in MODEL_COMMON])}")
        if kind == "vectors" and not teacher.get("name_or_path"):
            raise UserError("teacher=vectors needs teacher.name_or_path=VECTORS.npy (written by `ragr embed`)")
    else:
        check_model_config(teacher, "teacher")
        if not teacher.get("name_or_path"):
            raise UserError(f"teacher={teacher.get('preset')} needs the model: add teacher.name_or_path=DIR (a folder, alias or hub id)")
    if not student.get("name_or_path"):
        raise UserError("student.name_or_path is not set (a folder, alias or hub id)")
    launchers.get(cfg["launcher"]["name"])
    check_loss_config(cfg["loss"], "loss")
    loss = cfg["loss"]["name"]
    if kind == "vectors":
        if loss != "stella":
            raise UserError(f"teacher=vectors trains with loss=stella, not loss={loss}")
        if student["family"] != "embedder":
            raise UserError(f"teacher vectors teach an embedder student (student.family=embedder), not {student['family']}")
    elif loss == "stella":
        raise UserError("loss=stella distills teacher vectors: add teacher=vectors teacher.name_or_path=VECTORS.npy "
                        "(from `ragr embed`) and data.train=TEXTS.jsonl")
    elif loss not in SCORE_LOSSES:
        raise UserError(f"loss '{loss}' is not a distillation loss; choose loss={' or loss='.join(SCORE_LOSSES)} "
                        "(or loss=stella with teacher=vectors)")


# ---- data -----------------------------------------------------------------------------------------
def _prompted(rec: dict[str, Any]) -> str:
    return (rec.get("prompt") or rec.get("prompt_for_query") or "") + rec["query"]


def detect_distill_format(path: str) -> str:
    """``grouped`` / ``pointwise`` when the file has ``hits`` / ``content`` lines, else pair / triplet / scored."""
    from ragr.data.formats import detect_format
    from ragr.data.jsonl import iter_jsonl
    from ragr.data.rerank import detect_rerank_format

    for _, _, obj in iter_jsonl(path):
        if "hits" in obj or "content" in obj:
            return detect_rerank_format(path)
    return detect_format(path)


def load_distill_file(path: str, fmt: str, label_key: str, num_negatives: int):
    """Validate every line; return ``(JsonlIndex, format)``."""
    from ragr.data.formats import load_training_file
    from ragr.data.rerank import load_rerank_training_file

    if fmt == "auto":
        fmt = detect_distill_format(path)
    if fmt in ("pointwise", "grouped"):
        return load_rerank_training_file(path, fmt, label_key, num_negatives)
    return load_training_file(path, fmt)


def candidates(rec: dict[str, Any], fmt: str, label_key: str) -> tuple[list[str], list[float], list[float] | None]:
    """A record's candidate texts (in its own order), hard labels, and the scores it carries (or None)."""
    if fmt == "pointwise":
        return [rec["content"]], [float(rec[label_key])], [float(rec[label_key])]
    if fmt == "grouped":
        labels = [float(h[label_key]) for h in rec["hits"]]
        return [h["content"] for h in rec["hits"]], labels, labels
    pos, neg = rec["pos"], rec.get("neg") or []
    scores = None
    if "pos_scores" in rec:
        scores = [float(s) for s in rec["pos_scores"]] + [float(s) for s in rec.get("neg_scores") or []]
    elif "scores" in rec:
        scores = [float(s) for s in rec["scores"]]
    if scores is not None and len(scores) != len(pos) + len(neg):
        scores = None  # "scores" cover the positives only: not a score for every candidate
    return pos + neg, [1.0] * len(pos) + [0.0] * len(neg), scores


class TeacherScores:
    """Flat per-candidate teacher scores of a file: record ``i`` owns ``raw[offsets[i]:offsets[i + 1]]``.

    ``raw`` are the teacher's raw scores (logit, yes-minus-no logit, cosine, MaxSim, or the data's
    values); ``prob`` their [0, 1] form (the scorer's normalization: sigmoid of a logit — for an LLM
    "yes" teacher, P(yes) over {yes, no} — or (cosine + 1) / 2; the data's values as they are).
    """

    def __init__(self, raw: np.ndarray, prob: np.ndarray, offsets: np.ndarray) -> None:
        self.raw, self.prob, self.offsets = raw, prob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.raw[a:b], self.prob[a:b]


class DistillDataset:
    """Groups of a query's candidates with their teacher scores, re-sampled every epoch.

    Item ``i`` of epoch ``e`` (RNG seeded by ``(seed, e, i)``): one candidate with the record's
    highest hard label (a positive) first, then up to ``group_size - 1`` of its other candidates drawn
    without replacement (queries with fewer keep all; the collator masks the rest). Pointwise data:
    the one candidate.
    """

    def __init__(self, index, fmt: str, label_key: str, scores: TeacherScores, group_size: int, seed: int = 0) -> None:
        self.index, self.fmt, self.label_key, self.scores = index, fmt, label_key, scores
        self.group_size, self.seed, self.epoch = max(1, group_size), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.index[i]
        texts, labels, _ = candidates(rec, self.fmt, self.label_key)
        raw, prob = self.scores.of(i)
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        top = max(labels)
        first = rng.choice([k for k, y in enumerate(labels) if y == top])
        rest = [k for k in range(len(texts)) if k != first]
        pick = [first] + rng.sample(rest, min(len(rest), self.group_size - 1))
        return {"query": _prompted(rec), "docs": [texts[k] for k in pick], "labels": [labels[k] for k in pick],
                "teacher_raw": [float(raw[k]) for k in pick], "teacher_prob": [float(prob[k]) for k in pick]}


def collate_groups(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Ragged groups -> flat pairs plus ``[B, G]`` tensors (``mask`` marks real candidates; ``flat`` maps pairs into ``B * G``)."""
    b, g = len(examples), max(len(e["docs"]) for e in examples)
    mask = torch.zeros(b, g, dtype=torch.bool)
    out = {k: torch.zeros(b, g) for k in ("labels", "teacher_raw", "teacher_prob")}
    pair_queries, docs, flat, pair_query_index = [], [], [], []
    for i, e in enumerate(examples):
        n = len(e["docs"])
        mask[i, :n] = True
        for k in out:
            out[k][i, :n] = torch.tensor(e[k], dtype=torch.float32)
        pair_queries += [e["query"]] * n
        pair_query_index += [i] * n
        docs += e["docs"]
        flat += [i * g + k for k in range(n)]
    return {"queries": [e["query"] for e in examples], "pair_queries": pair_queries, "docs": docs,
            "pair_query_index": torch.tensor(pair_query_index), "flat": torch.tensor(flat), "mask": mask, **out}


# ---- the teacher ----------------------------------------------------------------------------------
def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _teacher_dtype(setting: str) -> torch.dtype | None:
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def teacher_family(node: dict[str, Any], path: str) -> str:
    """The teacher's family: what its folder says (``ragr.json``, ColBERT head, ST Pooling, architecture) wins
    over the config, because a teacher only scores; the config's family when the folder says nothing."""
    from ragr.infer.detect import detect_family

    try:
        return detect_family(path)
    except UserError:
        return node["family"]


def load_teacher(node: dict[str, Any], path: str, family: str, dtype_setting: str):
    """The teacher as a :class:`ragr.infer.Scorer` on the best device, in eval mode.

    Options of the teacher node that the family's ``from_pretrained`` takes are passed on (prompt,
    max_length, pooling ...); training-only ones (LoRA, a fresh Dense head) are dropped.
    """
    import inspect

    from ragr.infer.base import scorer_class
    from ragr.registry import families

    allowed: set[str] = set()
    if family in families:
        allowed = set(inspect.signature(families.get(family).from_pretrained).parameters)
    opts = {k: v for k, v in node.items()
            if k not in ("preset", "family", "name_or_path", "key", "dtype") and k not in TRAINING_ONLY and k in allowed}
    cls = scorer_class(family)
    try:
        return cls.load(path, device=_device(), dtype=_teacher_dtype(dtype_setting), **opts)
    except TypeError as exc:
        raise UserError(f"teacher (family {family}): {exc}") from None


def _fingerprint(path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times of a model folder's files (two levels deep)."""
    root = Path(path)
    out = []
    for p in sorted(root.glob("*")) + sorted(root.glob("*/*")):
        if p.is_file():
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def cache_key(node: dict[str, Any], family: str, path: str, dtype_setting: str, source: dict[str, Any]) -> str:
    """Key of a cache entry: the teacher (config, family, folder contents, dtype) + the scored data (hash, view)."""
    teacher = {k: v for k, v in node.items() if k not in TRAINING_ONLY}
    payload = json.dumps({"teacher": teacher, "family": family, "path": str(Path(path).resolve()),
                          "files": _fingerprint(path), "dtype": dtype_setting, "source": source},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def score_groups(scorer, groups: Iterable[tuple[str, list[str]]], n_pairs: int, batch_size: int,
                 progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Score every (query, candidate) of ``groups`` with ``scorer`` through the Reranker API (streaming)."""
    from ragr.infer.reranker import Reranker

    rr = Reranker.from_scorer(scorer, batch_size=batch_size)
    raw = np.empty(n_pairs, dtype=np.float32)
    at, pending = 0, []

    def flush():
        nonlocal at, pending
        if pending:
            got = rr.score(pending, progress=progress)
            raw[at : at + len(got)] = got
            at += len(got)
            pending = []

    for query, texts in groups:
        pending.extend((query, t) for t in texts)
        if len(pending) >= SCORE_CHUNK:
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

    def scores(self, source: dict[str, Any], groups_fn, offsets: np.ndarray) -> tuple[TeacherScores, dict[str, Any]]:
        """Teacher scores of one view (``source`` describes it: file, sha256, view); cached unless rescoring."""
        key = cache_key(self.node, self.family, self.path, self.settings["teacher_dtype"], source)
        entry = self.cache_dir / key
        n_records = len(offsets) - 1
        if not self.settings.get("rescore"):
            found = _read_entry(entry, n_records) if (entry / "meta.json").is_file() else None
            if found is not None:
                meta = json.loads((entry / "meta.json").read_text())
                self.console.print(f"teacher scores ({source['view']}): reusing {entry}")
                return found, {**meta, "cache": str(entry), "reused": True}
        if self.scorer is None:
            self.scorer = load_teacher(self.node, self.path, self.family, self.settings["teacher_dtype"])
        n_pairs = int(offsets[-1])
        t0 = time.perf_counter()
        with self.console.progress(f"teacher scores ({source['view']})", n_pairs) as advance:
            raw, prob = score_groups(self.scorer, groups_fn(), n_pairs, self.settings["teacher_batch_size"], advance)
        scores = TeacherScores(raw, prob, offsets.astype(np.int64))
        meta = {"key": key, "teacher": self.node.get("name_or_path"), "teacher_path": str(self.path),
                "family": self.family, "teacher_preset": self.node.get("preset"),
                "dtype": self.settings["teacher_dtype"], "device": _device(), "source": source, "pairs": n_pairs,
                "seconds": round(time.perf_counter() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_entry(entry, scores, meta)
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


# ---- agreement ------------------------------------------------------------------------------------
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (None when either side is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(student: list[list[float]], teacher: list[list[float]]) -> dict[str, float]:
    """Mean per-query Spearman and top-1 agreement of student vs teacher scores (queries with >= 2 candidates)."""
    rhos, top1 = [], []
    for s, t in zip(student, teacher):
        if len(s) < 2:
            continue
        rho = spearman(s, t)
        if rho is not None:
            rhos.append(rho)
        top1.append(float(np.argmax(s) == np.argmax(t)))
    out = {"agreement_queries": float(len(top1))}
    if rhos:
        out["teacher_spearman"] = float(np.mean(rhos))
    if top1:
        out["teacher_top1"] = float(np.mean(top1))
    return out


def _student_scorer(model, family: str):
    if family == "embedder":
        from ragr.infer.embedder import EmbedderScorer

        return EmbedderScorer(model)
    if family == "colbert":
        from ragr.infer.colbert import ColBERTScorer

        return ColBERTScorer(model, cache_elements=0)
    return model


# ---- the tasks ------------------------------------------------------------------------------------
class _DistillBase:
    def __init__(self, cfg: dict[str, Any], quiet: bool = False, student_path: str | None = None) -> None:
        from ragr.ui import Console

        self.cfg, self.quiet = cfg, quiet
        self.console = Console(quiet=quiet)
        self.student_path = student_path or cfg["student"]["name_or_path"]
        self.run_dir = Path(cfg["output_dir"])
        self.model = None

    @property
    def family(self) -> str:
        return self.cfg["student"]["family"]

    def _build_student(self, **overrides):
        from ragr.models import build_model

        node = {**self.cfg["student"], "name_or_path": self.student_path, **overrides}
        self.model = build_model(node, key="student.name_or_path")
        return self.model

    def _eval_file_rows(self):
        from ragr.data.formats import load_rerank_file

        path = self.cfg["data"].get("eval")
        return load_rerank_file(path) if path else None

    def _eval_metrics(self, model, rows, progress) -> dict[str, float]:
        from ragr.eval.rerank import evaluate_embedder, evaluate_reranker

        if self.family == "embedder":
            return evaluate_embedder(model, rows, batch_size=64, progress=progress)
        if self.family == "colbert":
            from ragr.infer.colbert import evaluate_colbert

            return evaluate_colbert(model, rows, batch_size=32, progress=progress)
        return evaluate_reranker(model, rows, batch_size=64, progress=progress)

    @staticmethod
    def _count_eval(rows) -> int:
        from ragr.eval.rerank import count_pairs

        return count_pairs(rows) if rows else 0

    def save(self, model, path: Path) -> None:
        model.save(path)


class ScoreDistillTask(_DistillBase):
    """Teacher-score distillation into a reranker, embedder or ColBERT student (see the module docstring)."""

    losses = SCORE_LOSSES

    def __init__(self, cfg: dict[str, Any], quiet: bool = False, teacher_path: str | None = None,
                 student_path: str | None = None) -> None:
        super().__init__(cfg, quiet, student_path)
        self.teacher_path = teacher_path
        self.teacher_family: str | None = None  # the family that scored (None: scores from the data)
        self.format: str | None = None
        self.scores: TeacherScores | None = None
        self.agreement_set: tuple[list[str], list[list[str]], list[list[float]], str] | None = None

    # -- data + teacher --
    @property
    def from_data(self) -> bool:
        return self.cfg["teacher"]["family"] == "data"

    def group_size(self) -> int:
        if self.format == "pointwise":
            return 1
        return self.cfg["distill"].get("group_size") or 1 + self.cfg["data"]["num_negatives"]

    def build_dataset(self):
        from ragr.models.hub import resolve_model_path
        from ragr.train.rundir import sha256_file

        data = self.cfg["data"]
        if not data.get("train"):
            raise UserError("data.train is not set (pass data.train=path/to/train.jsonl)")
        label_key = data.get("label_key", "label")
        index, self.format = load_distill_file(data["train"], data.get("format", "auto"), label_key, data["num_negatives"])
        counts = np.zeros(len(index) + 1, dtype=np.int64)
        for i in range(len(index)):
            counts[i + 1] = len(candidates(index[i], self.format, label_key)[0])
        offsets = np.cumsum(counts)
        k = min(self.cfg["distill"]["agreement_queries"], len(index))
        if self.from_data:
            self.scores = self._data_scores(index, label_key, offsets)
            add_to_manifest(self.run_dir, "teacher", {"source": "data", "file": data["train"], "format": self.format,
                                                       "fields": "scores | pos_scores/neg_scores" if self.format not in (
                                                           "pointwise", "grouped") else label_key})
            self._agreement_from_train(index, label_key, k)
        else:
            path = self.teacher_path or resolve_model_path(self.cfg["teacher"]["name_or_path"], key="teacher.name_or_path")
            cache_dir = Path(self.cfg["distill"].get("cache_dir") or self.run_dir / "teacher_scores")
            session = TeacherSession(self.cfg["teacher"], path, self.cfg["distill"], cache_dir, self.console)
            self.teacher_family = session.family
            try:
                source = {"view": "train", "file": str(data["train"]), "sha256": sha256_file(data["train"]),
                          "format": self.format, "label_key": label_key if self.format in ("pointwise", "grouped") else None}

                def train_groups() -> Iterator[tuple[str, list[str]]]:
                    for i in range(len(index)):
                        rec = index[i]
                        yield rec["query"], candidates(rec, self.format, label_key)[0]

                self.scores, prov = session.scores(source, train_groups, offsets)
                provenance = {"source": "model", "train": prov}
                rows = self._eval_file_rows()
                if rows and self.cfg["distill"]["agreement_queries"] > 0:
                    rows = rows[: self.cfg["distill"]["agreement_queries"]]
                    eval_offsets = np.concatenate([[0], np.cumsum([len(r["positive"]) + len(r["negative"]) for r in rows])])
                    eval_source = {"view": f"eval[:{len(rows)}]", "file": str(data["eval"]), "sha256": sha256_file(data["eval"])}
                    groups = lambda: ((r["query"], r["positive"] + r["negative"]) for r in rows)  # noqa: E731
                    eval_scores, provenance["eval"] = session.scores(eval_source, groups, eval_offsets)
                    self.agreement_set = ([(r.get("prompt") or "") + r["query"] for r in rows],
                                          [r["positive"] + r["negative"] for r in rows],
                                          [eval_scores.of(i)[0].tolist() for i in range(len(rows))],
                                          f"{len(rows)} queries of {Path(data['eval']).name}")
                else:
                    self._agreement_from_train(index, label_key, k)
            finally:
                session.close()
            add_to_manifest(self.run_dir, "teacher", provenance)
        self._check_scores_fit_the_loss()
        return DistillDataset(index, self.format, label_key, self.scores, self.group_size(), seed=self.cfg["seed"])

    def _data_scores(self, index, label_key: str, offsets: np.ndarray) -> TeacherScores:
        raw = np.empty(int(offsets[-1]), dtype=np.float32)
        for i in range(len(index)):
            texts, _, scores = candidates(index[i], self.format, label_key)
            if scores is None:
                rec = index[i]
                what = ("'scores' cover the positives only; give 'pos_scores' and 'neg_scores'" if "neg" in rec and "scores" in rec
                        else "no teacher scores ('scores' beside 'pos', or 'pos_scores' / 'neg_scores')")
                raise DataError(index.path, index.linenos[i], f"teacher=data needs a score for every candidate: {what}")
            raw[offsets[i] : offsets[i + 1]] = scores
        return TeacherScores(raw, raw.copy(), offsets)

    def _agreement_from_train(self, index, label_key: str, k: int) -> None:
        queries, docs, teacher = [], [], []
        if self.format == "pointwise":  # one candidate per line: one ranking over the first k pairs
            pairs = [(_prompted(index[i]), index[i]["content"]) for i in range(k)]
            self.agreement_set = ([q for q, _ in pairs], [[d] for _, d in pairs],
                                  [self.scores.of(i)[0].tolist() for i in range(k)], f"{k} training pairs (pooled)")
            return
        for i in range(k):
            rec = index[i]
            queries.append(_prompted(rec))
            docs.append(candidates(rec, self.format, label_key)[0])
            teacher.append(self.scores.of(i)[0].tolist())
        self.agreement_set = (queries, docs, teacher, f"{k} training queries")

    def _check_scores_fit_the_loss(self) -> None:
        name = self.cfg["loss"]["name"]
        if name == "distill-bce" or (name == "distill-mse" and self.cfg["loss"].get("space") == "prob"):
            p = self.scores.prob
            if len(p) and (p.min() < 0 or p.max() > 1):
                raise UserError(f"loss={name} needs teacher probabilities in [0, 1], but the teacher scores range over "
                                f"[{p.min():.3g}, {p.max():.3g}]; use loss=distill-kl or loss=distill-mse")
        if self.format == "pointwise" and name in ("distill-kl", "llm-preference"):
            raise UserError(f"pointwise data has one candidate per query; loss={name} compares candidates of a query "
                            "(use loss=distill-bce or loss=distill-mse, or grouped / triplet data)")

    # -- model + loss --
    def build_model(self):
        return self._build_student()

    def build_loss(self):
        from ragr.losses import build_loss
        from ragr.losses.distill import NATURAL_TEMPERATURE, ScoreDistillLoss

        node = dict(self.cfg["loss"])
        if "temperature" in node and node["temperature"] is None:  # the natural scale of the student's scores
            node["temperature"] = NATURAL_TEMPERATURE.get(self.family, 1.0)
        if "teacher_temperature" in node and node["teacher_temperature"] is None:  # ... and of the teacher's
            node["teacher_temperature"] = NATURAL_TEMPERATURE.get(self.teacher_family or "", 1.0)
        loss = build_loss(node)
        if not isinstance(loss, ScoreDistillLoss):
            raise UserError(f"loss '{node['name']}' is not a score-distillation loss ({', '.join(SCORE_LOSSES)})")
        return loss

    @staticmethod
    def collate(examples):
        return collate_groups(examples)

    def _student_pair_scores(self, model, unwrapped, batch, device) -> torch.Tensor:
        rep = batch["pair_query_index"].to(device)
        if self.family == "embedder":
            chunk = self.cfg["trainer"]["chunk_size"]
            q = unwrapped.embed(batch["queries"], is_query=True, forward=model, chunk_size=chunk)
            d = unwrapped.embed(batch["docs"], is_query=False, forward=model, chunk_size=chunk)
            return (q.float()[rep] * d.float()).sum(-1)
        if self.family == "colbert":
            from ragr.models.colbert import maxsim_pairs

            q = {k: v.to(device) for k, v in unwrapped.tokenize(batch["queries"], is_query=True).items()}
            d = {k: v.to(device) for k, v in unwrapped.tokenize(batch["docs"], is_query=False).items()}
            q_vecs, d_vecs = model(**q), model(**d)
            return maxsim_pairs(q_vecs[rep], q["token_mask"][rep], d_vecs, d["token_mask"], unwrapped.normalize_by_query_length)
        feats = {k: v.to(device) for k, v in unwrapped.tokenize(batch["pair_queries"], batch["docs"]).items()}
        return model(**feats).float().view(-1)

    def compute_loss(self, model, unwrapped, loss_fn, batch, device) -> dict[str, torch.Tensor]:
        pair_scores = self._student_pair_scores(model, unwrapped, batch, device).float()
        mask = batch["mask"].to(device)
        scores = torch.zeros(mask.numel(), device=device, dtype=pair_scores.dtype)
        scores = scores.index_put((batch["flat"].to(device),), pair_scores).view(mask.shape)
        teacher = batch["teacher_prob" if loss_fn.teacher_space == "prob" else "teacher_raw"].to(device)
        return loss_fn(scores, teacher, batch["labels"].to(device), mask)

    # -- evaluation: dev metrics + agreement with the teacher --
    def eval_rows(self):
        return {"eval": self._eval_file_rows(), "agreement": self.agreement_set}

    def count_eval_items(self, rows) -> int:
        n = self._count_eval(rows["eval"])
        if rows["agreement"]:
            n += sum(len(d) for d in rows["agreement"][1])
        return n

    def evaluate(self, model, rows, progress=None) -> dict[str, float]:
        from ragr.infer.reranker import Reranker

        metrics: dict[str, float] = {}
        if rows["eval"]:
            metrics.update(self._eval_metrics(model, rows["eval"], progress))
        if rows["agreement"]:
            queries, docs, teacher, _ = rows["agreement"]
            was_training = model.training
            rr = Reranker.from_scorer(_student_scorer(model, self.family), batch_size=64)
            flat = rr.score([(q, d) for q, ds in zip(queries, docs) for d in ds], progress=progress)
            model.train(was_training)
            student, at = [], 0
            for ds in docs:
                student.append(flat[at : at + len(ds)])
                at += len(ds)
            if self.format == "pointwise" and all(len(d) == 1 for d in docs):
                student, teacher = [[s[0] for s in student]], [[t[0] for t in teacher]]
            metrics.update(agreement(student, teacher))
        return metrics


class VectorDistillTask(_DistillBase):
    """Stella/Jasper stage 3: an embedder (+ Dense head to the teacher width) learns teacher vectors."""

    losses = ("stella",)

    def __init__(self, cfg: dict[str, Any], quiet: bool = False, student_path: str | None = None) -> None:
        super().__init__(cfg, quiet, student_path)
        self.vectors: np.ndarray | None = None
        self.texts_index = None

    def build_dataset(self):
        from ragr.data.jsonl import JsonlIndex
        from ragr.infer.vectors import text_checker

        data = self.cfg["data"]
        if not data.get("train"):
            raise UserError("data.train is not set (pass data.train=TEXTS.jsonl, one {\"text\": ...} per line)")
        path = str(data["train"])
        self.texts_index = JsonlIndex.build(path, text_checker(path))
        self.vectors = open_vectors(self.cfg["teacher"]["name_or_path"], len(self.texts_index), path)
        add_to_manifest(self.run_dir, "teacher", {"source": "vectors", "file": str(self.cfg["teacher"]["name_or_path"]),
                                                   "shape": list(self.vectors.shape), **_sidecar(self.cfg["teacher"]["name_or_path"])})
        return VectorDataset(self.texts_index, self.vectors)

    def build_model(self):
        width = int(self.vectors.shape[1])
        dense_dim = self.cfg["student"].get("dense_dim")
        if dense_dim not in (None, width):
            raise UserError(f"student.dense_dim={dense_dim} but the teacher vectors have {width} dimensions; "
                            f"leave student.dense_dim=null (a Dense head to {width} is added) or set it to {width}")
        model = self._build_student(dense_dim=width)
        if model.dim != width:
            raise UserError(f"the student's output has {model.dim} dimensions (its folder's Dense head) but the teacher "
                            f"vectors have {width}; start from a model without a Dense head")
        return model

    def build_loss(self):
        from ragr.losses import build_loss

        return build_loss(self.cfg["loss"], embed_dim=self.model.dim)

    @staticmethod
    def collate(examples):
        return {"queries": [e["text"] for e in examples],
                "vectors": torch.from_numpy(np.stack([e["vector"] for e in examples]).astype(np.float32))}

    def compute_loss(self, model, unwrapped, loss_fn, batch, device) -> dict[str, torch.Tensor]:
        emb = unwrapped.embed(batch["queries"], is_query=False, forward=model, chunk_size=self.cfg["trainer"]["chunk_size"])
        return loss_fn(emb.float(), batch["vectors"].to(device))

    def eval_rows(self):
        k = min(self.cfg["distill"]["agreement_queries"], len(self.texts_index))
        sample = [VectorDataset.text_of(self.texts_index[i]) for i in range(k)]
        return {"eval": self._eval_file_rows(), "agreement": (sample, np.array(self.vectors[:k], dtype=np.float32))}

    def count_eval_items(self, rows) -> int:
        return self._count_eval(rows["eval"]) + len(rows["agreement"][0])

    def evaluate(self, model, rows, progress=None) -> dict[str, float]:
        import torch.nn.functional as F

        metrics: dict[str, float] = {}
        if rows["eval"]:
            metrics.update(self._eval_metrics(model, rows["eval"], progress))
        texts, teacher = rows["agreement"]
        if texts:
            s = F.normalize(model.encode(texts, is_query=False, batch_size=64, progress=progress).float(), dim=-1)
            t = F.normalize(torch.from_numpy(teacher), dim=-1)
            metrics["teacher_cosine"] = float((s * t).sum(-1).mean())
            if len(texts) >= 3:
                i, j = torch.triu_indices(len(texts), len(texts), offset=1)
                rho = spearman((s @ s.T)[i, j].numpy(), (t @ t.T)[i, j].numpy())
                if rho is not None:
                    metrics["teacher_sim_spearman"] = rho
        return metrics


def _sidecar(vectors_path: str) -> dict[str, Any]:
    side = Path(str(vectors_path)).with_suffix(".json")
    try:
        return {"written_by": json.loads(side.read_text())} if side.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def open_vectors(path: str, rows: int, texts_path: str) -> np.ndarray:
    """Memory-map a float32 ``(N, dim)`` .npy of teacher vectors and check it has one row per text."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"teacher.name_or_path={path}: no such vectors file (write one with `ragr embed`)")
    try:
        vectors = np.load(p, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"teacher.name_or_path={path} is not a .npy array ({exc})") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise UserError(f"teacher.name_or_path={path}: expected a float (N, dim) array, got {vectors.dtype} {vectors.shape}")
    if vectors.shape[0] != rows:
        raise UserError(f"teacher.name_or_path={path} has {vectors.shape[0]} rows but {texts_path} has {rows} texts; "
                        "row i of the vectors must belong to line i of the texts")
    return vectors


class VectorDataset:
    """Item ``i``: the text of line ``i`` (its ``prompt`` prepended) and row ``i`` of the teacher vectors."""

    def __init__(self, index, vectors: np.ndarray) -> None:
        self.index, self.vectors = index, vectors

    @staticmethod
    def text_of(rec: dict[str, Any]) -> str:
        return (rec.get("prompt") or rec.get("prompt_for_query") or "") + (rec["text"] if "text" in rec else rec["query"])

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self.text_of(self.index[i]), "vector": np.asarray(self.vectors[i], dtype=np.float32)}


# ---- entry point ----------------------------------------------------------------------------------
def run_distill(cfg: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Resolve the teacher and student (failing fast, before a run directory exists), then train."""
    from ragr.models.hub import resolve_model_path
    from ragr.train.engine import Engine

    launcher = cfg["launcher"]
    if launcher["name"] != "local" or launcher.get("num_processes", 1) != 1:
        raise UserError("ragr distill runs in one process for now: use launcher=local (one GPU or the CPU)")
    teacher = cfg["teacher"]
    teacher_path = None
    if teacher["family"] == "vectors":
        if not Path(str(teacher["name_or_path"])).expanduser().is_file():
            raise UserError(f"teacher.name_or_path={teacher['name_or_path']}: no such vectors file (write one with `ragr embed`)")
    elif teacher["family"] != "data":
        teacher_path = resolve_model_path(str(teacher["name_or_path"]), key="teacher.name_or_path")
    student_path = resolve_model_path(str(cfg["student"]["name_or_path"]), key="student.name_or_path")
    if teacher["family"] == "vectors":
        task = VectorDistillTask(cfg, quiet=quiet, student_path=student_path)
    else:
        task = ScoreDistillTask(cfg, quiet=quiet, teacher_path=teacher_path, student_path=student_path)
    results = Engine(cfg, task, quiet=quiet).run()
    agreement_on = getattr(task, "agreement_set", None)
    results["agreement_on"] = agreement_on[3] if agreement_on else (
        f"{min(cfg['distill']['agreement_queries'], len(task.texts_index))} training texts"
        if isinstance(task, VectorDistillTask) else None)
    return results
