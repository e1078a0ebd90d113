"""The accelerate config (``accelerate launch --config_file``) a launcher node stands for, as a plain dict.

Keys and values are those accelerate's own ``ClusterConfig`` reads (tests load the written YAML with
accelerate's loader and build its DeepSpeed/FSDP plugins from it). Precision, gradient accumulation and
clipping come from the ``trainer`` node, so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: launcher name -> DeepSpeed ZeRO stage
ZERO_STAGES = {"deepspeed-zero1": 1, "deepspeed-zero2": 2, "deepspeed-zero3": 3}
DISTRIBUTED = ("ddp", *ZERO_STAGES, "fsdp")


def mixed_precision(precision: str, cuda: bool) -> str:
    """accelerate's ``mixed_precision`` for ``trainer.precision`` (the rule is :mod:`ragr.device`'s)."""
    from ragr.device import mixed_precision as rule

    return rule(precision, cuda)


def accelerate_config(
    launcher: dict[str, Any],
    trainer: dict[str, Any],
    *,
    cuda: bool,
    main_process_ip: str,
    main_process_port: int,
    layer_cls: list[str] | None = None,
) -> dict[str, Any]:
    """The accelerate config dict for ``launcher`` (``ddp``, ``deepspeed-zero{1,2,3}`` or ``fsdp``).

    Args:
        launcher: the resolved ``launcher`` node.
        trainer: the resolved ``trainer`` node (precision, grad_accum, max_grad_norm).
        cuda: ranks run on GPUs (NCCL); otherwise on CPUs (gloo, ``ddp`` only).
        main_process_ip / main_process_port: where rank 0 listens.
        layer_cls: for ``fsdp``, the model's transformer layer class names (see :mod:`ragr.launch.layers`).
    """
    name = launcher["name"]
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU" if cuda else "MULTI_CPU",
        "mixed_precision": mixed_precision(trainer["precision"], cuda),
        "use_cpu": not cuda,
        "num_processes": launcher["num_processes"],
        "num_machines": launcher["num_machines"],
        "machine_rank": launcher["machine_rank"],
        "main_process_ip": main_process_ip,
        "main_process_port": main_process_port,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "gpu_ids": "all",
    }
    if name in ZERO_STAGES:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["use_cpu"] = False  # accelerate runs DeepSpeed only when use_cpu is false (one process on a CPU box)
        cfg["deepspeed_config"] = deepspeed_section(launcher, trainer, ZERO_STAGES[name])
    elif name == "fsdp":
        if not layer_cls:
            raise ValueError("fsdp needs the model's transformer layer class names")
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = fsdp_section(launcher, layer_cls)
    elif name != "ddp":
        raise ValueError(f"no accelerate config for launcher '{name}'")
    return cfg


def deepspeed_section(launcher: dict[str, Any], trainer: dict[str, Any], stage: int) -> dict[str, Any]:
    """``deepspeed_config`` in accelerate's own keys (the DeepSpeed JSON is derived from it by accelerate)."""
    section: dict[str, Any] = {
        "zero_stage": stage,
        "offload_optimizer_device": launcher.get("offload_optimizer", "none"),
        "offload_param_device": launcher.get("offload_params", "none") if stage == 3 else "none",
        "gradient_accumulation_steps": trainer["grad_accum"],
        "gradient_clipping": float(trainer["max_grad_norm"] or 0.0),
        "zero3_init_flag": False,  # ranks build the model as usual; prepare() partitions it
        "deepspeed_multinode_launcher": "standard",  # one `ragr train` per machine, as with ddp
    }
    if stage == 3:
        section["zero3_save_16bit_model"] = True  # lets the final save gather full weights on rank 0
    nvme = launcher.get("nvme_path")
    if nvme:
        if section["offload_optimizer_device"] == "nvme":
            section["offload_optimizer_nvme_path"] = nvme
        if section["offload_param_device"] == "nvme":
            section["offload_param_nvme_path"] = nvme
    return section


def fsdp_section(launcher: dict[str, Any], layer_cls: list[str]) -> dict[str, Any]:
    """``fsdp_config``: wrap the model's own layer class; sharded checkpoints (the final model is saved whole)."""
    version = int(launcher.get("fsdp_version", 2))
    full = launcher.get("sharding", "full_shard") == "full_shard"
    section: dict[str, Any] = {
        "fsdp_version": version,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": ",".join(layer_cls),
        "fsdp_offload_params": launcher.get("offload_params", "none") == "cpu",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False,  # every rank loads the same weights; nothing to broadcast
        "fsdp_activation_checkpointing": False,   # trainer.gradient_checkpointing does this in the model
    }
    if version == 1:
        section.update(fsdp_sharding_strategy="FULL_SHARD" if full else "SHARD_GRAD_OP",
                       fsdp_backward_prefetch="BACKWARD_PRE", fsdp_forward_prefetch=False,
                       fsdp_use_orig_params=True, fsdp_sync_module_states=False)
    else:
        section["fsdp_reshard_after_forward"] = full
    return section


def write_config(cfg: dict[str, Any], path: Path) -> None:
    """Write ``cfg`` as YAML (what ``accelerate launch --config_file`` reads)."""
    from ragr.train.rundir import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
