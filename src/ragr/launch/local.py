"""``launcher=local``: train in this process."""

from __future__ import annotations

from typing import Any

from ragr.errors import UserError


def run_local(cfg: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    from ragr.registry import tasks
    from ragr.train.engine import Engine

    if cfg["launcher"].get("num_processes", 1) != 1:
        raise UserError("launcher=local runs one process; for several use launcher=ddp (or deepspeed-zero*, fsdp) "
                        "with launcher.num_processes=N")
    task = tasks.get(cfg["model"]["family"])(cfg)
    return Engine(cfg, task, quiet=quiet).run()
