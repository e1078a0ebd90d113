"""Named reranking tasks: names -> HF datasets, local copies, the offline message, per-task results and the average."""

from __future__ import annotations

import json

import pytest

from ragr.errors import DataError, UserError
from ragr.eval.mteb import SUITES, TASKS, average_metrics, export_command, load_task, resolve_tasks

ROWS = [
    {"query": "q1", "positive": ["a"], "negative": ["b", "c"]},
    {"query": "q2", "positive": [], "negative": ["b"]},          # no positive: dropped, as MTEB does
    {"query": "q3", "positive": ["a"], "negative": []},          # no negative: dropped, as MTEB does
    {"query": "q4", "positive": "a", "negative": ["c"]},         # a single string is one candidate
]


def test_every_named_task_points_at_the_dataset_mteb_uses():
    expected = {
        "T2Reranking": ("C-MTEB/T2Reranking", "dev"),
        "MMarcoReranking": ("C-MTEB/Mmarco-reranking", "dev"),
        "CMedQAv1": ("C-MTEB/CMedQAv1-reranking", "test"),
        "CMedQAv2": ("C-MTEB/CMedQAv2-reranking", "test"),
        "AskUbuntuDupQuestions": ("mteb/askubuntudupquestions-reranking", "test"),
        "SciDocsRR": ("mteb/scidocs-reranking", "test"),
        "StackOverflowDupQuestions": ("mteb/stackoverflowdupquestions-reranking", "test"),
    }
    assert {n: (t.hf_id, t.split) for n, t in TASKS.items()} == expected
    assert all(len(t.revision) == 40 for t in TASKS.values())


def test_resolve_tasks_expands_suites_case_insensitively_and_suggests():
    assert [t.name for t in resolve_tasks(["c-mteb"])] == list(SUITES["C-MTEB"])
    assert [t.name for t in resolve_tasks(["SciDocsRR", "MTEB-en"])] == ["SciDocsRR", "AskUbuntuDupQuestions",
                                                                        "StackOverflowDupQuestions"]
    assert [t.name for t in resolve_tasks(["MmarcoReranking"])] == ["MMarcoReranking"]
    with pytest.raises(UserError, match="did you mean 'T2Reranking'"):
        resolve_tasks(["T2Rerank"])


def test_load_task_from_a_local_tasks_dir(tmp_path):
    (tmp_path / "CMedQAv1.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    got = load_task(TASKS["CMedQAv1"], tasks_dir=str(tmp_path), loader=pytest.fail)  # never reaches the hub
    assert got["num_dropped"] == 2
    assert [r["query"] for r in got["rows"]] == ["q1", "q4"]
    assert got["rows"][1]["positive"] == ["a"]
    assert got["source"].endswith("CMedQAv1.jsonl")


def test_load_task_through_datasets_passes_the_pinned_revision_and_split():
    calls = []

    def loader(path, revision=None, split=None):
        calls.append((path, revision, split))
        return ROWS

    task = TASKS["T2Reranking"]
    got = load_task(task, loader=loader)
    assert calls == [(task.hf_id, task.revision, "dev")]
    assert len(got["rows"]) == 2 and got["source"].startswith("hf://C-MTEB/T2Reranking")


def test_offline_error_says_how_to_pass_a_local_copy():
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'C-MTEB/CMedQAv2-reranking' on the Hub (LocalEntryNotFoundError)")

    with pytest.raises(UserError) as exc:
        load_task(TASKS["CMedQAv2"], loader=offline)
    msg = str(exc.value)
    assert "CMedQAv2" in msg and "Couldn't reach" in msg
    assert "data.tasks_dir=" in msg and export_command(TASKS["CMedQAv2"]) in msg


def test_offline_for_real_with_the_datasets_package(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="data.tasks_dir"):
        load_task(TASKS["SciDocsRR"])


def test_bad_local_copy_is_a_data_error(tmp_path):
    (tmp_path / "SciDocsRR.jsonl").write_text(json.dumps({"query": "q", "positive": [1], "negative": ["x"]}) + "\n")
    with pytest.raises(DataError, match="positive"):
        load_task(TASKS["SciDocsRR"], tasks_dir=str(tmp_path))
    with pytest.raises(UserError, match="not a directory"):
        load_task(TASKS["SciDocsRR"], tasks_dir=str(tmp_path / "missing"))


def test_average_is_the_unweighted_mean_over_tasks():
    per = {"a": {"map": 0.5, "mrr@10": 0.25, "num_queries": 10, "num_skipped": 1},
           "b": {"map": 0.7, "mrr@10": 0.75, "num_queries": 30, "num_skipped": 0, "ndcg@10": 0.1}}
    avg = average_metrics(per)
    assert avg == {"map": pytest.approx(0.6), "mrr@10": pytest.approx(0.5), "num_queries": 40, "num_skipped": 1}
