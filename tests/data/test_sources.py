"""Data from where it lives: .jsonl.gz, parquet, `datasets` save_to_disk folders and hf: names, with column mapping.

Rows are checked against pyarrow / datasets / gzip reading the same files on their own; training on each source is
checked against training on the same rows as plain JSONL (the established path), weight for weight.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.config import compose_config
from ragr.data.formats import load_rerank_file, load_training_file
from ragr.data.sources import Columns, Row, fingerprint, open_source
from ragr.errors import DataError, UserError

from testkit import QA, transformers_scores  # tests/testkit.py

N = len(QA)
TRIPLETS = [{"query": q, "pos": [a], "neg": [QA[(i + 1) % N][1], QA[(i + 2) % N][1]]} for i, (q, a) in enumerate(QA)]


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_gz(path, rows, blank_every=0):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if blank_every and i % blank_every == 0:
                f.write("\n")
    return str(path)


def write_parquet(path, rows, **kw):
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)
    return str(path)


def save_to_disk(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def st_rows(rows):
    """sentence-transformers' layout of ragr triplets: anchor / positive / negative_1 / negative_2."""
    return [{"anchor": r["query"], "positive": r["pos"][0], "negative_1": r["neg"][0], "negative_2": r["neg"][1]}
            for r in rows]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    rows = TRIPLETS * 2
    return {
        "jsonl": write_jsonl(d / "train.jsonl", rows),
        "gz": write_gz(d / "train.jsonl.gz", rows, blank_every=5),
        "parquet": write_parquet(d / "train.parquet", rows, row_group_size=7),  # several row groups
        "disk": save_to_disk(d / "train-ds", rows),
        "st": save_to_disk(d / "st-ds", st_rows(rows)),
    }


def independent_rows(kind, path):
    """The rows as pyarrow / datasets / gzip+json give them, without ragr."""
    import datasets

    if kind == "gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if kind == "parquet":
        return pq.read_table(path).to_pylist()
    return [dict(r) for r in datasets.load_from_disk(path)]


# ---- reading ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gz", "parquet", "disk"])
def test_every_record_matches_what_pyarrow_and_datasets_read(sources, kind):
    index, fmt = load_training_file(sources[kind])
    want = independent_rows(kind, sources[kind])
    assert fmt == "triplet" and len(index) == len(want) == 2 * N
    assert [index[i] for i in range(len(index))] == want
    assert index[len(index) - 1] == want[-1] and index[3] == want[3]  # random access, any order


def test_gzip_lines_keep_their_line_numbers(sources):
    index, _ = load_training_file(sources["gz"])
    with gzip.open(sources["gz"], "rt") as f:
        numbered = [n for n, line in enumerate(f, start=1) if line.strip()]
    assert list(index.linenos) == numbered and numbered[-1] > len(numbered)  # blank lines counted, not kept


def test_table_locations_are_rows_counted_from_zero(sources):
    index, _ = load_training_file(sources["parquet"])
    assert index.linenos[4] == 4 and isinstance(index.linenos[4], Row) and f"{index.linenos[4]}" == "row 4"


def test_the_parquet_copy_is_unlinked_and_memory_mapped(sources, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    index, _ = load_training_file(sources["parquet"])
    assert os.listdir(tmp_path) == []  # the spilled Arrow file is gone from the folder, its mapping stays
    assert index[5] == pq.read_table(sources["parquet"]).slice(5, 1).to_pylist()[0]


def test_fingerprint_is_the_file_hash_or_the_folder_contents(sources, tmp_path):
    import hashlib

    assert fingerprint(sources["parquet"])["sha256"] == hashlib.sha256(open(sources["parquet"], "rb").read()).hexdigest()
    copy = shutil.copytree(sources["disk"], tmp_path / "copy")
    assert fingerprint(copy) == fingerprint(sources["disk"])
    rows = TRIPLETS * 2
    rows[3] = {**rows[3], "query": "changed"}
    assert fingerprint(save_to_disk(tmp_path / "other", rows))["sha256"] != fingerprint(sources["disk"])["sha256"]


# ---- bad rows -----------------------------------------------------------------------------------------------------


def test_a_bad_parquet_row_is_reported_by_its_number(tmp_path, tiny_bert):
    rows = [dict(r) for r in TRIPLETS]
    rows[5] = {**rows[5], "pos": []}
    path = write_parquet(tmp_path / "bad.parquet", rows, row_group_size=4)
    assert pq.read_table(path).slice(5, 1).to_pylist()[0]["pos"] == []  # row 5 as pyarrow counts it
    res = invoke("train", f"model.name_or_path={tiny_bert}", f"data.train={path}", "data.eval=null",
                 "trainer.max_steps=1", f"output_dir={tmp_path / 'out'}", "--quiet")
    assert res.exit_code == 2
    assert f"{path}:row 5: field 'pos': must be a non-empty list" in res.stderr
    assert "Traceback" not in res.output


def test_a_null_cell_is_a_missing_field_and_a_bad_gzip_line_keeps_its_line(tmp_path):
    import datasets

    rows = [dict(r) for r in TRIPLETS]
    rows[2] = {**rows[2], "neg": None}
    folder = save_to_disk(tmp_path / "ds", rows)
    assert datasets.load_from_disk(folder)[2]["neg"] is None
    with pytest.raises(DataError, match=r"ds:row 2: field 'neg': missing") as err:
        load_training_file(folder)
    assert err.value.line == 2
    gz = write_gz(tmp_path / "t.jsonl.gz", [TRIPLETS[0], {"query": "q", "pos": "not a list"}])
    with pytest.raises(DataError, match=r"t.jsonl.gz:2: field 'pos'"):
        load_training_file(gz)


def test_unreadable_sources_are_one_line(tmp_path):
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="x.parquet: not a readable parquet file"):
        load_training_file(str(tmp_path / "x.parquet"))
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(json.dumps(TRIPLETS[0]).encode() + b"\n")[:-7])
    with pytest.raises(UserError, match="x.jsonl.gz: not a readable gzip file"):
        load_training_file(str(tmp_path / "x.jsonl.gz"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="data.train=.*plain: is a directory, not a data file"):
        compose_config("train", [f"data.train={tmp_path / 'plain'}"])


def test_a_datasetdict_folder_with_several_splits_asks_for_one(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRIPLETS), "dev": datasets.Dataset.from_list(TRIPLETS[:3])})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"splits train, dev; name one: .*dd/train"):
        compose_config("train", [f"data.train={tmp_path / 'dd'}"])
    index, _ = load_training_file(str(tmp_path / "dd" / "dev"))
    assert [index[i] for i in range(len(index))] == TRIPLETS[:3]


# ---- training through `ragr train` --------------------------------------------------------------------------------


def train_weights(model, train, out, extra=()):
    res = invoke("train", f"model.name_or_path={model}", f"data.train={train}", "data.eval=null",
                 "trainer.optimizer=sgd", "trainer.lr=0.5", "trainer.max_grad_norm=null", "trainer.max_steps=1",
                 "trainer.batch_size=4", "trainer.warmup_ratio=0", "trainer.scheduler=constant", "trainer.eval_before=false",
                 "trainer.eval_after=false", "data.num_negatives=2", "model.max_doc_length=32", "model.max_query_length=16",
                 f"output_dir={out}", "--quiet", *extra)
    assert res.exit_code == 0, res.output
    return load_file(f"{out}/model/model.safetensors")


@pytest.fixture(scope="module")
def jsonl_weights(sources, tiny_bert_nodropout, tmp_path_factory):
    return train_weights(tiny_bert_nodropout, sources["jsonl"], tmp_path_factory.mktemp("ref") / "run")


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


@pytest.mark.parametrize("kind", ["parquet", "disk", "gz"])
def test_each_source_trains_a_step_exactly_as_its_jsonl(sources, kind, jsonl_weights, tiny_bert_nodropout, tmp_path):
    from transformers import AutoModel

    w = train_weights(tiny_bert_nodropout, sources[kind], tmp_path / "run")
    assert_same(w, jsonl_weights)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"][sources[kind]]["sha256"] == fingerprint(sources[kind])["sha256"]
    start = AutoModel.from_pretrained(tiny_bert_nodropout).state_dict()  # and the step did move the weights
    moved = [k for k in w if k.removeprefix("bert.") in start and not torch.equal(w[k], start[k.removeprefix("bert.")])]
    assert moved


def test_st_layout_trains_as_it_is_and_with_a_column_mapping(sources, jsonl_weights, tiny_bert_nodropout, tmp_path):
    import datasets

    ds = datasets.load_from_disk(sources["st"])
    index, fmt = load_training_file(sources["st"])
    want = [{"query": r["anchor"], "pos": [r["positive"]], "neg": [r["negative_1"], r["negative_2"]]} for r in ds]
    assert fmt == "triplet" and [index[i] for i in range(len(index))] == want
    assert_same(train_weights(tiny_bert_nodropout, sources["st"], tmp_path / "as-is"), jsonl_weights)
    # other names, mapped: a list of columns, a prefix pattern
    renamed = [{"question": r["anchor"], "answer": r["positive"], "hard_1": r["negative_1"], "hard_2": r["negative_2"]} for r in ds]
    path = write_parquet(tmp_path / "renamed.parquet", renamed)
    mapping = "data.columns={query: question, pos: answer, neg: hard_*}"
    assert_same(train_weights(tiny_bert_nodropout, path, tmp_path / "mapped", [mapping]), jsonl_weights)
    index, _ = load_training_file(path, columns={"query": "question", "pos": "answer", "neg": ["hard_2", "hard_1"]})
    assert index[0] == {"query": renamed[0]["question"], "pos": [renamed[0]["answer"]],
                        "neg": [renamed[0]["hard_2"], renamed[0]["hard_1"]]}


def test_column_mapping_applies_to_jsonl_and_dev_data(tmp_path):
    st = st_rows(TRIPLETS)
    path = write_jsonl(tmp_path / "st.jsonl", st)
    index, _ = load_training_file(path)
    assert index[1] == TRIPLETS[1]
    dev = load_rerank_file(path)
    assert dev[1] == {"query": st[1]["anchor"], "positive": [st[1]["positive"]],
                      "negative": [st[1]["negative_1"], st[1]["negative_2"]], "prompt": None}
    numbered = [{"anchor": "a", "positive": "p", **{f"negative_{k}": f"n{k}" for k in (10, 2, 1)}}]
    assert Columns(st_names=True).apply(numbered[0])["neg"] == ["n1", "n2", "n10"]  # numeric order


@pytest.mark.parametrize("override, needle", [
    ("data.columns={qurey: anchor}", "unknown field 'data.columns.qurey' (did you mean 'data.columns.query'?)"),
    ("data.columns={query: [a, b]}", "'query' holds one value, so it takes one column"),
    ("data.columns={pos: 3}", "must be a column name or a list of them"),
    ("data.columns=[anchor]", "'data.columns' must be a mapping or null, got ['anchor']"),
])
def test_bad_column_mappings_are_refused_when_composed(override, needle):
    with pytest.raises(UserError) as err:
        compose_config("train", [override])
    assert needle in str(err.value)


def test_label_key_is_a_field_the_mapping_may_name():
    cfg = compose_config("train", ["task=reranker", "data.label_key=score", "data.columns={score: relevance, content: passage}"])
    assert cfg["data"]["columns"] == {"score": "relevance", "content": "passage"}


def test_a_mapped_column_the_table_lacks_is_named(sources):
    with pytest.raises(UserError, match=r"data.columns.neg: .* has no column 'negativ_1' \(did you mean 'negative_1'\?\); "
                                        r"its columns: anchor, positive, negative_1, negative_2"):
        load_training_file(sources["st"], columns={"neg": "negativ_1"})


# ---- hub datasets -------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline datasets cache holding 'someorg/tiny-st' (splits train, dev), laid out as a hub download is."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data = {"train": write_parquet(tmp_path / "train.parquet", st_rows(TRIPLETS)),
            "dev": write_parquet(tmp_path / "dev.parquet", st_rows(TRIPLETS[:4]))}
    builder = datasets.load_dataset_builder("parquet", data_files=data, cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    target = tmp_path / "cache" / "someorg___tiny-st" / "default" / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, target)
    for split in data:
        os.replace(target / f"parquet-{split}.arrow", target / f"tiny-st-{split}.arrow")
    return data


def test_a_cached_hub_dataset_reads_offline(hub_cache):
    index, _ = load_training_file("hf:someorg/tiny-st@dev")
    want = [{"query": r["anchor"], "pos": [r["positive"]], "neg": [r["negative_1"], r["negative_2"]]}
            for r in pq.read_table(hub_cache["dev"]).to_pylist()]
    assert [index[i] for i in range(len(index))] == want
    assert f"{index.linenos[2]}" == "row 2"
    with pytest.raises(UserError, match=r"has the splits train, dev; name one: hf:someorg/tiny-st@train"):
        open_source("hf:someorg/tiny-st")
    with pytest.raises(UserError, match=r"no split 'dve' \(did you mean 'dev'\?\)"):
        open_source("hf:someorg/tiny-st@dve")


@pytest.mark.parametrize("spec, needle", [
    ("hf:", "is not a hub dataset name"),
    ("hf:org/name@", "nothing after '@'"),
    ("hf:org/name:a:b", "bad config"),
])
def test_malformed_hub_names(spec, needle):
    with pytest.raises(UserError, match=needle):
        compose_config("train", [f"data.train={spec}"])


def test_an_uncached_hub_dataset_offline_is_exit_2_with_the_way_out(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-m", "ragr", "train", "data.train=hf:nobody/no-such-set@train",
                          f"output_dir={tmp_path / 'o'}", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "dataset 'hf:nobody/no-such-set@train' is not in the local datasets cache" in res.stderr
    assert "save_to_disk('DIR')" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---- the commands' --input ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ce_model(tiny_ce_model):
    return tiny_ce_model


def direct_scores(path, pairs):
    return transformers_scores(path, pairs)


def test_rerank_reads_a_parquet_input(ce_model, tmp_path):
    rows = [{"query": q, "document": a, "id": i} for i, (q, a) in enumerate(QA[:5])]
    rows.append({"query": QA[5][0], "documents": [a for _, a in QA[:4]], "id": 5})
    path = str(tmp_path / "in.parquet")  # pairs and a group in one table: a null cell is an absent key
    pq.write_table(pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in ("query", "document", "documents", "id")}), path)
    res = invoke("rerank", "--model", ce_model, "--quiet", "--input", path, "--output", tmp_path / "out.jsonl")
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(6)) and "documents" not in out[0] and "document" not in out[5]
    np.testing.assert_allclose([o["score"] for o in out[:5]], direct_scores(ce_model, [(q, a) for q, a in QA[:5]]), atol=1e-5)
    want = direct_scores(ce_model, [(QA[5][0], a) for _, a in QA[:4]])
    assert [r["index"] for r in out[5]["results"]] == list(np.argsort(want)[::-1])
    rows[3] = {"query": "q", "id": 3}
    bad = write_parquet(tmp_path / "bad.parquet", rows)
    res = invoke("rerank", "--model", ce_model, "--quiet", "--input", bad)
    assert res.exit_code == 2 and f"{bad}:row 3: field 'document': missing" in res.stderr


def test_embed_and_mine_read_tables(tiny_bert, tmp_path):
    texts = [{"sentence": a} for _, a in QA]
    path = write_parquet(tmp_path / "texts.parquet", texts)
    ref = write_jsonl(tmp_path / "texts.jsonl", [{"text": t["sentence"]} for t in texts])
    assert invoke("embed", "-m", tiny_bert, "-i", path, "--columns", "text=sentence", "-o", tmp_path / "a.npy", "-q").exit_code == 0
    assert invoke("embed", "-m", tiny_bert, "-i", ref, "-o", tmp_path / "b.npy", "-q").exit_code == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (N, 32)
    np.testing.assert_allclose(a, b, atol=1e-6)
    pairs = save_to_disk(tmp_path / "pairs", [{"anchor": q, "positive": a} for q, a in QA])
    res = invoke("mine", "-m", tiny_bert, "-i", pairs, "--corpus-from-data", "-o", tmp_path / "mined.jsonl",
                 "--n", "2", "--rank-range", "1:5", "--margin", "-1", "-q")
    assert res.exit_code == 0, res.output
    mined = [json.loads(x) for x in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert [m["query"] for m in mined] == [q for q, _ in QA] and all(m["pos"] == [a] for m, (_, a) in zip(mined, QA))
    assert all(len(m["neg"]) == 2 and m["pos"][0] not in m["neg"] for m in mined) and "anchor" not in mined[0]
