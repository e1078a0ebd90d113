"""``ragr rerank`` on a tiny cross-encoder: pairs, groups, top-k, extra keys, bad lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

from testkit import transformers_scores  # tests/testkit.py


@pytest.fixture(scope="module")
def ce_model(tiny_ce_model):
    return tiny_ce_model


def direct(path, pairs):
    return transformers_scores(path, pairs)


def run(model, text, *args):
    return CliRunner().invoke(app, ["rerank", "--model", model, "--quiet", *args], input=text)


def lines(*objs):
    return "".join(json.dumps(o) + "\n" for o in objs)


def test_pairs_get_a_score_and_keep_their_keys_and_order(ce_model):
    rows = [{"query": "who wrote hamlet?", "document": "Shakespeare wrote it.", "id": 1},
            {"query": "sky", "document": "The sky is blue because air scatters blue light.", "id": 2, "meta": {"a": [1]}}]
    res = run(ce_model, lines(*rows) + "\n", "--batch-size", "1")
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, 2] and out[1]["meta"] == {"a": [1]}
    np.testing.assert_allclose([o["score"] for o in out], direct(ce_model, [(r["query"], r["document"]) for r in rows]), atol=1e-5)


def test_groups_get_sorted_results_cut_to_top_k_and_normalized(ce_model):
    docs = ["Paris is in France.", "Spiders have eight legs.", "The capital of France is Paris.", "Eggs boil."]
    res = run(ce_model, lines({"query": "capital of france?", "documents": docs, "tag": "x"}, {"query": "q", "documents": []}),
              "--top-k", "2", "--normalize", "--chunk-lines", "1")
    assert res.exit_code == 0, res.output
    first, second = [json.loads(x) for x in res.stdout.splitlines()]
    want = 1 / (1 + np.exp(-np.array(direct(ce_model, [("capital of france?", d) for d in docs]))))
    order = list(np.argsort(-want)[:2])
    assert [r["index"] for r in first["results"]] == order and first["tag"] == "x"
    assert [r["document"] for r in first["results"]] == [docs[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in first["results"]], want[order], atol=1e-6)
    assert second["results"] == []


@pytest.mark.parametrize("bad,needle", [
    ("{not json", "<stdin>:2: invalid JSON"),
    ('{"document": "d"}', "<stdin>:2: field 'query': missing"),
    ('{"query": "q", "document": 3}', "<stdin>:2: field 'document': must be a string"),
    ('{"query": "q", "documents": ["a", null]}', "<stdin>:2: field 'documents': item 1 must be a string"),
    ('{"query": "q"}', "<stdin>:2: field 'document': missing"),
])
def test_a_bad_line_stops_with_exit_2_naming_the_line(ce_model, bad, needle):
    res = run(ce_model, lines({"query": "q", "document": "d"}) + bad + "\n" + lines({"query": "q", "document": "e"}))
    assert res.exit_code == 2
    assert needle in " ".join(res.stderr.split()) and "Traceback" not in res.output
    assert len(res.stdout.splitlines()) == 1  # the good line before the bad one was written


def test_skip_bad_reports_and_goes_on(ce_model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(lines({"query": "q", "document": "d"}) + "[1]\n" + lines({"query": "q", "document": "e"}))
    res = CliRunner().invoke(app, ["rerank", "-m", ce_model, "--skip-bad", "-i", str(src), "-o", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 0, res.output
    assert "in.jsonl:2" in res.stderr and "1 bad lines skipped" in res.stderr
    assert [json.loads(x)["document"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ["d", "e"]


def test_usage_errors_exit_2(ce_model):
    assert run(ce_model, "", "--long-doc", "split").exit_code == 2
    res = run("/no/such/model", "")
    assert res.exit_code == 2 and "no such model directory" in res.stderr
