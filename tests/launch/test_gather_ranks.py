"""Gathered in-batch negatives: two gloo ranks give the loss and the (DDP-averaged) gradients of one process
holding the combined batch, and a query never meets another rank's copy of its own positive as a negative."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.distributed

B, G, FEAT, DIM, TAU, WORLD = 2, 2, 6, 5, 0.1, 2
# per query: (positive, hard negative). Rank 0 holds queries 0-1, rank 1 queries 2-3.
# Query 2's negative "A" is query 0's positive (another rank); query 3's positive "B" is query 1's.
GROUPS = [("A", "X"), ("B", "Y"), ("C", "A"), ("B", "Z")]

RANK_SCRIPT = textwrap.dedent('''
    import sys
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ragr.losses.gather import all_gather_with_grad, text_key
    from ragr.losses.infonce import InfoNCE

    data, out = torch.load(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    b, g = data["b"], data["g"]
    enc = torch.nn.Linear(data["feat"], data["dim"])
    enc.load_state_dict(data["init"])
    model = DDP(enc)
    texts = data["doc_texts"][rank * b * g:(rank + 1) * b * g]
    pos = data["pos_texts"][rank * b:(rank + 1) * b]
    mask = torch.tensor([[j != i * g and t in pos[i] for j, t in enumerate(texts)] for i in range(b)])
    doc_keys = torch.tensor([text_key(t) for t in texts])
    pos_keys = torch.tensor([[text_key(t) for t in p] for p in pos])
    q = F.normalize(model(data["xq"][rank * b:(rank + 1) * b]), dim=-1)
    d = F.normalize(model(data["xd"][rank * b * g:(rank + 1) * b * g]), dim=-1)
    loss_fn = InfoNCE(data["tau"], gather_across_ranks=True)
    with torch.no_grad():
        unmasked = loss_fn(q, d, mask)["loss"]   # without text keys: cross-rank duplicates stay negatives
    loss = loss_fn(q, d, mask, doc_keys=doc_keys, pos_keys=pos_keys)["loss"]   # as the contrastive objective passes them
    loss.backward()

    # uneven sizes: rank 0 sends 3 rows, rank 1 sends 2; every rank's loss is sum(w * gathered)
    x = torch.arange(3 - rank, dtype=torch.float32).add(10 * rank).requires_grad_()
    y, offset = all_gather_with_grad(x)
    w = torch.arange(5, dtype=torch.float32) + 1
    (w * y).sum().backward()
    torch.save({"loss": loss.detach(), "unmasked": unmasked, "grads": [p.grad for p in enc.parameters()],
                "gathered": y.detach(), "offset": offset, "x_grad": x.grad}, f"{out}/rank{rank}.pt")
    dist.barrier()  # both ranks done with every collective before gloo is torn down
    dist.destroy_process_group()
''')


def reference(xq, xd, enc, doc_texts, pos_texts):
    """One process, all four queries, plain softmax over every document with same-text positives removed."""
    q = F.normalize(enc(xq), dim=-1)
    d = F.normalize(enc(xd), dim=-1)
    scores = q @ d.T / TAU
    losses = []
    for i in range(len(pos_texts)):
        keep = [j for j, t in enumerate(doc_texts) if j == i * G or t not in pos_texts[i]]
        row = scores[i, keep]
        losses.append(torch.logsumexp(row, 0) - scores[i, i * G])
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in enc.parameters()]


def test_two_ranks_equal_one_process_with_the_combined_batch(tmp_path):
    torch.manual_seed(0)
    enc = torch.nn.Linear(FEAT, DIM)
    vocab = {t: torch.randn(FEAT) for t in "ABCXYZ"}  # one feature vector per text: copies are real copies
    doc_texts = [t for group in GROUPS for t in group]
    pos_texts = [{p} for p, _ in GROUPS]
    # queries near their positives, so a positive's copy left among the negatives costs about log 2
    xq = torch.stack([vocab[p] for p, _ in GROUPS]) + 0.1 * torch.randn(len(GROUPS), FEAT)
    xd = torch.stack([vocab[t] for t in doc_texts])
    torch.save({"b": B, "g": G, "feat": FEAT, "dim": DIM, "tau": TAU, "init": enc.state_dict(), "xq": xq, "xd": xd,
                "doc_texts": doc_texts, "pos_texts": pos_texts}, tmp_path / "data.pt")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "MASTER_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
                           "--log-dir", str(tmp_path / "logs"), str(tmp_path / "rank.py"), str(tmp_path / "data.pt"),
                           str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    written = all((tmp_path / f"rank{r}.pt").is_file() for r in range(WORLD))
    # gloo sometimes aborts a rank while tearing down after its results are saved ("terminate called without an
    # active exception"), seen only late in the full suite; the results below are still checked in full
    teardown_abort = written and "terminate called without an active exception" in proc.stderr
    assert proc.returncode == 0 or teardown_abort, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    ref_loss, ref_grads = reference(xq, xd, enc, doc_texts, pos_texts)
    # the engine logs the mean of the ranks' losses; DDP averages the ranks' gradients
    assert np.mean([r["loss"].item() for r in ranks]) == pytest.approx(ref_loss.item(), rel=1e-5)
    for r in ranks:
        for got, want in zip(r["grads"], ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the cross-rank mask mattered: without text keys, the copies of "A" and "B" count as negatives
    assert np.mean([r["unmasked"].item() for r in ranks]) > ref_loss.item() + 0.2

    # uneven all_gather: rank order, offsets, and each rank's rows get the gradient of both ranks' losses
    w = torch.arange(5, dtype=torch.float32) + 1
    for rank, r in enumerate(ranks):
        torch.testing.assert_close(r["gathered"], torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0]))
        assert r["offset"] == (0, 3)[rank]
        torch.testing.assert_close(r["x_grad"], WORLD * w[r["offset"]:r["offset"] + 3 - rank])


def test_in_one_process_gathering_is_plain_in_batch_infonce():
    from ragr.losses.infonce import InfoNCE

    torch.manual_seed(1)
    q, d = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4] = True
    got = InfoNCE(0.05, gather_across_ranks=True)(q, d, mask)["loss"]
    assert got.item() == pytest.approx(InfoNCE(0.05)(q, d, mask)["loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="in_batch_negatives"):
        InfoNCE(0.05, in_batch_negatives=False, gather_across_ranks=True)


def test_collate_keys_identify_texts_like_the_false_negative_mask():
    import hashlib

    from ragr.data.dataset import collate
    from ragr.data.formats import _norm

    examples = [{"query": "q0", "docs": ["Paris", "Rome"], "pos_set": {_norm("Paris"), _norm("Lyon")}},
                {"query": "q1", "docs": ["Lyon", "Paris"], "pos_set": {_norm("Lyon")}}]
    batch = collate(examples)
    # keys are blake2b-64 of the normalized text, shifted to 63 bits: the same in every process
    want = [int.from_bytes(hashlib.blake2b(_norm(t).encode(), digest_size=8).digest(), "little") >> 1
            for t in ["Paris", "Rome", "Lyon", "Paris"]]
    assert batch["doc_keys"].tolist() == want
    assert batch["pos_keys"].shape == (2, 2) and batch["pos_keys"][1, 1] == -1  # padded with a key no text has
    # keys give the collator's mask: doc j is a false negative of query i when its key is one of i's positive keys
    from_keys = (batch["doc_keys"][None, :, None] == batch["pos_keys"][:, None, :]).any(-1)
    from_keys[0, 0] = from_keys[1, 2] = False  # each query's own target
    assert torch.equal(from_keys, batch["false_negatives"])
    assert from_keys.sum() == 2  # query 0: the other "Paris" and "Lyon"
