"""Multi-process launchers: ``ddp``, ``deepspeed-zero1/2/3`` and ``fsdp``, on one machine or several.

The parent (``ragr train``) has composed and validated the config once. Here it writes the resolved
config to ``run_dir/config.yaml`` and the accelerate config to ``run_dir/accelerate_config.yaml``, then
starts this machine's ranks, each running ``python -m ragr.launch.worker run_dir/config.yaml``:

- ``ddp`` through torchrun's API (``torch.distributed.run``): NCCL ranks on GPUs, gloo ranks on CPUs.
  (accelerate 1.x's own launcher starts a single process for a CPU config, so it is not used here.)
- ``deepspeed-*`` and ``fsdp`` through accelerate's launcher (``accelerate.commands.launch``) with the
  written config file, so the file is exactly what ran.

No shell strings are built: both launchers take argument lists. ``launcher.num_processes`` counts all
ranks on all machines (as in accelerate); each machine runs ``ragr train`` with its own
``launcher.machine_rank`` (see docs/MULTINODE.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragr.errors import UserError
from ragr.launch.accelerate_configs import DISTRIBUTED, ZERO_STAGES, accelerate_config, write_config

WORKER = "ragr.launch.worker"
DEFAULT_PORT = 29500


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_launcher(launcher: dict[str, Any], cuda: bool, gpus: int) -> None:
    """Reject launcher settings that cannot run here, with the key to change."""
    name, n, machines, rank = (launcher["name"], launcher["num_processes"], launcher["num_machines"],
                               launcher["machine_rank"])
    if name not in DISTRIBUTED:
        raise UserError(f"launcher '{name}' is not a multi-process launcher")
    if n < 1 or machines < 1:
        raise UserError("launcher.num_processes and launcher.num_machines must be >= 1")
    if n % machines:
        raise UserError(f"launcher.num_processes={n} counts the ranks of all {machines} machines; "
                        "it must be a multiple of launcher.num_machines")
    if not 0 <= rank < machines:
        raise UserError(f"launcher.machine_rank={rank} must be in 0..{machines - 1}")
    if machines > 1 and not launcher.get("main_process_ip"):
        raise UserError("launcher.main_process_ip (the address of machine 0) is required "
                        "with launcher.num_machines > 1")
    stage = ZERO_STAGES.get(name)
    if stage is not None and launcher.get("zero_stage") not in (None, stage):
        raise UserError(f"launcher={name} is ZeRO stage {stage}; launcher.zero_stage={launcher['zero_stage']} "
                        f"contradicts it (choose launcher=deepspeed-zero{launcher['zero_stage']})")
    if launcher.get("offload_params", "none") != "none" and stage not in (None, 3):
        raise UserError(f"launcher.offload_params needs ZeRO stage 3 (launcher=deepspeed-zero3), not {name}")
    if name == "fsdp" and launcher.get("offload_params") == "nvme":
        raise UserError("launcher=fsdp offloads parameters to cpu only (launcher.offload_params=cpu)")
    offloads = (launcher.get("offload_params", "none"), launcher.get("offload_optimizer", "none"))
    if name == "ddp" and offloads != ("none", "none"):
        raise UserError("launcher=ddp does not offload; use launcher=deepspeed-zero2/3 or fsdp")
    if "nvme" in (launcher.get("offload_params"), launcher.get("offload_optimizer")) and not launcher.get("nvme_path"):
        raise UserError("offloading to nvme needs launcher.nvme_path")
    per_machine = n // machines
    if cuda:
        if per_machine > gpus:
            raise UserError(f"launcher.num_processes={n} over {machines} machine(s) needs {per_machine} GPUs here, "
                            f"found {gpus}")
        return
    if name == "fsdp":
        raise UserError("launcher=fsdp needs CUDA GPUs (accelerate shards with FSDP on GPUs only); "
                        "on CPUs use launcher=ddp")
    if stage is not None and n > 1:
        raise UserError(f"launcher={name} needs CUDA GPUs for more than one process (accelerate does not run "
                        "DeepSpeed ranks on CPUs); on CPUs use launcher=ddp, "
                        "or launcher.num_processes=1 to try the config")


def _failure_message(launch_dir: Path) -> str | None:
    errors = sorted(launch_dir.glob("error-rank*.txt"), key=lambda p: int(p.stem.removeprefix("error-rank")))
    return errors[0].read_text() if errors else None


def _torchrun(launcher: dict[str, Any], worker_args: list[str], ip: str, port: int, launch_dir: Path,
              cuda: bool) -> None:
    """Start this machine's ranks with torchrun's API (no shell): ``torch.distributed.run``."""
    from accelerate.utils import patch_environment
    from torch.distributed import run as torchrun

    per_node = launcher["num_processes"] // launcher["num_machines"]
    argv = ["--nnodes", str(launcher["num_machines"]), "--nproc-per-node", str(per_node),
            "--node-rank", str(launcher["machine_rank"]), "--master-addr", ip, "--master-port", str(port),
            "--log-dir", str(launch_dir / "torchrun"), "--module", WORKER, *worker_args]
    env = {} if cuda else {"ACCELERATE_USE_CPU": "true"}  # CPU ranks: accelerate makes them MULTI_CPU (gloo)
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores (torchrun would set 1 and print a banner)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_node))
    with patch_environment(**env), _quiet_elastic_logs():
        torchrun.run(torchrun.parse_args(argv))


@contextmanager
def _quiet_elastic_logs():
    """torchrun's agent logs each failed rank; the parent reports failures itself, once."""
    loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
               if name.startswith("torch.distributed.elastic") and isinstance(lg, logging.Logger)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _accelerate_launch(config_file: Path, worker_args: list[str]) -> None:
    """Start this machine's ranks with accelerate's launcher and the written config file."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--module", WORKER, *worker_args])
    launch_command(args)


def write_run_files(cfg: dict[str, Any], cuda: bool) -> tuple[Path, Path, str, int]:
    """Write ``run_dir/config.yaml`` (resolved) and ``run_dir/accelerate_config.yaml``.

    Returns ``(config_file, accelerate_config_file, main_process_ip, main_process_port)``.
    A run dir holding checkpoints is refused (unless ``trainer.resume`` says to continue) before anything is written.
    """
    from ragr.config import to_yaml
    from ragr.train.rundir import atomic_write_text, check_resume, find_resume_point

    launcher = cfg["launcher"]
    run_dir = Path(cfg["output_dir"]).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if find_resume_point(run_dir, cfg["trainer"].get("resume")) is not None:
        check_resume(run_dir, cfg)  # before config.yaml is overwritten with the new one
    multi_node = launcher["num_machines"] > 1
    ip = launcher.get("main_process_ip") or "127.0.0.1"
    port = launcher.get("main_process_port") or (DEFAULT_PORT if multi_node else _free_port())
    layer_cls = None
    if launcher["name"] == "fsdp":
        from ragr.launch.layers import layer_classes_for_model

        layer_cls = launcher.get("layer_cls") or layer_classes_for_model(cfg["student"] if "student" in cfg else cfg["model"])
    acc_cfg = accelerate_config(launcher, cfg["trainer"], cuda=cuda, main_process_ip=ip, main_process_port=port,
                                layer_cls=layer_cls)
    # one accelerate config per machine: on a shared filesystem the machines must not overwrite each other's
    acc_name = f"accelerate_config.machine{launcher['machine_rank']}.yaml" if multi_node else "accelerate_config.yaml"
    config_file, acc_file = run_dir / "config.yaml", run_dir / acc_name
    atomic_write_text(config_file, to_yaml(cfg))
    write_config(acc_cfg, acc_file)
    return config_file, acc_file, ip, port


def run_distributed(cfg: dict[str, Any], quiet: bool = False) -> dict[str, Any] | None:
    """Train with the multi-process launcher ``cfg["launcher"]["name"]``; returns rank 0's results.

    On machines other than machine 0 (multi-node), rank 0 runs elsewhere: returns None.
    """
    import torch

    from ragr.device import quiet_deepspeed_probe

    quiet_deepspeed_probe()
    launcher = cfg["launcher"]
    cuda = torch.cuda.is_available()
    check_launcher(launcher, cuda, torch.cuda.device_count() if cuda else 0)
    if launcher["name"] in ZERO_STAGES:
        from accelerate.utils import is_deepspeed_available

        if not is_deepspeed_available():
            raise UserError(f"launcher={launcher['name']} needs DeepSpeed: pip install deepspeed "
                            "(or the ragr extra named deepspeed)")
    config_file, acc_file, ip, port = write_run_files(cfg, cuda)

    launch_dir = Path(tempfile.mkdtemp(prefix=".launch-", dir=config_file.parent))
    worker_args = [str(config_file), "--launch-dir", str(launch_dir)] + (["--quiet"] if quiet else [])
    try:
        try:
            if launcher["name"] == "ddp":
                _torchrun(launcher, worker_args, ip, port, launch_dir, cuda)
            else:
                _accelerate_launch(acc_file, worker_args)
        except Exception as exc:  # noqa: BLE001 - torchrun's ChildFailedError, accelerate's CalledProcessError ...
            message = _failure_message(launch_dir)
            if message is not None:
                raise UserError(message) from None
            if (launch_dir / "result.json").is_file():  # finished and saved; a rank failed only while tearing down
                print("warning: a rank exited abnormally after the run had finished and saved its results",
                      file=sys.stderr)
                return json.loads((launch_dir / "result.json").read_text())
            failures = getattr(exc, "failures", None)
            where = f" on rank(s) {', '.join(str(r) for r in sorted(failures))}" if failures else ""
            print(f"error: training failed{where}; the rank's traceback is above", file=sys.stderr)
            raise SystemExit(1) from None
        result_file = launch_dir / "result.json"
        return json.loads(result_file.read_text()) if result_file.is_file() else None
    finally:
        shutil.rmtree(launch_dir, ignore_errors=True)
