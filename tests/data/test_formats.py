"""Data validation (file:line:field), whole-file format detection, per-epoch sampling."""

from __future__ import annotations

import json

import pytest

from ragr.data.dataset import ContrastiveDataset, collate
from ragr.data.formats import detect_format, load_rerank_file, load_training_file
from ragr.errors import DataError, UserError


def write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


@pytest.mark.parametrize(
    "bad, line, needle",
    [
        ('{"query": "a", "pos": ["b"]', 2, "invalid JSON"),
        ({"query": 3, "pos": ["b"]}, 2, "field 'query'"),
        ({"query": "a", "pos": "b"}, 2, "field 'pos'"),
        ({"query": "a"}, 2, "field 'pos': missing"),
        ({"query": "a", "pos": ["b", ""]}, 2, "field 'pos': item 1"),
        ([1, 2], 2, "expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, bad, line, needle):
    path = write(tmp_path / "t.jsonl", [{"query": "q", "pos": ["p"]}, bad])
    with pytest.raises(DataError) as err:
        load_training_file(path)
    assert str(err.value).startswith(f"{path}:{line}:")
    assert needle in str(err.value)


def test_format_is_detected_from_the_whole_file_not_the_first_line(tmp_path):
    rows = [{"query": "q1", "pos": ["p1"]}] * 3 + [{"query": "q2", "pos": ["p2"], "neg": ["n2"]}]
    path = write(tmp_path / "t.jsonl", rows)
    assert detect_format(path) == "triplet"
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'neg': missing"):
        load_training_file(path)  # a triplet file needs negatives on every line
    _, fmt = load_training_file(path, "pair")
    assert fmt == "pair"


def test_scored_format_checks_lengths(tmp_path):
    path = write(tmp_path / "s.jsonl", [{"query": "q", "pos": ["a", "b"], "scores": [1.0]}])
    with pytest.raises(DataError, match="field 'scores': has 1 values but there are 2"):
        load_training_file(path)
    ok = write(tmp_path / "ok.jsonl", [{"query": "q", "pos": ["a", "b"], "scores": [1.0, 0.5]}])
    assert load_training_file(ok)[1] == "scored"


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_training_file(str(tmp_path / "nope.jsonl"))


def test_negatives_never_include_a_positive_and_are_resampled_each_epoch(tmp_path):
    negs = [f"neg {i}" for i in range(20)]
    rows = [{"query": "q", "pos": ["A", "B"], "neg": negs + ["a", "  B "]}]  # two negatives are positives
    index, _ = load_training_file(write(tmp_path / "t.jsonl", rows))
    ds = ContrastiveDataset(index, num_negatives=4, seed=0)
    draws = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        item = ds[0]
        assert item["docs"][0] in ("A", "B")
        assert all(n.strip().casefold() not in ("a", "b") for n in item["docs"][1:])
        assert len(set(item["docs"][1:])) == 4
        draws.append(tuple(item["docs"][1:]))
    assert len(set(draws)) > 1  # re-sampled
    ds.set_epoch(2)
    assert tuple(ds[0]["docs"][1:]) == draws[2]  # deterministic per (seed, epoch, index)


def test_all_negatives_being_positives_is_reported(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"query": "q", "pos": ["A"], "neg": ["a"]}])
    with pytest.raises(DataError, match="t.jsonl:1: field 'neg'"):
        load_training_file(path)


def test_collate_masks_other_positives_in_the_batch():
    ex = [
        {"query": "q0", "docs": ["shared", "n0"], "pos_set": {"shared", "p0b"}},
        {"query": "q1", "docs": ["p0b", "shared"], "pos_set": {"p0b"}},  # q1's positive is also q0's positive
    ]
    batch = collate(ex)
    assert batch["docs"] == ["shared", "n0", "p0b", "shared"]
    mask = batch["false_negatives"].tolist()
    assert mask[0] == [False, False, True, True]  # q0's other positive and the copy of its target
    assert mask[1] == [False, False, False, False]


def test_index_reads_records_by_offset_without_holding_the_file(tmp_path):
    rows = [{"query": f"q{i}", "pos": [f"p{i}" * (i + 1)]} for i in range(50)]
    index, _ = load_training_file(write(tmp_path / "t.jsonl", rows + [""]))
    assert len(index) == 50
    assert index[37] == rows[37] and index[0] == rows[0]
    assert not hasattr(index, "rows")


def test_rerank_file_validation(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"]}, {"query": "q", "positive": "a"}])
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'positive'"):
        load_rerank_file(path)
