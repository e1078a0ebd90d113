"""Named reranking benchmarks (C-MTEB and MTEB English) in the MTEB reranking layout.

Each task maps to the Hugging Face dataset, revision and split that MTEB evaluates, so the numbers
line up with the public tables. Data comes, in order, from:

1. a local copy: ``<data.tasks_dir>/<TaskName>.jsonl`` (``{"query", "positive": [...],
   "negative": [...]}`` per line), or the single file ``data.eval`` when one task is named;
2. the Hugging Face Hub through ``datasets.load_dataset`` (network or the local HF cache).

Offline with no local copy, loading fails with a message showing how to make one.

Like MTEB's reranking evaluator, a named task drops queries that have no positive or no negative
(they carry no ranking signal); the dropped count is reported as ``num_dropped``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragr.errors import DataError, UserError, did_you_mean

__all__ = ["SUITES", "TASKS", "RerankTask", "average_metrics", "export_command", "load_task", "resolve_tasks"]


@dataclass(frozen=True)
class RerankTask:
    """A named reranking benchmark: where MTEB reads it from."""

    name: str
    hf_id: str
    split: str
    revision: str
    lang: str


TASKS: dict[str, RerankTask] = {t.name: t for t in (
    RerankTask("T2Reranking", "C-MTEB/T2Reranking", "dev", "76631901a18387f85eaa53e5450019b87ad58ef9", "zh"),
    RerankTask("MMarcoReranking", "C-MTEB/Mmarco-reranking", "dev", "8e0c766dbe9e16e1d221116a3f36795fbade07f6", "zh"),
    RerankTask("CMedQAv1", "C-MTEB/CMedQAv1-reranking", "test", "8d7f1e942507dac42dc58017c1a001c3717da7df", "zh"),
    RerankTask("CMedQAv2", "C-MTEB/CMedQAv2-reranking", "test", "23d186750531a14a0357ca22cd92d712fd512ea0", "zh"),
    RerankTask("AskUbuntuDupQuestions", "mteb/askubuntudupquestions-reranking", "test",
               "2000358ca161889fa9c082cb41daa8dcfb161a54", "en"),
    RerankTask("SciDocsRR", "mteb/scidocs-reranking", "test", "d3c5e1fc0b855ab6097bf1cda04dd73947d7caab", "en"),
    RerankTask("StackOverflowDupQuestions", "mteb/stackoverflowdupquestions-reranking", "test",
               "e185fbe320c72810689fc5848eb6114e1ef5ec69", "en"),
)}

#: Names that expand to several tasks.
SUITES: dict[str, tuple[str, ...]] = {
    "C-MTEB": ("T2Reranking", "MMarcoReranking", "CMedQAv1", "CMedQAv2"),
    "MTEB-en": ("AskUbuntuDupQuestions", "SciDocsRR", "StackOverflowDupQuestions"),
}

_ALIASES = {"MmarcoReranking": "MMarcoReranking"}  # the name older MTEB/C-MTEB versions used


def resolve_tasks(names: Iterable[str]) -> list[RerankTask]:
    """Task objects for ``names`` (task or suite names, case-insensitive), in order, without repeats."""
    by_lower = {n.lower(): n for n in list(TASKS) + list(SUITES) + list(_ALIASES)}
    out: list[RerankTask] = []
    for raw in names:
        key = by_lower.get(str(raw).strip().lower())
        if key is None:
            choices = list(TASKS) + list(SUITES)
            raise UserError(f"unknown reranking task '{raw}'{did_you_mean(str(raw), choices)}; "
                            f"choices: {', '.join(choices)}")
        key = _ALIASES.get(key, key)
        for name in SUITES.get(key, (key,)):
            if TASKS[name] not in out:
                out.append(TASKS[name])
    return out


def export_command(task: RerankTask, out_dir: str = "tasks") -> str:
    """A shell command that writes ``<out_dir>/<task>.jsonl`` on a machine with network."""
    return (f"python -c \"import datasets; datasets.load_dataset('{task.hf_id}', revision='{task.revision}', "
            f"split='{task.split}').to_json('{out_dir}/{task.name}.jsonl', force_ascii=False)\"")


def _rows_from_records(records: Iterable[dict[str, Any]], source: str) -> tuple[list[dict[str, Any]], int]:
    """Validate MTEB reranking records; drop (and count) those without a positive or a negative."""
    rows, dropped = [], 0
    for i, obj in enumerate(records, start=1):
        q = obj.get("query")
        if not isinstance(q, str) or not q.strip():
            raise DataError(source, i, "must be a non-empty string", field="query")
        lists = {}
        for key in ("positive", "negative"):
            value = obj.get(key)
            if isinstance(value, str):  # some exports store a single candidate as a string
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(source, i, "must be a list of strings", field=key)
            lists[key] = [v for v in value if v.strip()]
        if not lists["positive"] or not lists["negative"]:
            dropped += 1
            continue
        rows.append({"query": q, "positive": lists["positive"], "negative": lists["negative"],
                     "prompt": obj.get("prompt")})
    if not rows:
        raise DataError(source, 0, "no query with both a positive and a negative")
    return rows, dropped


def _local_file(task: RerankTask, tasks_dir: str | None, single_file: str | None) -> Path | None:
    if single_file:
        return Path(single_file).expanduser()
    if tasks_dir:
        root = Path(tasks_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"data.tasks_dir={tasks_dir}: not a directory")
        for name in (task.name, task.name.lower(), task.hf_id.split("/")[-1]):
            path = root / f"{name}.jsonl"
            if path.is_file():
                return path
    return None


def _offline_message(task: RerankTask, reason: str) -> str:
    return (f"cannot load reranking task {task.name} ({task.hf_id}, split {task.split}) through datasets: {reason}. "
            f"Without network, make a local copy on a machine that has one: {export_command(task)} "
            f"then pass data.tasks_dir=tasks (a folder with one <TaskName>.jsonl per task, "
            f"{{\"query\", \"positive\": [...], \"negative\": [...]}} per line)")


def load_task(task: RerankTask, tasks_dir: str | None = None, single_file: str | None = None,
              loader: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Rows of ``task`` from a local copy when there is one, else through ``datasets``.

    Args:
        task: the task.
        tasks_dir: a folder with ``<TaskName>.jsonl`` files (checked first).
        single_file: one JSONL file holding this task (wins over ``tasks_dir``).
        loader: ``datasets.load_dataset`` (injectable for tests).

    Returns:
        ``{"rows": [...], "source": str, "num_dropped": int}``.

    Raises:
        UserError: when neither a local copy nor ``datasets`` can provide the data.
    """
    local = _local_file(task, tasks_dir, single_file)
    if local is not None:
        from ragr.data.jsonl import iter_jsonl

        rows, dropped = _rows_from_records((obj for _, _, obj in iter_jsonl(local)), str(local))
        return {"rows": rows, "source": str(local), "num_dropped": dropped}
    if loader is None:
        try:
            from datasets import load_dataset as loader
        except ImportError:
            raise UserError(_offline_message(task, "the datasets package is not installed")) from None
    try:
        ds = loader(task.hf_id, revision=task.revision, split=task.split)
    except Exception as exc:  # noqa: BLE001 - offline, missing on the hub, auth: all end the same way
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(_offline_message(task, reason)) from None
    source = f"hf://{task.hf_id}@{task.revision[:8]}/{task.split}"
    rows, dropped = _rows_from_records(iter(ds), source)
    return {"rows": rows, "source": source, "num_dropped": dropped}


def average_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over tasks of every metric all tasks have (as MTEB tables average);
    ``num_queries`` / ``num_skipped`` are summed."""
    if not per_task:
        return {}
    values = list(per_task.values())
    keys = [k for k in values[0] if all(k in v for v in values)]
    out: dict[str, float] = {}
    for k in keys:
        if k in ("num_queries", "num_skipped", "num_dropped"):
            out[k] = int(sum(v[k] for v in values))
        else:
            out[k] = float(sum(v[k] for v in values) / len(values))
    return out
