"""Evaluation reports: the terminal table, the JSON file, and side-by-side comparisons of runs.

One ``eval.json`` shape per kind of evaluation (all carry ``"metrics"``, the headline result):

* reranking file: ``{"model", "family", "data", "metrics"}``
* named tasks: ``{"model", "family", "tasks": {name: {"source", "num_dropped", "metrics"}}, "average", "metrics"}``
* retrieval: ``{"model", "family", "data", "split", "reranker", "stages": {"retrieval", "rerank"}, "metrics"}``
* a training run's ``eval.json``: ``{"before": metrics, "after": metrics[, "best": metrics][, "verdict", "warnings"]}``
  (the last two from :mod:`ragr.train.health`)

:func:`compare_runs` reads any mix of these (files or the folders holding them) and writes a
markdown table, a JSON file and a PNG bar chart; ``ragr eval --compare`` also evaluates models given by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragr.errors import UserError

__all__ = ["DEFAULT_COMPARE_METRICS", "bar_chart", "compare_entries", "compare_runs", "load_results", "markdown_table",
           "print_report", "report_entries", "write_json"]

DEFAULT_COMPARE_METRICS = ("map", "mrr@10", "ndcg@10")
COUNTS = ("num_queries", "num_skipped", "num_dropped")
TRAIN_STAGES = ("before", "best", "after")

#: One compared entry: a label and ``{dataset or task or stage: metrics}``.
Entry = tuple[str, dict[str, dict[str, Any]]]


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON, atomically."""
    from ragr.fileio import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False))
    return path


# ---------------------------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------------------------


def _metric_columns(metrics: dict[str, Any]) -> list[str]:
    cols = [m for m in ("map", "mrr@10", "ndcg@10") if m in metrics]
    recalls = sorted((k for k in metrics if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
    cols += [r for r in recalls if r == "recall@10" or r == recalls[-1]]
    cols += [k for k in ("active_dims_query", "active_dims_doc") if k in metrics]  # sparse models
    return list(dict.fromkeys(cols))


def _short(name: str) -> str:
    """A model path shortened to its last two parts for titles (aliases and hub ids stay)."""
    parts = Path(name).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 and Path(name).exists() else name


def print_report(console: Any, report: dict[str, Any]) -> None:
    """Print a report as a rich table: one row per task (plus the average) or per retrieval stage,
    or one row per metric for a single reranking file."""
    model = _short(str(report.get("model", "")))
    if "tasks" in report:
        first = next(iter(report["tasks"].values()))["metrics"]
        cols = _metric_columns(first)
        rows = [[name, t["metrics"].get("num_queries", "?")] + [t["metrics"].get(c, float("nan")) for c in cols]
                for name, t in report["tasks"].items()]
        avg = report.get("average", {})
        rows.append(["average", avg.get("num_queries", "?")] + [avg.get(c, float("nan")) for c in cols])
        console.table(f"{model}: reranking tasks", ["task", "queries"] + cols, rows)
    elif "stages" in report:
        stages = report["stages"]
        cols = _metric_columns(next(iter(stages.values())))
        rows = [[stage, m.get("num_queries", "?")] + [m.get(c, float("nan")) for c in cols] for stage, m in stages.items()]
        console.table(f"{model}: retrieval on {Path(str(report.get('data', ''))).name} ({report.get('split', '')})",
                      ["stage", "queries"] + cols, rows)
    else:
        m = report["metrics"]
        cols = _metric_columns(m)
        rows = [[Path(str(report.get("data", ""))).name, m.get("num_queries", "?")] + [m[c] for c in cols]]
        console.table(f"{model}: reranking", ["data", "queries"] + cols, rows)


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def _is_metrics(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj.values())


def _dev_name(run_dir: Path) -> str:
    """The dev file name a training run evaluated on (from its config.yaml), else ``dev``."""
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        try:
            import yaml

            data = (yaml.safe_load(cfg.read_text()) or {}).get("data") or {}
            if data.get("eval"):
                return Path(str(data["eval"])).name
        except Exception:  # noqa: BLE001 - a label is best effort
            pass
    return "dev"


def _same_metrics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "step"} == {k: v for k, v in b.items() if k != "step"}


def load_results(path: str | Path) -> list[Entry]:
    """Read an ``eval.json`` (or the folder holding it) as compared entries.

    A training run gives one entry per stage it evaluated (``before``, ``best``, ``after``), so one
    run folder compares the base model with the fine-tuned one.
    """
    p = Path(path).expanduser()
    file = p / "eval.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"--compare {path}: no eval.json there (write one with `ragr eval ... output_dir={path}`, "
                        "or point at a training run that evaluated)")
    try:
        report = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"--compare {path}: {file} is not JSON ({exc.msg})") from None
    if not isinstance(report, dict):
        raise UserError(f"--compare {path}: {file} is not an evaluation report")
    label = file.parent.name if file.name == "eval.json" else file.stem
    entries = report_entries(report, label, file.parent)
    if entries is None:
        raise UserError(f"--compare {path}: {file} holds no metrics this command knows")
    return entries


def report_entries(report: dict[str, Any], label: str, run_dir: Path | None = None) -> list[Entry] | None:
    """A report's compared entries (None when it holds no metrics this module knows); ``run_dir`` names the dev
    file of a training run's stages."""
    if "tasks" in report:
        results = {name: t["metrics"] for name, t in report["tasks"].items()}
        if len(results) > 1 and report.get("average"):
            results["average"] = report["average"]
        return [(label, results)]
    if "stages" in report:
        return [(label, dict(report["stages"]))]
    if "metrics" in report and _is_metrics(report["metrics"]):
        return [(label, {Path(str(report.get("data") or "data")).name: report["metrics"]})]
    stages = [s for s in TRAIN_STAGES if _is_metrics(report.get(s))]
    if "best" in stages and "after" in stages and _same_metrics(report["best"], report["after"]):
        stages.remove("best")  # the final model was the best: one row says it
    if stages:
        dev = _dev_name(run_dir) if run_dir is not None else "dev"
        return [(f"{label} ({s})", {dev: report[s]}) for s in stages]
    return None


def _unique_labels(entries: list[Entry], paths: list[str]) -> list[Entry]:
    labels = [e[0] for e in entries]
    if len(set(labels)) == len(labels):
        return entries
    return [(f"{lab} [{p}]" if labels.count(lab) > 1 else lab, res) for (lab, res), p in zip(entries, paths)]


def _columns(entries: list[Entry], metrics: Sequence[str]) -> list[tuple[str, str]]:
    datasets = list(dict.fromkeys(d for _, res in entries for d in res))
    return [(d, m) for d in datasets for m in metrics
            if any(isinstance(res.get(d, {}).get(m), (int, float)) for _, res in entries)]


def _value(res: dict[str, dict[str, Any]], col: tuple[str, str]) -> float | None:
    v = res.get(col[0], {}).get(col[1])
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _header(col: tuple[str, str], single_dataset: bool) -> str:
    return col[1] if single_dataset else f"{col[0]} {col[1]}"


def markdown_table(entries: list[Entry], metrics: Sequence[str] = DEFAULT_COMPARE_METRICS) -> str:
    """One row per entry, one column per (dataset, metric); the best value of each column in bold.

    With exactly two entries a last row gives the change (second minus first).
    """
    cols = _columns(entries, metrics)
    if not cols:
        raise UserError(f"none of the metrics {', '.join(metrics)} is in the compared reports")
    single = len({c[0] for c in cols}) == 1
    lines = ["| run | " + " | ".join(_header(c, single) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    best = []
    for c in cols:
        vals = [v for _, res in entries if (v := _value(res, c)) is not None]
        best.append(max(vals) if len(entries) > 1 and vals else None)
    for label, res in entries:
        cells = []
        for c, b in zip(cols, best):
            v = _value(res, c)
            text = "–" if v is None else f"{v:.4f}"
            cells.append(f"**{text}**" if v is not None and b is not None and math.isclose(v, b) else text)
        lines.append(f"| {label.replace('|', '/')} | " + " | ".join(cells) + " |")
    if len(entries) == 2:
        cells = []
        for c in cols:
            a, b = _value(entries[0][1], c), _value(entries[1][1], c)
            cells.append("–" if a is None or b is None else f"{b - a:+.4f}")
        lines.append("| change | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(entries: list[Entry], path: str | Path, metrics: Sequence[str] = DEFAULT_COMPARE_METRICS,
              title: str = "ragr eval") -> Path:
    """A grouped bar chart (one group per (dataset, metric), one bar per entry) written as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the PNG chart needs matplotlib (pip install 'ragr[plot]' or pip install matplotlib)") from None
    cols = _columns(entries, metrics)
    if not cols:
        raise UserError(f"none of the metrics {', '.join(metrics)} is in the compared reports")
    single = len({c[0] for c in cols}) == 1
    n = len(entries)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(cols) * (0.35 + 0.3 * n)), 4.5))
    for i, (label, res) in enumerate(entries):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(cols))]
        vals = [_value(res, c) for c in cols]
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=label)
        for bar, v in zip(bars, vals):
            if v is not None:
                ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([_header(c, single) for c in cols], rotation=0 if len(cols) <= 6 else 30,
                       ha="center" if len(cols) <= 6 else "right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_runs(paths: Sequence[str | Path], out_dir: str | Path,
                 metrics: Sequence[str] = DEFAULT_COMPARE_METRICS, png: bool = True) -> dict[str, Any]:
    """Compare the reports at ``paths`` side by side.

    Writes ``out_dir/compare.md`` (and ``out_dir/compare.png`` when ``png``).

    Returns:
        ``{"entries": [...], "markdown": str, "md_path": Path, "png_path": Path | None}``.
    """
    if not paths:
        raise UserError("--compare needs at least one run folder or eval.json")
    return compare_entries([(str(p), load_results(p)) for p in paths], out_dir, metrics, png)


def compare_entries(sources: Sequence[tuple[str, list[Entry]]], out_dir: str | Path,
                    metrics: Sequence[str] = DEFAULT_COMPARE_METRICS, png: bool = True) -> dict[str, Any]:
    """:func:`compare_runs` on entries already read (or just evaluated): ``sources`` is ``[(source, entries)]``.

    Also writes ``out_dir/compare.json``: every entry's label, source and metrics and, with two entries, the
    change (second minus first) of each compared metric.
    """
    entries: list[Entry] = []
    owners: list[str] = []
    for source, got in sources:
        entries.extend(got)
        owners.extend([source] * len(got))
    entries = _unique_labels(entries, owners)
    md = markdown_table(entries, metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ragr.fileio import atomic_write_text

    md_path = out / "compare.md"
    atomic_write_text(md_path, md)
    cols = _columns(entries, metrics)
    doc: dict[str, Any] = {"metrics": list(metrics), "entries": [
        {"label": label, "source": source, "results": res} for (label, res), source in zip(entries, owners)]}
    if len(entries) == 2:
        change: dict[str, dict[str, float]] = {}
        for col in cols:
            a, b = _value(entries[0][1], col), _value(entries[1][1], col)
            if a is not None and b is not None:
                change.setdefault(col[0], {})[col[1]] = b - a
        doc["change"] = change
    json_path = write_json(out / "compare.json", doc)
    png_path = bar_chart(entries, out / "compare.png", metrics) if png else None
    return {"entries": entries, "markdown": md, "md_path": md_path, "json_path": json_path, "png_path": png_path}
