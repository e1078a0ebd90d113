"""Reranker data: kind detection over the whole file, per-line validation, seeded per-epoch groups."""

from __future__ import annotations

import json

import pytest
import torch

from ragr.data.rerank import RerankDataset, add_in_batch_negatives, collate_rerank, detect_rerank_format, load_rerank_training_file
from ragr.errors import DataError


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


TRIPLETS = [{"query": f"q{i}", "pos": [f"p{i}a", f"p{i}b"], "neg": [f"n{i}{k}" for k in range(5)]} for i in range(6)]
GROUPED = [{"query": f"q{i}", "hits": [{"content": f"h{i}{k}", "label": k % 3} for k in range(6)]} for i in range(4)]
GS = {"query": "g", "hits": [{"content": "a", "score": 2}, {"content": "b", "score": 0}]}
POINTWISE = [{"query": f"q{i}", "content": f"c{i}", "score": i / 2} for i in range(5)]


def test_kind_is_read_from_every_line(tmp_path):
    assert detect_rerank_format(write(tmp_path / "t.jsonl", TRIPLETS)) == "triplet"
    assert detect_rerank_format(write(tmp_path / "g.jsonl", GROUPED)) == "grouped"
    assert detect_rerank_format(write(tmp_path / "p.jsonl", POINTWISE)) == "pointwise"
    with pytest.raises(DataError, match=r"mixed.jsonl:4: this line is grouped data but line 1 is triplet"):
        detect_rerank_format(write(tmp_path / "mixed.jsonl", TRIPLETS[:3] + GROUPED[:1]))


@pytest.mark.parametrize("rows,fmt,needle", [
    (POINTWISE[:2] + [{"query": "q", "content": "c", "label": 1}], "pointwise", r":3: field 'score': missing"),
    (POINTWISE[:1] + [{"query": "q", "content": "c", "score": "high"}], "pointwise", r":2: field 'score': must be a number"),
    (POINTWISE[:1] + [{"query": "q", "content": "", "score": 1}], "pointwise", r":2: field 'content': must be a non-empty"),
    ([GS, GS, {"query": "q", "hits": [{"content": "a", "score": 1}, {"content": 3, "score": 0}]}], "grouped",
     r":3: field 'hits\[1\].content': must be a non-empty string"),
    ([GS, {"query": "q", "hits": [{"content": "a", "score": 1}]}], "grouped", r":2: field 'hits': a group needs at least 2"),
    (TRIPLETS[:1] + [{"query": "q", "pos": ["a"], "neg": ["a"]}], "triplet", r":2: field 'neg': every negative"),
])
def test_each_line_is_validated_with_file_line_field(tmp_path, rows, fmt, needle):
    with pytest.raises(DataError, match=needle):
        load_rerank_training_file(write(tmp_path / "d.jsonl", rows), fmt, label_key="score")


def test_triplet_groups_are_one_positive_then_negatives_resampled_per_epoch(tmp_path):
    index, fmt = load_rerank_training_file(write(tmp_path / "t.jsonl", TRIPLETS))
    ds = RerankDataset(index, fmt, num_negatives=3, seed=7)
    item = ds[2]
    assert item["docs"][0] in TRIPLETS[2]["pos"] and set(item["docs"][1:]) <= set(TRIPLETS[2]["neg"])
    assert len(set(item["docs"][1:])) == 3 and item["labels"] == [1.0, 0.0, 0.0, 0.0]
    assert ds[2] == item  # same epoch, same seed: same group
    epochs = []
    for e in range(4):
        ds.set_epoch(e)
        epochs.append([tuple(ds[i]["docs"]) for i in range(len(ds))])
    assert len({tuple(x) for x in epochs}) > 1
    again = RerankDataset(index, fmt, num_negatives=3, seed=7)
    again.set_epoch(3)
    assert [tuple(again[i]["docs"]) for i in range(len(ds))] == epochs[3]


def test_grouped_groups_lead_with_a_top_label_hit(tmp_path):
    index, fmt = load_rerank_training_file(write(tmp_path / "g.jsonl", GROUPED))
    ds = RerankDataset(index, fmt, num_negatives=2, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert len(item["docs"]) == 3 and item["labels"][0] == 2.0
        labels = {h["content"]: h["label"] for h in GROUPED[i]["hits"]}
        assert [labels[d] for d in item["docs"]] == item["labels"]


def test_pointwise_items_and_collate(tmp_path):
    index, fmt = load_rerank_training_file(write(tmp_path / "p.jsonl", POINTWISE), label_key="score")
    ds = RerankDataset(index, fmt, num_negatives=3, label_key="score")
    batch = collate_rerank([ds[i] for i in range(3)])
    assert batch["queries"] == ["q0", "q1", "q2"] and batch["docs"] == ["c0", "c1", "c2"]
    assert torch.equal(batch["labels"], torch.tensor([[0.0], [0.5], [1.0]]))


def test_collate_flattens_groups_with_their_queries():
    batch = collate_rerank([{"query": "a", "docs": ["x", "y"], "labels": [1, 0]},
                            {"query": "b", "docs": ["z", "w"], "labels": [0, 1]}])
    assert batch["pair_queries"] == ["a", "a", "b", "b"] and batch["docs"] == ["x", "y", "z", "w"]
    assert batch["labels"].shape == (2, 2)


def test_in_batch_negatives_come_from_other_groups_never_own_texts():
    ex = [{"query": "q0", "docs": ["a", "b"], "labels": [1.0, 0.0]},
          {"query": "q1", "docs": ["c", "b "], "labels": [1.0, 0.0]},   # "b " is q0's "b" once normalized
          {"query": "q2", "docs": ["e", "f"], "labels": [1.0, 0.0]}]
    out = add_in_batch_negatives(ex, 3, seed=7)
    assert [len(e["docs"]) for e in out] == [5, 5, 5]
    for e, o in zip(ex, out):
        assert o["docs"][:2] == e["docs"] and o["labels"] == e["labels"] + [0.0, 0.0, 0.0]
        own = {d.strip() for d in e["docs"]}
        others = {d.strip() for x in ex if x is not e for d in x["docs"]}
        assert not own & {d.strip() for d in o["docs"][2:]} and {d.strip() for d in o["docs"][2:]} <= others
        assert len(set(o["docs"][2:])) == 3
    assert out == add_in_batch_negatives(ex, 3, seed=7)              # the same batch draws the same documents
    assert [len(e["docs"]) for e in add_in_batch_negatives(ex, 9, seed=7)] == [5, 5, 5]  # q0 has only 3 eligible
    assert add_in_batch_negatives(ex[:1], 3, seed=7) == ex[:1]       # one group: nothing to draw from
    assert collate_rerank(out)["labels"].shape == (3, 5)
