"""A collective mismatch that still happens (a user's family calling the model once more on one rank) is an
error naming the rank and the step within ``launcher.timeout_s``, not a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.distributed

SCRIPT = textwrap.dedent('''
    import os, sys, time
    import torch, torch.distributed as dist
    from ragr.train.watchdog import StepWatchdog

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    t = torch.ones(1)
    with StepWatchdog(2, rank, 2) as wd:
        for step in (1, 2, 3):
            with wd.step(step, 0):
                dist.all_reduce(t)
                if step == 3 and rank == 1:
                    dist.all_reduce(t)   # one collective more than rank 0: the ranks no longer match
                dist.barrier()
    print("finished", flush=True)
''')


def test_a_rank_mismatch_stops_within_the_timeout_naming_rank_and_step(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "RAGR_LAUNCH_DIR": str(tmp_path / "launch"), "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = str(s.getsockname()[1])
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert time.monotonic() - t0 < 90
    codes = [p.returncode for p in procs]
    assert 3 in codes, (codes, outs)  # the watchdog ended at least one rank (the other then fails or ends too)
    errors = sorted((tmp_path / "launch").glob("error-rank*.txt"))
    assert errors
    text = errors[0].read_text()
    assert "made no progress in training step 3" in text and f"rank {errors[0].stem[-1]}" in text
    assert "launcher.timeout_s" in text
    assert not any("finished" in o for o, _ in outs)


def test_one_process_has_no_watchdog():
    from ragr.train.watchdog import StepWatchdog

    wd = StepWatchdog(0.01, 0, 1)
    with wd, wd.step(1, 0):
        time.sleep(0.05)  # would have fired in a multi-rank run
