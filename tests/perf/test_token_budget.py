"""Token-budget batching (trainer.max_tokens_per_batch): packs within the budget, every example once per epoch,
a step fixed by (seed, step), exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ragr.config import compose_config
from ragr.errors import UserError
from ragr.launch.local import run_local
from ragr.train.engine import Engine
from ragr.train.token_budget import TokenBudgetPlan, pack


def hand_pack(costs, budget):
    """A plain loop: add examples while the running sum stays within the budget."""
    out, cur, total = [], [], 0.0
    for i, c in enumerate(costs):
        if cur and total + c > budget:
            out.append(cur)
            cur, total = [], 0.0
        cur.append(i)
        total += c
    return out + [cur] if cur else out


def test_pack_equals_a_plain_greedy_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        costs = rng.integers(1, 80, size=int(rng.integers(1, 40))).astype(float)
        budget = float(rng.integers(20, 200))
        assert [list(p) for p in pack(costs, budget)] == hand_pack(costs, budget)
    assert [list(p) for p in pack(np.array([5.0, 50.0, 5.0]), 10)] == [[0], [1], [2]]  # over budget: alone


def test_every_example_once_per_epoch_within_the_budget():
    costs = np.random.default_rng(1).integers(10, 100, size=101).astype(float)
    plan = TokenBudgetPlan(costs, budget=300, seed=3)
    for epoch in range(3):
        packs = [p.ravel() for p in plan.packs(epoch)]
        assert sorted(int(i) for p in packs for i in p) == list(range(101))
        assert all(costs[p].sum() <= 300 or len(p) == 1 for p in packs)
        order = [int(i) for p in packs for i in p]  # in the engine's seeded order for that epoch
        assert order == list(np.random.default_rng([3, epoch]).permutation(101))
        assert [list(p) for p in packs] == [[order[k] for k in h] for h in hand_pack([costs[i] for i in order], 300)]


def test_ranks_get_equal_shares_and_steps_walk_the_packs_in_order():
    costs = np.full(21, 10.0)  # 2 ranks: 10 units of 20 tokens (1 example dropped), 3 units a pack of 60: 4 packs
    plan = TokenBudgetPlan(costs, budget=30, seed=0, world=2, grad_accum=2)
    assert [len(p) for p in plan.packs(0)] == [3, 3, 3, 1]
    assert plan.steps_per_epoch == 2 and plan.total_steps(3) == 6
    for epoch in range(3):  # every example but the epoch's last one in the permutation, once
        perm = np.random.default_rng([0, epoch]).permutation(21)
        assert sorted(int(i) for p in plan.packs(epoch) for i in p.ravel()) == sorted(perm[:20])
    seen = []
    for step in range(6):
        for a in range(2):
            m = step * 2 + a
            parts = [plan.micro_batch(step, a, rank) for rank in range(2)]
            assert {e for e, _ in parts} == {m // 4}
            assert len(parts[0][1]) == len(parts[1][1])  # DDP: the same number of forward passes on each rank
            for rank, (_, idx) in enumerate(parts):
                assert idx == [int(i) for i in plan.packs(m // 4)[m % 4][:, rank]]
                seen.extend((m // 4, i) for i in idx)
    assert len(set(seen)) == len(seen)
    again = TokenBudgetPlan(costs, budget=30, seed=0, world=2, grad_accum=2)  # a resumed run: the same packs
    assert again.micro_batch(4, 1, 1) == plan.micro_batch(4, 1, 1)


def common(tiny_bert, data_dir):
    return [f"model.name_or_path={tiny_bert}", f"data.train={data_dir / 'train.jsonl'}", "data.eval=null",
            "model.max_doc_length=32", "model.max_query_length=16", "data.num_negatives=1", "trainer.log_every=1",
            "trainer.max_tokens_per_batch=200"]


def test_example_costs_count_the_expected_tokens(tiny_bert, data_dir, tmp_path):
    from transformers import AutoTokenizer

    from ragr.train.job import TrainingJob

    cfg = compose_config("train", common(tiny_bert, data_dir) + [f"output_dir={tmp_path}"])
    job = TrainingJob(cfg, quiet=True)
    dataset = job.build_dataset()
    job.build_model()
    costs = job.family.example_costs(job.model, dataset, block=5)  # blocks of 5: the boundaries are crossed
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [json.loads(l) for l in open(data_dir / "train.jsonl")]
    n = lambda t, m: len(tok(t, truncation=True, max_length=m)["input_ids"])  # noqa: E731
    want = [n(r["query"], 16) + np.mean([n(p, 32) for p in r["pos"]]) + np.mean([n(x, 32) for x in r["neg"]]) for r in rows]
    np.testing.assert_allclose(costs, want)
    np.testing.assert_allclose(job.example_costs(dataset), want)  # what the engine asks for


def test_training_takes_budgeted_batches_and_resumes_exactly(tiny_bert, data_dir, tmp_path, monkeypatch, interrupt_after_checkpoint):
    sizes = []
    real = Engine._micro_batch

    def spy(self, dataset, step, a, spe):
        idx = real(self, dataset, step, a, spe)
        sizes.append(len(idx))
        return idx

    monkeypatch.setattr(Engine, "_micro_batch", spy)
    base = common(tiny_bert, data_dir) + ["trainer.max_steps=5", "trainer.save_every=2", "trainer.save_total_limit=5"]
    full = run_local(compose_config("train", base + [f"output_dir={tmp_path / 'full'}"]), quiet=True)
    assert full["steps"] == 5 and len(sizes) == 5
    assert 1 < max(sizes) < 24  # set by the budget (~200 / ~35 tokens an example), not batch_size (32: all 24 rows)
    monkeypatch.setattr(Engine, "_micro_batch", real)

    with interrupt_after_checkpoint(2), pytest.raises(KeyboardInterrupt):
        run_local(compose_config("train", base + [f"output_dir={tmp_path / 'resumed'}"]), quiet=True)
    run_local(compose_config("train", base + [f"output_dir={tmp_path / 'resumed'}", "trainer.resume=auto"]), quiet=True)
    a = load_file(f"{tmp_path / 'full'}/model/model.safetensors")
    b = load_file(f"{tmp_path / 'resumed'}/model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_without_max_steps_the_epochs_set_the_step_count(tiny_bert, data_dir, tmp_path):
    res = run_local(compose_config("train", common(tiny_bert, data_dir) + ["trainer.epochs=2", "trainer.eval_after=false",
                                                                             f"output_dir={tmp_path / 'r'}"]), quiet=True)
    from ragr.train.job import TrainingJob

    cfg = compose_config("train", common(tiny_bert, data_dir) + [f"output_dir={tmp_path / 'x'}"])
    job = TrainingJob(cfg, quiet=True)
    dataset = job.build_dataset()
    job.build_model()
    plan = TokenBudgetPlan(job.example_costs(dataset), 200, cfg["seed"])
    assert res["steps"] == len(plan.packs(0)) + len(plan.packs(1))  # grad_accum 1, one process: a pack a step


def test_a_budget_below_one_token_is_refused(tiny_bert, data_dir, tmp_path):
    overrides = common(tiny_bert, data_dir) + ["trainer.max_steps=1", "trainer.max_tokens_per_batch=0",
                                               f"output_dir={tmp_path / 'r'}"]
    with pytest.raises(UserError, match=r"trainer.max_tokens_per_batch' must be >= 1, got 0"):
        run_local(compose_config("train", overrides), quiet=True)


def test_a_family_without_example_costs_is_told_to_use_batch_size(tmp_path):
    from ragr.families import base, register_family
    from ragr.families.embedder import EmbedderFamily
    from ragr.registry import families

    class NoCosts(EmbedderFamily):  # a family (defined at run time) that does not support example costs
        name = "my_family"
        token_budget = False

    register_family(NoCosts)
    try:  # refused when the config is composed, before anything is loaded
        with pytest.raises(UserError, match="family 'my_family' does not support it; set trainer.batch_size"):
            compose_config("train", ["model.family=my_family", "trainer.max_tokens_per_batch=100",
                                     f"output_dir={tmp_path}"])
        compose_config("train", ["model.family=my_family", f"output_dir={tmp_path}"])  # without a budget it composes
    finally:
        families.unregister("my_family")
        base._LOCAL.pop("my_family", None)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ddp_ranks_train_with_a_token_budget(tiny_bert, data_dir, tmp_path):
    """Equal shares per rank: both ranks run the same number of forward passes (a mismatch would hang DDP)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    args = common(tiny_bert, data_dir) + ["trainer.max_steps=3", "trainer.chunk_size=2", "loss.gather_across_ranks=true",
                                          "launcher=ddp", "launcher.num_processes=2", f"output_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run([sys.executable, "-m", "ragr", "train", "-q", *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    steps = [json.loads(l)["step"] for l in open(tmp_path / "ddp" / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3]
