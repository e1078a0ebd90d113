"""Golden losses: the per-step training loss of every objective x model family, pinned to recorded values.

The values were recorded on the pre-redesign training code (commit 6ac78e4), on the CPU in fp32, and this
file must pass UNCHANGED after the redesign: it is the proof that the new code computes the same thing.

Each case runs ``ragr train`` / ``ragr distill`` for exactly 4 optimizer steps (batch 4, ``seed=7``,
``trainer.chunk_size=2`` so every step is cut into several length-planned chunks, ``trainer.log_every=1``,
no evaluation) and compares the ``loss`` of each step in ``metrics.jsonl`` with the values below to 1e-4
(absolute). Step 1 pins the forward pass (data sampling, tokenization and truncation of 3- to ~60-word texts,
scoring, the loss); steps 2-4 also pin the gradients, clipping, AdamW and the LR schedule (``trainer.lr=2e-3``
so that each step visibly moves the loss). Recorded with chunk_size 1, 2 and 32 the values agree to 2e-5, so
the tolerance admits any exact re-chunking or reordering of the forwards.

The values do not depend on the order in which random numbers are drawn: every model is dropout-free (the
``tiny_bert_nodropout`` BERT, with its Linear weights scaled x10 so that scores depend on the text; the tiny
Llama, trained without LoRA), and every head that training would initialize (cross-encoder classifier, ColBERT
projection, the Stella student's Dense layer) is created here once, under its own seed, and saved; the data
sampling is seeded by the config ``seed`` alone.

What may legitimately change these values: nothing in a refactor or redesign of how training runs (engine,
chunking, fused or reordered forwards, data loading). Only a deliberate change to an objective's definition,
the data sampling, or the optimizer / schedule semantics would - and that is not "the same computation".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

# ---- fixed data: lengths vary a lot (3-word and ~60-word texts) so the chunk planner cuts unevenly ----------
FILLER = ("the report explains how the system was measured under heavy load and what changed after each careful "
          "revision of the method that the team used in later experiments across several different sites").split()

_QA = [
    ("how do I reset my password?", "Open settings, choose security, and click reset password."),
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("how many legs does a spider have?", "Spiders have eight legs and most of them have eight eyes."),
    ("who wrote hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("what is photosynthesis?", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("how do I boil an egg?", "Place the egg in boiling water for nine minutes, then cool it."),
    ("what does a cpu do?", "The processor executes the instructions of programs one after another."),
    ("why is the sky blue?", "Air scatters blue light more than red light."),
    ("how far is the moon?", "The moon is about 384,400 kilometres away from the earth."),
    ("what is python?", "Python is a programming language known for readable code."),
    ("how do vaccines work?", "Vaccines train the immune system to recognise a pathogen."),
    ("what is the speed of light?", "Light travels at about 299,792 kilometres per second in vacuum."),
]


def _filler(n: int, offset: int) -> str:
    return " ".join(FILLER[(offset + k) % len(FILLER)] for k in range(n))


def _query(i: int) -> str:
    q = _QA[i][0]
    if i % 4 == 1:
        return " ".join(q.split()[:3])                 # 3 words
    if i % 4 == 3:
        return q + " " + _filler(30, i)                # ~35 words: truncated at max_query_length
    return q


def _doc(i: int) -> str:
    a = _QA[i][1]
    if i % 3 == 0:
        return " ".join(a.split()[:3])                 # 3 words
    if i % 3 == 2:
        return a + " " + _filler(50, 3 * i)            # ~60 words: truncated at the max lengths below
    return a


N = len(_QA)
QUERIES = [_query(i) for i in range(N)]
DOCS = [_doc(i) for i in range(N)]


def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def golden(tmp_path_factory, tiny_bert_nodropout, tiny_llama) -> dict[str, str]:
    """Data files and start models (saved once, under their own seeds) for every case."""
    from transformers import BertModel

    from ragr.models.colbert import ColBERT
    from ragr.models.cross_encoder import CrossEncoder
    from ragr.models.embedder import Embedder

    d = tmp_path_factory.mktemp("golden")
    # triplets: one positive and 5 negatives per query (3 sampled per group: the seeded data RNG is pinned too)
    _write_jsonl(d / "triplets.jsonl", [{"query": QUERIES[i], "pos": [DOCS[i]], "neg": [DOCS[(i + k) % N] for k in range(1, 6)]}
                                       for i in range(N)])
    _write_jsonl(d / "pointwise.jsonl", [row for i in range(N) for row in (
        {"query": QUERIES[i], "content": DOCS[i], "label": 1},
        {"query": QUERIES[i], "content": DOCS[(i + 5) % N], "label": 0})])
    _write_jsonl(d / "texts.jsonl", [{"text": t} for pair in zip(QUERIES, DOCS) for t in pair])
    np.save(d / "teacher.npy", np.random.default_rng(0).standard_normal((2 * N, 64)).astype(np.float32))

    # the start backbone: the no-dropout tiny BERT with every Linear weight x10 (init std 0.02 -> 0.2, about
    # 1/sqrt(hidden)), so that scores depend on the text: at std 0.02 the CLS state hardly varies and every
    # cross-encoder score is the same to 1e-4, which would pin nothing
    bert = d / "bert"
    shutil.copytree(tiny_bert_nodropout, bert)
    backbone = BertModel.from_pretrained(tiny_bert_nodropout)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(10)
    backbone.save_pretrained(bert)

    def cross_encoder(seed: int, max_length: int, scale: float, path: Path) -> None:
        torch.manual_seed(seed)  # a fresh one-label head, scaled so that the scores spread (std about 1)
        ce = CrossEncoder.from_pretrained(str(bert), max_length=max_length)
        with torch.no_grad():
            ce.backbone.classifier.weight.mul_(scale)
        ce.save(path)

    cross_encoder(1, 64, 50.0, d / "teacher-ce")  # test_distill_train's tiny_teacher (seed 1, max_length 64)
    cross_encoder(2, 96, 30.0, d / "student-ce")
    torch.manual_seed(3)
    ColBERT.from_pretrained(str(bert), dim=16).save(d / "colbert")
    torch.manual_seed(4)
    Embedder.from_pretrained(str(bert), pooling="mean", dense_dim=64).save(d / "stella-student")
    return {"dir": str(d), "bert": str(bert), "llama": tiny_llama}


COMMON = ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.log_every=1", "trainer.chunk_size=2",
          "trainer.eval_before=false", "trainer.eval_after=false", "trainer.precision=fp32", "trainer.lr=2e-3",
          "trainer.warmup_ratio=0", "data.eval=null", "data.num_negatives=3", "seed=7"]
EMB = ["model.max_query_length=24", "model.max_doc_length=64"]


def _case(g: dict[str, str], name: str) -> tuple[str, list[str]]:
    d = g["dir"]
    tri, pw = f"data.train={d}/triplets.jsonl", f"data.train={d}/pointwise.jsonl"
    ce = ["task=reranker", f"model.name_or_path={d}/student-ce", "model.max_length=96"]
    kl = ["teacher=cross-encoder", f"teacher.name_or_path={d}/teacher-ce", "teacher.max_length=64", "loss=distill-kl"]
    return {
        "embedder-infonce": ("train", ["loss=infonce", f"model.name_or_path={g['bert']}", *EMB, tri]),
        "embedder-mrl": ("train", ["loss=mrl", "loss.dims=[32,16,8]", f"model.name_or_path={g['bert']}", *EMB, tri]),
        "colbert-infonce": ("train", ["model=colbert", "loss=infonce", f"model.name_or_path={d}/colbert", "model.dim=16",
                                      *EMB, tri]),
        "cross_encoder-listwise": ("train", [*ce, "loss=listwise", tri]),
        "cross_encoder-pairwise": ("train", [*ce, "loss=pairwise", tri]),
        "cross_encoder-pointwise": ("train", [*ce, "loss=pointwise", pw]),
        "llm_yes-listwise": ("train", ["task=reranker", "model=llm-reranker", "model.family=llm_yes",
                                       f"model.name_or_path={g['llama']}", "model.max_length=96", "model.lora_r=0",
                                       "loss=listwise", tri]),
        "distill_kl-cross_encoder": ("distill", [*kl, "student=minilm", f"student.name_or_path={d}/student-ce",
                                                 "student.max_length=96", tri]),
        "distill_kl-embedder": ("distill", [*kl, "student=minilm-embedder", f"student.name_or_path={g['bert']}",
                                            "student.max_query_length=24", "student.max_doc_length=64", tri]),
        "stella-embedder": ("distill", ["teacher=vectors", f"teacher.name_or_path={d}/teacher.npy", "loss=stella",
                                        "loss.dims=[16,32,64]", "student=minilm-embedder",
                                        f"student.name_or_path={d}/stella-student", "student.max_doc_length=64",
                                        f"data.train={d}/texts.jsonl"]),
    }[name]


# Recorded on commit 6ac78e4 (pre-redesign), CPU, fp32: see the module docstring. Do not edit to make a test pass.
GOLDEN = {
    "embedder-infonce": [3.7859930992126465, 3.6011672019958496, 2.9185404777526855, 2.4905171394348145],
    "embedder-mrl": [4.216697692871094, 3.1425609588623047, 2.7612085342407227, 2.5496551990509033],
    "colbert-infonce": [4.044164657592773, 3.125054359436035, 2.7413182258605957, 2.547461748123169],
    "cross_encoder-listwise": [1.1861460208892822, 2.4602057933807373, 1.908583164215088, 1.4142265319824219],
    "cross_encoder-pairwise": [0.5101180672645569, 1.533633828163147, 1.1887521743774414, 0.7261441349983215],
    "cross_encoder-pointwise": [1.5689929723739624, 1.745326042175293, 0.7046045064926147, 0.6800776720046997],
    "llm_yes-listwise": [1.40020751953125, 1.4329264163970947, 1.465173363685608, 1.272244930267334],
    "distill_kl-cross_encoder": [0.3738728165626526, 0.07204362004995346, 0.08771389722824097, 0.05876024439930916],
    "distill_kl-embedder": [3.207925319671631, 1.3673622608184814, 0.48340100049972534, 0.09823114424943924],
    "stella-embedder": [115.16996002197266, 88.26608276367188, 65.02111053466797, 44.97977066040039],
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_losses(name, golden, tmp_path):
    command, overrides = _case(golden, name)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, [command, "--quiet", *overrides, *COMMON, f"output_dir={run}"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    losses = [loss for _, loss in steps]
    print(f"GOLDEN {name!r}: {losses!r}")
    assert losses == [pytest.approx(v, abs=1e-4) for v in GOLDEN[name]]
