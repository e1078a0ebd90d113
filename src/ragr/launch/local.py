"""``launcher=local``: train in this process."""

from __future__ import annotations

from typing import Any

from ragr.errors import UserError


def run_local(cfg: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    from ragr.train.engine import Engine
    from ragr.train.job import TrainingJob

    if cfg["launcher"].get("num_processes", 1) != 1:
        raise UserError("launcher=local runs one process; for several use launcher=ddp (or deepspeed-zero*, fsdp) "
                        "with launcher.num_processes=N")
    return Engine(cfg, TrainingJob(cfg, quiet=quiet), quiet=quiet).run()
