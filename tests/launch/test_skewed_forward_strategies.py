"""Two gloo ranks running the packed (and bucketed) forward strategies on data whose lengths differ wildly.

With a small ``trainer.forward_tokens`` the ranks plan different numbers of forwards per side (checked by an
independent replay below); the strategies reuse the agreed-count machinery of :mod:`ragr.families.forward`,
so each run must finish, and reach the losses and weights of one process holding the combined batch run
with the plain chunked strategy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from testkit import replay_doc_lengths  # tests/testkit.py

pytestmark = pytest.mark.distributed

WORDS = ("alpha beta gamma delta river mountain city light water stone music paper window garden silver "
         "engine market winter summer forest ocean cloud bridge letter number animal plant road").split()
SEED = 3
LENGTHS = (2, 3, 5, 40, 90)
TOKENS = 48  # trainer.forward_tokens: a long document fills a forward alone


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> str:
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("skewed-fwd")
    rows = []
    for i in range(16):  # half the examples all short, half mixing short and cut-at-max-length texts
        lengths = LENGTHS[:2] if rng.random() < 0.5 else LENGTHS
        text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
        rows.append({"query": f"q{i} " + text(rng.choice(lengths)), "pos": [f"p{i} " + text(rng.choice(lengths))],
                     "neg": [f"n{i}-{k} " + text(rng.choice(lengths)) for k in range(3)]})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d / "train.jsonl")


def packed_counts(model_dir: str, train: str, ranks: int, batch: int, steps: int, max_len: int) -> list[list[int]]:
    """Per step, each rank's number of packed document forwards before the ranks agree (a replay of the engine's
    data order, independent of the run)."""
    from ragr.families.forward import plan_packed

    return [[len(plan_packed(lengths, TOKENS)) for lengths in per_rank]
            for per_rank in replay_doc_lengths(model_dir, train, ranks, batch, steps, max_len, SEED)]


def _common(model: str, train: str, extra=()) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={train}", "data.eval=null", "data.num_negatives=3",
            "trainer.max_steps=3", "trainer.lr=1e-3", "trainer.warmup_ratio=0", "trainer.scheduler=constant",
            "trainer.log_every=1", "trainer.chunk_size=8", "trainer.precision=fp32", f"seed={SEED}",
            "launcher.timeout_s=120", *extra]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def _ddp_vs_one_chunked(common, strategy, tmp_path, ragr_train) -> tuple[Path, Path]:
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    ddp, one = tmp_path / "ddp", tmp_path / "one"
    ragr_train(*common, f"trainer.forward={strategy}", f"trainer.forward_tokens={TOKENS}", "launcher=ddp",
               "launcher.num_processes=2", "trainer.batch_size=2", f"output_dir={ddp}", timeout=240)
    run_local(compose_config("train", [*common, "trainer.forward=chunked", "trainer.batch_size=4", f"output_dir={one}"]),
              quiet=True)
    return ddp, one


def test_packed_embedder_on_two_skewed_ranks_equals_one_chunked_process(tiny_bert_nodropout, skewed, tmp_path, ragr_train,
                                                                       weights, assert_same_weights):
    counts = packed_counts(tiny_bert_nodropout, skewed, ranks=2, batch=2, steps=3, max_len=64)
    assert any(a != b for a, b in counts), counts  # else the run would not test the agreement
    common = _common(tiny_bert_nodropout, skewed, ["model.max_doc_length=64", "loss.gather_across_ranks=true"])
    ddp, one = _ddp_vs_one_chunked(common, "packed", tmp_path, ragr_train)
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-5)
    assert_same_weights(weights(ddp), weights(one), atol=2e-5)
    from sentence_transformers import SentenceTransformer

    v = SentenceTransformer(str(ddp / "model"), device="cpu").encode(["alpha beta"])
    assert v.shape == (1, 32) and np.isfinite(v).all()


@pytest.mark.slow
def test_bucketed_cross_encoder_on_two_skewed_ranks_equals_one_chunked_process(tiny_bert_nodropout, skewed, tmp_path,
                                                                              ragr_train, weights, assert_same_weights):
    common = _common(tiny_bert_nodropout, skewed, ["task=reranker", "loss=listwise", "model.max_length=96", "trainer.optimizer=sgd",
                                                   "trainer.lr=0.5"])
    ddp, one = _ddp_vs_one_chunked(common, "bucketed", tmp_path, ragr_train)
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-5)
    assert_same_weights(weights(ddp), weights(one), atol=2e-5)
