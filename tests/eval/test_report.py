"""Reports: JSON, terminal tables, and --compare's markdown table and PNG chart."""

from __future__ import annotations

import json

import pytest

from ragr.errors import UserError
from ragr.eval.report import bar_chart, compare_runs, load_results, markdown_table, print_report, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(map_, mrr, ndcg, n=10):
    return {"map": map_, "mrr@10": mrr, "ndcg@10": ndcg, "recall@10": 1.0, "num_queries": n, "num_skipped": 0}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def parse_markdown(md):
    lines = [line for line in md.strip().splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return header, rows


def test_write_json_round_trips(tmp_path):
    report = {"model": "m", "data": "dev.jsonl", "metrics": metrics(0.5, 0.6, 0.7)}
    path = write_json(tmp_path / "a" / "eval.json", report)
    assert json.loads(path.read_text()) == report


def test_load_results_reads_every_report_shape(tmp_path):
    single = write(tmp_path / "single" / "eval.json", {"model": "m", "data": "/x/dev.jsonl", "metrics": metrics(.1, .2, .3)})
    tasks = write(tmp_path / "tasks" / "eval.json", {"model": "m", "tasks": {
        "T2Reranking": {"metrics": metrics(.4, .5, .6)}, "CMedQAv1": {"metrics": metrics(.6, .7, .8)}},
        "average": metrics(.5, .6, .7)})
    retr = write(tmp_path / "retr" / "eval.json", {"model": "m", "stages": {"retrieval": metrics(.1, .1, .1),
                                                                            "rerank": metrics(.2, .2, .2)}})
    run = tmp_path / "run"
    write(run / "eval.json", {"before": metrics(.3, .3, .3), "after": metrics(.4, .4, .4), "best": {"step": 5, **metrics(.45, .4, .4)}})
    (run / "config.yaml").write_text("data:\n  eval: /data/my-dev.jsonl\n")
    assert load_results(single) == [("single", {"dev.jsonl": metrics(.1, .2, .3)})]
    assert load_results(tasks.parent)[0][1].keys() == {"T2Reranking", "CMedQAv1", "average"}
    assert load_results(retr.parent) == [("retr", {"retrieval": metrics(.1, .1, .1), "rerank": metrics(.2, .2, .2)})]
    got = load_results(run)
    assert [label for label, _ in got] == ["run (before)", "run (best)", "run (after)"]
    assert got[0][1] == {"my-dev.jsonl": metrics(.3, .3, .3)}
    write(run / "eval.json", {"before": metrics(.3, .3, .3), "after": metrics(.4, .4, .4), "best": {"step": 9, **metrics(.4, .4, .4)}})
    assert [label for label, _ in load_results(run)] == ["run (before)", "run (after)"]  # best == after: one row
    with pytest.raises(UserError, match="no eval.json"):
        load_results(tmp_path / "nothing")
    write(tmp_path / "odd" / "eval.json", {"hello": "world"})
    with pytest.raises(UserError, match="no metrics"):
        load_results(tmp_path / "odd")


def test_markdown_table_values_best_and_change():
    entries = [("base", {"dev.jsonl": metrics(0.5, 0.6, 0.7)}), ("tuned", {"dev.jsonl": metrics(0.55, 0.58, 0.75)})]
    md = markdown_table(entries)
    header, rows = parse_markdown(md)
    assert header == ["run", "map", "mrr@10", "ndcg@10"]
    assert rows["base"] == {"map": "0.5000", "mrr@10": "0.6000", "ndcg@10": "0.7000"}
    assert rows["tuned"] == {"map": "0.5500", "mrr@10": "0.5800", "ndcg@10": "0.7500"}
    assert rows["change"] == {"map": "+0.0500", "mrr@10": "-0.0200", "ndcg@10": "+0.0500"}
    assert "**0.5500**" in md and "**0.6000**" in md and "**0.7500**" in md and "**0.5000**" not in md


def test_markdown_table_with_several_datasets_and_gaps():
    entries = [("a", {"T2": metrics(.1, .2, .3), "avg": metrics(.1, .2, .3)}), ("b", {"T2": metrics(.4, .5, .6)}),
               ("c", {"avg": metrics(.7, .8, .9)})]
    header, rows = parse_markdown(markdown_table(entries, ["map"]))
    assert header == ["run", "T2 map", "avg map"]
    assert rows["b"]["avg map"] == "–" and rows["c"]["T2 map"] == "–" and rows["c"]["avg map"] == "0.7000"
    with pytest.raises(UserError, match="none of the metrics"):
        markdown_table(entries, ["bogus"])


def test_compare_runs_writes_markdown_and_png(tmp_path):
    a = write(tmp_path / "base" / "eval.json", {"model": "m", "data": "dev.jsonl", "metrics": metrics(.5, .6, .7)})
    b = write(tmp_path / "tuned" / "eval.json", {"model": "m", "data": "dev.jsonl", "metrics": metrics(.6, .7, .8)})
    res = compare_runs([a.parent, b], tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.md").read_text() == res["markdown"]
    _, rows = parse_markdown(res["markdown"])
    assert set(rows) == {"base", "tuned", "change"}
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 2000
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "cmp" / "compare.png")
    assert img.shape[0] > 100 and img.shape[1] > 100


def test_same_labels_are_told_apart(tmp_path):
    a = write(tmp_path / "x" / "m" / "eval.json", {"data": "d", "metrics": metrics(.1, .1, .1)})
    b = write(tmp_path / "y" / "m" / "eval.json", {"data": "d", "metrics": metrics(.2, .2, .2)})
    res = compare_runs([a, b], tmp_path / "out", png=False)
    labels = [e[0] for e in res["entries"]]
    assert len(set(labels)) == 2 and res["png_path"] is None


def test_bar_chart_without_matplotlib_is_a_user_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="matplotlib"):
        bar_chart([("a", {"d": metrics(.1, .1, .1)})], tmp_path / "x.png")


class RecordingConsole:
    def __init__(self):
        self.tables = []

    def table(self, title, columns, rows):
        self.tables.append((title, columns, rows))


def test_print_report_rows_per_task_with_the_average():
    c = RecordingConsole()
    report = {"model": "m", "tasks": {"A": {"metrics": metrics(.2, .3, .4, 5)}, "B": {"metrics": metrics(.4, .5, .6, 7)}},
              "average": metrics(.3, .4, .5, 12)}
    print_report(c, report)
    (_, cols, rows), = c.tables
    assert cols == ["task", "queries", "map", "mrr@10", "ndcg@10", "recall@10"]
    assert [r[0] for r in rows] == ["A", "B", "average"]
    assert rows[2][1:] == [12, .3, .4, .5, 1.0]
