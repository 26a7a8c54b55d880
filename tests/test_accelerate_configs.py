"""The accelerate config files load with accelerate's own loader and launcher checks.

The CPU config is also launched for real: 2 gloo processes under ``accelerate launch``, where
DDP's averaged gradient must equal our ring all-reduce of the local gradients divided by N.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "reference_impl" / "configs" / "accelerate"
EXPECTED = {  # file: (distributed type, processes, machines, mixed precision)
    "single_gpu.yaml": (DistributedType.NO, 1, 1, "bf16"),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1, "bf16"),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1, "bf16"),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2, "bf16"),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1, "no"),
}


def _launch_args(name: str):
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, defaults, _ = _validate_launch_command(args)  # what `accelerate launch` runs first
    return args, defaults


def test_every_config_file_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    config = load_config_from_file(str(CONFIGS / name))  # rejects unknown top-level keys
    assert isinstance(config, ClusterConfig)
    kind, processes, machines, precision = EXPECTED[name]
    assert config.distributed_type == kind
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (processes, machines, precision)
    args, _ = _launch_args(name)
    assert args.num_processes == processes and args.mixed_precision == precision
    # nested fsdp_config keys are not checked by the loader: each must be a launcher option
    for key in config.fsdp_config:
        assert hasattr(args, key), f"{name}: fsdp_config key {key!r} is not an accelerate launch option"


def test_fsdp_is_zero3(monkeypatch):
    args, _ = _launch_args("fsdp.yaml")
    for key, value in prepare_multi_gpu_env(args).items():  # the env the workers would get
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FULL_SHARD: params sharded too = ZeRO-3
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    from reference_impl.distributed.fsdp import settings_from_accelerate

    assert settings_from_accelerate(plugin) == (True, 1_000_000)  # what the trainer will use


def test_multi_node_placeholders():
    args, defaults = _launch_args("multi_node.yaml")
    assert defaults.machine_rank == 0 and defaults.main_process_ip == "MAIN_NODE_IP"
    assert args.num_processes // args.num_machines == 8  # processes per node


DDP_SCRIPT = """
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from reference_impl.distributed.allreduce import ring_all_reduce

torch.set_num_threads(1)
acc = Accelerator()
assert acc.num_processes == 2 and acc.distributed_type == DistributedType.MULTI_CPU, acc.state
torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
local = torch.nn.Linear(4, 3)
local.load_state_dict(model.state_dict())
ddp = acc.prepare(model)
x = torch.randn(2, 6, 4)[acc.process_index]  # each rank its own data
acc.backward(ddp(x).square().mean())
local(x).square().mean().backward()
g = local.weight.grad.clone()
ring_all_reduce(g)
torch.testing.assert_close(ddp.module.weight.grad, g / acc.num_processes, rtol=1e-5, atol=1e-6)
print("DDP == ring all-reduce / N on rank", acc.process_index, flush=True)
"""


@pytest.mark.distributed
def test_cpu_2proc_runs_ddp_with_accelerate_launch(tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(CONFIGS / "cpu_2proc.yaml"), str(script)]
    try:
        done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"accelerate launch hung: {e.stdout}\n{e.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("DDP == ring all-reduce / N") == 2, done.stdout + done.stderr
