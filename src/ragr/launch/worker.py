"""One training rank (internal): ``python -m ragr.launch.worker RUN_DIR/config.yaml --launch-dir DIR``.

Started by :mod:`ragr.launch.distributed` through torchrun or ``accelerate launch``. It reads the frozen,
resolved config the parent wrote and never composes again. A rank that stops on a user error writes the
message to ``DIR/error-rank<N>.txt`` and exits 2 (the parent reports it once); rank 0 writes the run's
results to ``DIR/result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ragr.errors import UserError


def load_frozen_config(path: str | os.PathLike) -> dict[str, Any]:
    """The resolved config written by the parent, as a plain dict (interpolations are not re-resolved)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragr.launch.worker",
                                     description="(internal) one training rank of a ragr launcher")
    parser.add_argument("config", help="the frozen run_dir/config.yaml")
    parser.add_argument("--launch-dir", required=True, help="where to leave the result / error files")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank = int(os.environ.get("RANK", "0"))
    launch_dir = Path(args.launch_dir)
    os.environ["RAGR_LAUNCH_DIR"] = str(launch_dir)  # the step watchdog leaves its error here
    try:
        from ragr.train.engine import Engine
        from ragr.train.job import TrainingJob

        cfg = load_frozen_config(args.config)
        job = TrainingJob(cfg, quiet=args.quiet)
        engine = Engine(cfg, job, quiet=args.quiet)
        results = engine.run()
        if job.distill:
            from ragr.train.job import agreement_note

            results["agreement_on"] = agreement_note(job)
        if engine.accelerator.is_main_process:  # before teardown: a finished run is reported as finished
            tmp = launch_dir / ".result.json.tmp"
            tmp.write_text(json.dumps(results, default=str))
            os.replace(tmp, launch_dir / "result.json")
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank is done before any tears the group down (gloo aborts a peer otherwise)
    except UserError as exc:
        launch_dir.mkdir(parents=True, exist_ok=True)
        (launch_dir / f"error-rank{rank}.txt").write_text(str(exc))
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
