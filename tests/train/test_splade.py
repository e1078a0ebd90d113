"""SPLADE: pooling and FLOPS against numpy, FLOPS on two gloo ranks, `ragr train model=splade` on a tiny MLM, and the
saved folder in sentence-transformers' SparseEncoder (same vectors), plus loading folders SparseEncoder wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app
from ragr.families.splade import SPECIAL_BIAS, Splade, splade_pool
from ragr.losses.splade import FlopsRegularizer, SpladeLoss

TEXTS = ["how far is the moon?", "The moon is about 384,400 kilometres away.", "who wrote hamlet?",
         "Spiders have eight legs."]


# ---- pooling and FLOPS on fixed numbers --------------------------------------------------------------
def np_pool(logits: np.ndarray, mask: np.ndarray, pooling: str, activation: str) -> np.ndarray:
    w = np.log1p(np.maximum(logits, 0.0))
    if activation == "log1p_relu":
        w = np.log1p(w)
    w = w * mask[:, :, None]  # padding counts 0, and every transformed weight is >= 0
    return w.max(1) if pooling == "max" else w.sum(1)


@pytest.mark.parametrize("pooling", ["max", "sum"])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_pooling_matches_numpy(pooling, activation):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(3, 5, 7)).astype(np.float32)
    logits[1, 3:] = 50.0  # padding positions with large logits must not count
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float32)
    got = splade_pool(torch.tensor(logits), torch.tensor(mask), pooling, activation)
    np.testing.assert_allclose(got.numpy(), np_pool(logits, mask, pooling, activation), rtol=1e-6, atol=1e-6)
    assert got[1].max() < 10  # the padded 50s stayed out
    # the max-first shortcut has the gradient of transforming every token first
    x = torch.tensor(logits, requires_grad=True)
    splade_pool(x, torch.tensor(mask), pooling, activation).sum().backward()
    y = torch.tensor(logits, requires_grad=True)
    w = torch.log1p(torch.relu(y))
    w = torch.log1p(w) if activation == "log1p_relu" else w
    w = w * torch.tensor(mask)[:, :, None]
    (w.amax(1) if pooling == "max" else w.sum(1)).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_flops_and_warmup_match_numpy():
    rng = np.random.default_rng(1)
    q = np.maximum(rng.normal(size=(4, 9)), 0).astype(np.float32)
    d = np.maximum(rng.normal(size=(8, 9)), 0).astype(np.float32)
    fq = float(np.sum(np.mean(q, axis=0) ** 2))
    fd = float(np.sum(np.mean(d, axis=0) ** 2))
    reg = FlopsRegularizer(lambda_q=0.3, lambda_d=0.2, warmup_steps=10)
    for step, factor in [(0, 0.0), (5, 0.25), (9, 0.81), (10, 1.0), (50, 1.0)]:
        reg.set_step(step, 100)
        out = reg(torch.tensor(q), torch.tensor(d))
        assert out["regularizer"].item() == pytest.approx(factor * (0.3 * fq + 0.2 * fd), rel=1e-5)
        assert out["flops_query"].item() == pytest.approx(fq, rel=1e-5)
        assert out["flops_doc"].item() == pytest.approx(fd, rel=1e-5)
    assert out["active_dims_query"].item() == pytest.approx(float((q > 0).sum(1).mean()))
    assert out["active_dims_doc"].item() == pytest.approx(float((d > 0).sum(1).mean()))
    default = FlopsRegularizer(warmup_steps=None)  # a third of the run
    default.set_step(10, 90)
    assert default.weight() == pytest.approx((10 / 30) ** 2)


def test_splade_loss_is_infonce_plus_flops():
    rng = np.random.default_rng(2)
    q = np.maximum(rng.normal(size=(3, 6)), 0).astype(np.float32)
    d = np.maximum(rng.normal(size=(6, 6)), 0).astype(np.float32)  # groups of 2: positive, hard negative
    s = q @ d.T / 0.5
    ce = np.mean([np.log(np.exp(s[i]).sum()) - s[i, 2 * i] for i in range(3)])
    reg = 0.1 * np.sum(q.mean(0) ** 2) + 0.05 * np.sum(d.mean(0) ** 2)
    out = SpladeLoss(temperature=0.5, lambda_q=0.1, lambda_d=0.05, warmup_steps=0)(torch.tensor(q), torch.tensor(d))
    assert out["loss"].item() == pytest.approx(ce + reg, rel=1e-5)
    assert out["ranking"].item() == pytest.approx(ce, rel=1e-5)


# ---- two ranks: FLOPS of the combined batch ------------------------------------------------------------
RANK_SCRIPT = textwrap.dedent('''
    import sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ragr.losses.splade import FlopsRegularizer, flops

    data, out = torch.load(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    enc = torch.nn.Linear(data["feat"], data["vocab"])
    enc.load_state_dict(data["init"])
    model = DDP(enc)
    qs, ds = data["q_split"][rank], data["d_split"][rank]   # uneven: rank 0 holds more queries than rank 1
    q = torch.relu(model(data["xq"][qs[0]:qs[1]]))
    d = torch.relu(model(data["xd"][ds[0]:ds[1]]))
    reg = FlopsRegularizer(data["lq"], data["ld"], warmup_steps=0)(q, d)
    reg["regularizer"].backward()
    torch.save({"reg": reg["regularizer"].detach(), "fq": reg["flops_query"], "active_q": reg["active_dims_query"],
                "local_fq": flops(q.detach()), "grads": [p.grad for p in enc.parameters()]}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
''')


@pytest.mark.distributed
def test_flops_on_two_ranks_equals_one_process_with_the_combined_batch(tmp_path):
    torch.manual_seed(0)
    feat, vocab, lq, ld = 5, 11, 0.3, 0.7
    enc = torch.nn.Linear(feat, vocab)
    xq, xd = torch.randn(4, feat), torch.randn(6, feat)
    torch.save({"feat": feat, "vocab": vocab, "init": enc.state_dict(), "xq": xq, "xd": xd, "lq": lq, "ld": ld,
                "q_split": [(0, 3), (3, 4)], "d_split": [(0, 4), (4, 6)]}, tmp_path / "data.pt")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "MASTER_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--log-dir", str(tmp_path / "logs"), str(tmp_path / "rank.py"), str(tmp_path / "data.pt"),
                           str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    written = all((tmp_path / f"rank{r}.pt").is_file() for r in range(2))
    teardown_abort = written and "terminate called without an active exception" in proc.stderr  # see test_gather_ranks
    assert proc.returncode == 0 or teardown_abort, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # one process, the combined batch, numpy for the value
    q, d = torch.relu(enc(xq)), torch.relu(enc(xd))
    qn, dn = q.detach().numpy(), d.detach().numpy()
    want = lq * np.sum(qn.mean(0) ** 2) + ld * np.sum(dn.mean(0) ** 2)
    (lq * (q.mean(0) ** 2).sum() + ld * (d.mean(0) ** 2).sum()).backward()
    for r in ranks:
        assert r["reg"].item() == pytest.approx(float(want), rel=1e-5)
        assert r["active_q"].item() == pytest.approx(float((qn > 0).sum(1).mean()))
        for got, ref in zip(r["grads"], [p.grad for p in enc.parameters()]):  # DDP averaged the ranks' gradients
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # the per-rank FLOPS is another number: the gather mattered
    assert abs(ranks[1]["local_fq"].item() - ranks[1]["fq"].item()) > 1e-3


# ---- ragr train model=splade ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_mlm, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("splade") / "run"
    res = CliRunner().invoke(app, ["train", "--quiet", "model=splade", f"model.name_or_path={tiny_mlm}",
                                   f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}",
                                   "trainer.max_steps=8", "trainer.batch_size=12", "trainer.lr=3e-3",
                                   "trainer.scheduler=constant", "trainer.warmup_ratio=0", "trainer.log_every=1",
                                   "loss.lambda_q=1e-3", "loss.lambda_d=1e-3", "loss.warmup_steps=4", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    return run


def test_tiny_mlm_trains_and_reports_active_dims(trained):
    records = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 8
    assert np.mean([r["loss"] for r in steps[-2:]]) < np.mean([r["loss"] for r in steps[:2]]) - 0.2
    for r in steps:
        assert 0 < r["active_dims_query"] <= 165 and 0 < r["active_dims_doc"] <= 165
        assert r["flops_query"] > 0 and r["flops_doc"] > 0
    weights = [r["flops_weight"] for r in steps]  # quadratic warm-up over 4 steps, then full weight
    np.testing.assert_allclose(weights, [0.0, 1 / 16, 4 / 16, 9 / 16, 1.0, 1.0, 1.0, 1.0], rtol=1e-6)
    evals = json.loads((trained / "eval.json").read_text())
    assert evals["after"]["ndcg@10"] > evals["before"]["ndcg@10"]
    assert 0 < evals["after"]["active_dims_doc"] <= 165 and 0 < evals["after"]["active_dims_query"] <= 165
    cfg = (trained / "config.yaml").read_text()
    assert "name: splade" in cfg  # model=splade picked loss=splade by itself


def test_saved_model_opens_in_sparse_encoder_with_equal_vectors(trained):
    from sentence_transformers import SparseEncoder

    ours = Splade.from_pretrained(str(trained / "model"))
    st = SparseEncoder(str(trained / "model"), device="cpu")
    for is_query in (True, False):
        mine = ours.encode(TEXTS, is_query=is_query)
        theirs = (st.encode_query if is_query else st.encode_document)(TEXTS, convert_to_tensor=True).to_dense().cpu()
        torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)
        assert (mine > 0).any(1).all()
    # the special tokens' terms are held at zero, in the saved head as well
    special = sorted(ours.tokenizer.all_special_ids)
    assert (mine[:, special] == 0).all()
    assert (ours.backbone.get_output_embeddings().bias[special] <= SPECIAL_BIAS).all()
    meta = json.loads((trained / "model" / "ragr.json").read_text())
    assert meta["family"] == "splade" and meta["inference_free"] is False


def test_inference_free_query_side_round_trips_through_sparse_encoder(tiny_mlm, tmp_path):
    from sentence_transformers import SparseEncoder

    model = Splade.from_pretrained(tiny_mlm, inference_free=True)
    with torch.no_grad():
        model.query_weights.mul_(torch.linspace(0.5, 2.0, model.vocab_size))  # a non-trivial table
    model.save(tmp_path / "if")
    st = SparseEncoder(str(tmp_path / "if"), device="cpu")
    q = st.encode_query(TEXTS, convert_to_tensor=True).to_dense().cpu()
    d = st.encode_document(TEXTS, convert_to_tensor=True).to_dense().cpu()
    torch.testing.assert_close(q, model.encode(TEXTS, is_query=True), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d, model.encode(TEXTS, is_query=False), rtol=1e-5, atol=1e-5)
    # a query's vector: the table's weight for each distinct token of the query (no special tokens), by hand
    ids = model.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    want = torch.zeros(model.vocab_size)
    want[sorted(set(ids))] = model.query_weights.detach()[sorted(set(ids))]
    torch.testing.assert_close(q[0], want)
    again = Splade.from_pretrained(str(tmp_path / "if"))
    assert again.inference_free
    torch.testing.assert_close(again.encode(TEXTS, is_query=True), q)


@pytest.mark.parametrize("layout", ["st", "plain"])
def test_published_folders_load_with_their_vectors(tiny_mlm, tmp_path, layout):
    """A folder SparseEncoder itself wrote (6.x layout) and a plain MLM folder (naver/splade-* style)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    st = SparseEncoder(modules=[Transformer(tiny_mlm, transformer_task="fill-mask"), SpladePooling("max")], device="cpu")
    if layout == "st":
        st.save(str(tmp_path / "st"))
        ours = Splade.from_pretrained(str(tmp_path / "st"))
        assert not ours.mask_special_terms  # a published SparseEncoder keeps its own vectors
    else:
        ours = Splade.from_pretrained(tiny_mlm, mask_special_terms=False)
    want = st.encode_document(TEXTS, convert_to_tensor=True).to_dense().cpu()
    torch.testing.assert_close(ours.encode(TEXTS), want, rtol=1e-5, atol=1e-5)


# ---- distillation: margin-MSE / KL to teacher scores + FLOPS --------------------------------------------
def test_distill_losses_match_numpy():
    from ragr.losses.splade import SpladeDistillLoss

    s = np.array([[3.0, 1.0, 2.0, 0.0], [0.5, 2.5, 1.0, 9.0]], dtype=np.float32)
    t = np.array([[9.0, 1.0, 2.0, -1.0], [4.0, 1.0, 3.0, 0.0]], dtype=np.float32)
    labels = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=bool)  # query 2 has 3 candidates
    q = np.abs(np.random.default_rng(3).normal(size=(2, 5))).astype(np.float32)
    d = np.abs(np.random.default_rng(4).normal(size=(7, 5))).astype(np.float32)
    reg = 0.1 * np.sum(q.mean(0) ** 2) + 0.2 * np.sum(d.mean(0) ** 2)
    margins = [((s[b, 0] - s[b, j]) - (t[b, 0] - t[b, j])) ** 2 for b in range(2) for j in range(1, 4) if mask[b, j]]
    args = [torch.tensor(x) for x in (s, t, labels, mask)]
    out = SpladeDistillLoss("margin-mse", lambda_q=0.1, lambda_d=0.2, warmup_steps=0)(
        *args, queries=torch.tensor(q), docs=torch.tensor(d))
    assert out["ranking"].item() == pytest.approx(float(np.mean(margins)), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(np.mean(margins) + reg), rel=1e-5)

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    kl = []
    for b in range(2):
        m = mask[b]
        lp, lq = log_softmax(t[b, m] / 2.0), log_softmax(s[b, m] / 0.5)
        kl.append(np.sum(np.exp(lp) * (lp - lq)))
    out = SpladeDistillLoss("kl", temperature=0.5, teacher_temperature=2.0, lambda_q=0.1, lambda_d=0.2, warmup_steps=0)(
        *args, queries=torch.tensor(q), docs=torch.tensor(d))
    assert out["ranking"].item() == pytest.approx(float(np.mean(kl)), rel=1e-5)


def test_ragr_distill_trains_a_splade_student_on_teacher_scores(tiny_mlm, data_dir, tmp_path):
    triplets = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()][:12]
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(json.dumps({**t, "pos_scores": [9.0], "neg_scores": [1.0, 2.0, -1.0]}) + "\n" for t in triplets))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill", "--quiet", "student=splade", f"student.name_or_path={tiny_mlm}", "teacher=data",
                                   "loss=splade-distill", f"data.train={scored}", f"data.eval={data_dir / 'dev.jsonl'}",
                                   "data.num_negatives=3", "trainer.max_steps=4", "trainer.batch_size=12", "trainer.lr=3e-3",
                                   "trainer.scheduler=constant", "trainer.warmup_ratio=0", "trainer.log_every=1",
                                   "loss.warmup_steps=0", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 4 and steps[-1]["ranking"] < steps[0]["ranking"]
    assert all(r["active_dims_doc"] > 0 and r["regularizer"] > 0 for r in steps)
    assert json.loads((run / "model" / "ragr.json").read_text())["family"] == "splade"


@pytest.mark.distributed
def test_inference_free_trains_on_two_ddp_ranks(tiny_mlm, data_dir, tmp_path):
    """The query table and the MLM run in separate forwards of one step: each must use every parameter, or DDP
    marks the table ready twice (the failure this guards against)."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", "model=splade", f"model.name_or_path={tiny_mlm}",
                           "model.inference_free=true", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
                           "launcher=ddp", "launcher.num_processes=2", "launcher.timeout_s=120", "trainer.max_steps=2",
                           "trainer.batch_size=4", "trainer.precision=fp32", "trainer.log_every=1", "loss.lambda_q=0",
                           f"output_dir={run}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 2 and all(r["active_dims_query"] < r["active_dims_doc"] for r in steps)
    assert Splade.from_pretrained(str(run / "model")).inference_free
