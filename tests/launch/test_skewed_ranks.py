"""Two gloo ranks on data whose text lengths differ wildly, so the ranks plan different chunk counts.

Before the one-training-path redesign each chunk was one DDP forward, and a rank with more chunks
waited forever for the other in DDP's buffer broadcast. Now the ranks agree on the count
(:mod:`ragr.families.forward`). Each run here must finish within its timeout and save a loadable
model; the embedder (with gathered negatives) and the cross-encoder must also reach the weights and
losses of one process holding the combined batch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ragr.models.cross_encoder import CrossEncoder as CrossEncoderModel
from testkit import replay_doc_lengths  # tests/testkit.py

pytestmark = pytest.mark.distributed

WORDS = ("alpha beta gamma delta river mountain city light water stone music paper window garden silver "
         "engine market winter summer forest ocean cloud bridge letter number animal plant road").split()
SEED = 3
LENGTHS = (2, 3, 5, 40, 90)  # words per text: a few tokens next to texts cut at max length


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> dict[str, str]:
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("skewed")
    triplets = []
    for i in range(16):  # half the examples all short, half mixing short and cut-at-max-length texts
        lengths = LENGTHS[:2] if rng.random() < 0.5 else LENGTHS
        triplets.append({"query": f"q{i} " + _text(rng, rng.choice(lengths)),
                         "pos": [f"p{i} " + _text(rng, rng.choice(lengths))],
                         "neg": [f"n{i}-{k} " + _text(rng, rng.choice(lengths)) for k in range(3)]})
    (d / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triplets))
    return {"train": str(d / "train.jsonl")}


def chunk_counts(model_dir: str, train: str, ranks: int, batch: int, steps: int, chunk: int, max_len: int) -> list[list[int]]:
    """What the pre-redesign code did: per step, each rank's number of document forwards (independent replay of the
    engine's data order and the length plan)."""
    from ragr.models.chunking import plan_chunks

    return [[len(plan_chunks(lengths, chunk, 64)) for lengths in per_rank]
            for per_rank in replay_doc_lengths(model_dir, train, ranks, batch, steps, max_len, SEED)]


def _common(model: str, skewed, extra=()) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={skewed['train']}", "data.eval=null", "data.num_negatives=3",
            "trainer.max_steps=3", "trainer.lr=1e-3", "trainer.warmup_ratio=0", "trainer.scheduler=constant",
            "trainer.log_every=1", "trainer.chunk_size=8", "trainer.precision=fp32", f"seed={SEED}",
            "launcher.timeout_s=120", *extra]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def two_ranks_and_one_process(common: list[str], tmp_path: Path, ragr_train) -> tuple[Path, Path]:
    """Run dirs of 2 ddp ranks x batch 2 and of one process x batch 4 (the combined batch), same settings."""
    from ragr.config import compose_config
    from ragr.launch.local import run_local

    ddp, one = tmp_path / "ddp", tmp_path / "one"
    ragr_train(*common, "launcher=ddp", "launcher.num_processes=2", "trainer.batch_size=2", f"output_dir={ddp}",
               timeout=240)
    run_local(compose_config("train", [*common, "trainer.batch_size=4", f"output_dir={one}"]), quiet=True)
    return ddp, one


def test_the_skewed_data_makes_the_ranks_plan_different_chunk_counts(tiny_bert_nodropout, skewed):
    counts = chunk_counts(tiny_bert_nodropout, skewed["train"], ranks=2, batch=2, steps=3, chunk=8, max_len=64)
    assert any(a != b for a, b in counts), counts  # else the runs below would not test anything


def test_embedder_two_skewed_ranks_with_gathered_negatives_equal_one_process(tiny_bert_nodropout, skewed, tmp_path,
                                                                             ragr_train, weights, assert_same_weights):
    common = _common(tiny_bert_nodropout, skewed, ["model.max_doc_length=64", "loss.gather_across_ranks=true"])
    ddp, one = two_ranks_and_one_process(common, tmp_path, ragr_train)
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-5)
    assert_same_weights(weights(ddp), weights(one), atol=2e-5)
    from sentence_transformers import SentenceTransformer

    v = SentenceTransformer(str(ddp / "model"), device="cpu").encode(["alpha beta"])
    assert v.shape == (1, 32) and np.isfinite(v).all()


def test_cross_encoder_two_skewed_ranks_equal_one_process(tiny_bert_nodropout, skewed, tmp_path, ragr_train, weights,
                                                          assert_same_weights):
    # SGD: the weights then differ by lr x the gradient difference (Adam's 1/sqrt(v) would magnify float noise
    # in near-zero gradients, such as the unused pooler's)
    common = _common(tiny_bert_nodropout, skewed, ["task=reranker", "loss=listwise", "model.max_length=96", "trainer.optimizer=sgd",
                                                   "trainer.lr=0.5"])
    ddp, one = two_ranks_and_one_process(common, tmp_path, ragr_train)
    # listwise CE is a mean over queries and DDP averages the ranks' gradients: 2 x 2 queries == 1 x 4
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-5)
    assert_same_weights(weights(ddp), weights(one), atol=2e-5)
    start = CrossEncoderModel.from_pretrained(tiny_bert_nodropout).backbone.state_dict()
    moved = max((weights(ddp)[k] - start[k]).abs().max().item() for k in weights(ddp) if k in start)
    assert moved > 1e-3  # it did train
    from sentence_transformers import CrossEncoder

    s = CrossEncoder(str(ddp / "model"), device="cpu").predict([("alpha", "alpha beta"), ("alpha", "river")])
    assert np.isfinite(s).all()


def test_cross_encoder_mnrl_in_batch_negatives_two_skewed_ranks_finish(tiny_bert_nodropout, skewed, tmp_path, ragr_train):
    # task=reranker's loss=mnrl: each rank adds documents of its own batch to each group (more pairs a step)
    run = tmp_path / "mnrl"
    ragr_train(*_common(tiny_bert_nodropout, skewed, ["task=reranker", "model.max_length=96"]), "launcher=ddp",
               "launcher.num_processes=2", "trainer.batch_size=2", f"output_dir={run}", timeout=240)
    losses = _losses(run)
    # 2 queries a rank: 1 positive + 3 hard + 4 in-batch negatives; chance = ln 8 on near-equal scores
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[0] == pytest.approx(np.log(8), abs=0.3)
    from sentence_transformers import CrossEncoder

    assert np.isfinite(CrossEncoder(str(run / "model"), device="cpu").predict([("alpha", "alpha beta")])).all()


def test_colbert_two_skewed_ranks_finish_and_save(tiny_bert_nodropout, skewed, tmp_path, ragr_train):
    run = tmp_path / "colbert"
    ragr_train(*_common(tiny_bert_nodropout, skewed, ["model=colbert", "model.max_doc_length=64", "model.dim=16"]),
               "launcher=ddp", "launcher.num_processes=2", "trainer.batch_size=2", f"output_dir={run}", timeout=240)
    from ragr.infer.reranker import Reranker

    scores = Reranker(str(run / "model")).score([("alpha beta", "alpha beta gamma"), ("alpha beta", "winter")])
    assert len(scores) == 2 and all(np.isfinite(scores))
    assert len(_losses(run)) == 3


def test_distill_under_ddp_on_skewed_data(tiny_bert_nodropout, skewed, tmp_path):
    """Teacher scoring split across the two ranks, the cache written once, the student trained with chunked forwards."""
    import subprocess
    import sys

    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(1)
    teacher = tmp_path / "teacher"
    CrossEncoder.from_pretrained(tiny_bert_nodropout, max_length=96).save(teacher)
    run = tmp_path / "distill"
    args = [sys.executable, "-m", "ragr", "distill", "--quiet", "teacher=cross-encoder", f"teacher.name_or_path={teacher}", "teacher.max_length=96",
            "student=bert", f"student.name_or_path={tiny_bert_nodropout}", "student.max_length=96",
            f"data.train={skewed['train']}", "data.eval=null", "data.num_negatives=3", "trainer.max_steps=3",
            "trainer.batch_size=2", "trainer.chunk_size=8", "trainer.precision=fp32", "trainer.log_every=1", f"seed={SEED}",
            "launcher=ddp", "launcher.num_processes=2", "launcher.timeout_s=120", f"output_dir={run}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    entries = [p for p in (run / "teacher_scores").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["ranks"] == 2 and meta["pairs"] == 16 * 4
    # the split scoring equals scoring every pair in one process
    from ragr.infer.reranker import Reranker

    rows = [json.loads(line) for line in Path(skewed["train"]).read_text().splitlines()]
    pairs = [(r["query"], d) for r in rows for d in r["pos"] + r["neg"]]
    want = Reranker(str(teacher), family="cross_encoder").score(pairs)
    np.testing.assert_allclose(np.load(entries[0] / "raw.npy"), want, atol=1e-5)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher"]["train"]["reused"] is False
    assert len(_losses(run)) == 3
    from sentence_transformers import CrossEncoder as STCrossEncoder

    assert np.isfinite(STCrossEncoder(str(run / "model"), device="cpu").predict([("alpha", "beta")])).all()
