"""The accelerate config each launcher writes is what accelerate itself reads: its loader, its launch-time
validation and the DeepSpeed / FSDP plugins the ranks would build from the launch environment."""

from __future__ import annotations

import importlib.util

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from ragr.config import compose_config
from ragr.errors import UserError
from ragr.launch.distributed import check_launcher, write_run_files


def run_files(tiny_bert, tmp_path, launcher, *extra, cuda=True):
    cfg = compose_config("train", [f"launcher={launcher}", f"model.name_or_path={tiny_bert}",
                                   f"output_dir={tmp_path / launcher}", *extra])
    return cfg, write_run_files(cfg, cuda=cuda)


def launch_args(acc_file, config_file):
    """What `accelerate launch --config_file ... -m ragr.launch.worker` makes of the file."""
    args = launch_command_parser().parse_args(["--config_file", str(acc_file), "--module", "ragr.launch.worker",
                                               str(config_file)])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_run_dir_gets_the_resolved_config_and_the_accelerate_config(tiny_bert, tmp_path):
    cfg, (config_file, acc_file, ip, port) = run_files(tiny_bert, tmp_path, "ddp", "launcher.num_processes=4")
    assert config_file == (tmp_path / "ddp" / "config.yaml").resolve() and acc_file.name == "accelerate_config.yaml"
    from ragr.launch.worker import load_frozen_config

    assert load_frozen_config(config_file) == cfg  # ranks read exactly what the parent composed
    loaded = load_config_from_file(str(acc_file))
    assert isinstance(loaded, ClusterConfig)
    assert loaded.distributed_type == DistributedType.MULTI_GPU and loaded.num_processes == 4
    assert (loaded.main_process_ip, loaded.main_process_port) == (ip, port) and port > 0


def test_ddp_on_cpu_is_a_multi_cpu_config(tiny_bert, tmp_path):
    _, (config_file, acc_file, _, _) = run_files(tiny_bert, tmp_path, "ddp", cuda=False)
    loaded = ClusterConfig.from_yaml_file(str(acc_file))
    assert loaded.distributed_type == DistributedType.MULTI_CPU and loaded.use_cpu and loaded.mixed_precision == "no"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_configs_build_accelerates_deepspeed_plugin(tiny_bert, tmp_path, stage):
    extra = ["trainer.precision=bf16", "trainer.grad_accum=4", "trainer.max_grad_norm=0.5",
             "launcher.offload_optimizer=cpu", "launcher.num_processes=8", "launcher.num_machines=2",
             "launcher.machine_rank=1", "launcher.main_process_ip=10.0.0.1"]
    if stage == 3:
        extra.append("launcher.offload_params=cpu")
    _, (config_file, acc_file, _, port) = run_files(tiny_bert, tmp_path, f"deepspeed-zero{stage}", *extra)
    assert acc_file.name == "accelerate_config.machine1.yaml"  # machines sharing a filesystem keep their own
    loaded = load_config_from_file(str(acc_file))
    assert loaded.distributed_type == DistributedType.DEEPSPEED and loaded.mixed_precision == "bf16"
    assert loaded.deepspeed_config["zero_stage"] == stage and port == 29500
    args, defaults = launch_args(acc_file, config_file)
    assert args.use_deepspeed and (args.num_machines, args.machine_rank, args.num_processes) == (2, 1, 8)
    assert args.deepspeed_multinode_launcher == "standard"  # one `ragr train` per machine, no ssh/pdsh
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == stage and ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == ("cpu" if stage == 3 else "none")
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)
    assert plugin.zero3_init_flag is False
    if importlib.util.find_spec("deepspeed") is not None:  # DeepSpeed's own parser, batch sizes filled as prepare() does
        from deepspeed.runtime.config import DeepSpeedConfig

        ds = {**ds, "train_micro_batch_size_per_gpu": 2, "train_batch_size": 2 * 4, "bf16": {"enabled": True}}
        parsed = DeepSpeedConfig(ds)
        assert parsed.zero_optimization_stage == stage and parsed.gradient_accumulation_steps == 4
        assert parsed.gradient_clipping == 0.5 and parsed.bfloat16_config.enabled
        assert parsed.zero_config.offload_optimizer.device == "cpu"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("sharding", ["full_shard", "shard_grad_op"])
def test_fsdp_config_wraps_the_models_own_layer_class(tiny_bert, tmp_path, version, sharding):
    _, (config_file, acc_file, _, _) = run_files(tiny_bert, tmp_path, "fsdp", f"launcher.fsdp_version={version}",
                                                 f"launcher.sharding={sharding}", "launcher.offload_params=cpu")
    loaded = load_config_from_file(str(acc_file))
    assert loaded.distributed_type == DistributedType.FSDP
    assert loaded.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"  # found from the model
    args, _ = launch_args(acc_file, config_file)
    assert args.use_fsdp and args.fsdp_transformer_layer_cls_to_wrap == "BertLayer"
    with patch_environment(**prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    assert plugin.fsdp_version == version and plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT  # checkpoints; the final model is gathered
    assert plugin.cpu_offload.__class__.__name__ in ("CPUOffload", "CPUOffloadPolicy")
    if version == 2:
        assert plugin.reshard_after_forward is (sharding == "full_shard")
    else:
        want = ShardingStrategy.FULL_SHARD if sharding == "full_shard" else ShardingStrategy.SHARD_GRAD_OP
        assert want in (plugin.sharding_strategy, plugin.reshard_after_forward)


def test_fsdp_layer_class_can_be_named(tiny_bert, tmp_path):
    _, (_, acc_file, _, _) = run_files(tiny_bert, tmp_path, "fsdp", "launcher.layer_cls=[BertLayer,BertEmbeddings]")
    assert load_config_from_file(str(acc_file)).fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer,BertEmbeddings"


@pytest.mark.parametrize("launcher, overrides, cuda, message", [
    ("ddp", {"num_processes": 3, "num_machines": 2}, True, "multiple of launcher.num_machines"),
    ("ddp", {"num_machines": 2}, True, "main_process_ip"),
    ("ddp", {"machine_rank": 2, "num_machines": 2, "main_process_ip": "h"}, True, "machine_rank=2"),
    ("ddp", {"num_processes": 4}, True, "found 2"),
    ("fsdp", {}, False, "needs CUDA"),
    ("deepspeed-zero2", {}, False, "needs CUDA GPUs for more than one process"),
    ("deepspeed-zero2", {"offload_params": "cpu"}, True, "ZeRO stage 3"),
    ("deepspeed-zero3", {"offload_params": "nvme"}, True, "nvme_path"),
    ("deepspeed-zero1", {"zero_stage": 2}, True, "contradicts"),
])
def test_impossible_launcher_settings_are_user_errors(launcher, overrides, cuda, message):
    node = {"name": launcher, "num_processes": 2, "num_machines": 1, "machine_rank": 0, **overrides}
    with pytest.raises(UserError, match=message):
        check_launcher(node, cuda=cuda, gpus=2)


def test_one_deepspeed_process_is_allowed_on_cpu():
    check_launcher({"name": "deepspeed-zero2", "num_processes": 1, "num_machines": 1, "machine_rank": 0},
                   cuda=False, gpus=0)


def test_a_finished_run_is_refused_before_its_files_are_touched(tiny_bert, tmp_path):
    run = tmp_path / "ddp"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "checkpoints" / "step-2" / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("original")
    with pytest.raises(UserError, match="trainer.resume=auto"):
        run_files(tiny_bert, tmp_path, "ddp")
    assert (run / "config.yaml").read_text() == "original"
