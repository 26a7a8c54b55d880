"""FLOP counting against hand counts, MFU arithmetic, the peak table and ThroughputMeter.

Tolerance of the FLOP checks: exact (0). FlopCounterMode and the hand counts below both count
only matmul/conv multiply-adds as 2 FLOPs; bias, ReLU and the loss are excluded by convention.
"""
import warnings

import pytest
import torch

from reference_impl.training import throughput as tp
from reference_impl.training.throughput import (
    PEAK_FLOPS,
    ThroughputMeter,
    count_flops,
    cpu_peak_flops,
    device_peak_flops,
    gpu_table_entry,
    mfu,
    module_step_flops,
    precision_key,
    training_step_flops,
)

B = 5


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_mlp_forward_is_2_in_out_batch_per_linear():
    model, x = _mlp(), torch.randn(B, 8)
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == 2 * B * (8 * 16 + 16 * 4)


def test_mlp_backward_is_twice_forward_except_the_first_input_grad():
    model, x = _mlp(), torch.randn(B, 8)  # x needs no gradient
    forward = 2 * B * (8 * 16 + 16 * 4)
    # backward: dL/dW for both layers (= forward) + dL/dinput for layer 2 only
    expected = forward + forward + 2 * B * 16 * 4
    assert module_step_flops(model, x) == expected
    assert all(p.grad is None for p in model.parameters()), "grads are cleared"
    # with an input that needs its gradient, backward is exactly 2x forward
    x.requires_grad_(True)
    assert module_step_flops(model, x) == 3 * forward


def test_trainer_style_step_fn_with_its_own_loss():
    model, x, target = _mlp(), torch.randn(B, 8), torch.randn(B, 4)

    def step():
        torch.nn.functional.mse_loss(model(x), target).backward()

    assert training_step_flops(step) == module_step_flops(model, x)


def test_conv_hand_count():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3, stride=2, padding=1)
    )
    x = torch.randn(2, 3, 10, 10)
    # 2 * batch * C_out * H_out * W_out * C_in * kh * kw per conv forward
    conv1 = 2 * 2 * 6 * 10 * 10 * 3 * 3 * 3
    conv2 = 2 * 2 * 4 * 5 * 5 * 6 * 3 * 3
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == conv1 + conv2
    # backward: weight grads of both + input grad of conv2 (conv1's input needs none)
    assert module_step_flops(model, x) == (conv1 + conv2) + conv1 + 2 * conv2


def test_optimizer_step_is_not_counted():
    model, x = _mlp(), torch.randn(B, 8)
    opt = torch.optim.AdamW(model.parameters())
    model(x).square().mean().backward()
    assert count_flops(opt.step) == 0  # elementwise only: excluded, as the module docstring says


def test_mfu_arithmetic():
    # 1e12 FLOPs per step in 0.5 s = 2e12 FLOP/s; on a 4e12 device that is 50 %
    assert mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)
    assert mfu(8e12, 0.5, 4e12, num_devices=8) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="seconds_per_step"):
        mfu(1e12, 0.0, 4e12)


def test_meter_images_per_second_data_wait_and_mfu():
    meter = ThroughputMeter(flops_per_image=1e9, peak_flops=1e12, warmup_steps=1, window=2)
    assert meter.mfu is None and meter.images_per_s == 0.0
    meter.update(images=999, seconds=100.0, data_seconds=50.0)  # warm-up: ignored
    meter.update(images=64, seconds=0.5, data_seconds=0.1)
    meter.update(images=64, seconds=0.3, data_seconds=0.0)
    assert meter.images_per_s == pytest.approx(128 / 0.8)
    assert meter.data_wait_fraction == pytest.approx(0.1 / 0.8)
    assert meter.mfu == pytest.approx(1e9 * 160 / 1e12)
    meter.update(images=32, seconds=0.2)  # window of 2: the 0.5 s step drops out
    assert meter.images_per_s == pytest.approx(96 / 0.5)
    assert set(meter.summary()) == {"images_per_s", "data_wait_fraction", "mfu"}
    with pytest.raises(ValueError, match="data_seconds"):
        meter.update(images=1, seconds=0.1, data_seconds=0.2)
    # global images over 8 devices: MFU is per device
    fleet = ThroughputMeter(flops_per_image=1e9, peak_flops=1e12, num_devices=8)
    fleet.update(images=800, seconds=1.0)
    assert fleet.mfu == pytest.approx(0.1)


@pytest.mark.parametrize(
    "name, entry",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_gpu_names_map_to_table_entries(name, entry):
    assert gpu_table_entry(name) == entry


def test_peak_table_values():
    assert PEAK_FLOPS["H100 SXM"]["bf16"] == 989e12
    assert PEAK_FLOPS["H100 SXM"]["tf32"] == 494e12 and PEAK_FLOPS["H100 SXM"]["fp32"] == 67e12
    assert PEAK_FLOPS["H200"] == PEAK_FLOPS["H100 SXM"]
    assert PEAK_FLOPS["A100"] == {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
    assert precision_key(torch.float32, tf32=True) == "tf32"
    assert precision_key(torch.float32, tf32=False) == "fp32"
    with pytest.raises(ValueError, match="dtype"):
        precision_key(torch.int8)


def test_device_peak_flops_on_cuda_uses_the_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops("cuda:0", torch.bfloat16) == 989e12
    assert device_peak_flops("cuda", torch.float32, tf32=False) == 67e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    with pytest.warns(UserWarning, match="not in the peak"):
        assert device_peak_flops("cuda", torch.bfloat16) == PEAK_FLOPS[tp.FALLBACK_GPU]["bf16"]


def test_cpu_estimate_is_cores_times_clock_times_flops_per_cycle():
    assert cpu_peak_flops(cores=4, ghz=2.5, flops_per_cycle=32) == 4 * 2.5e9 * 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = device_peak_flops("cpu", torch.float32)
    # any real CPU core: between 1 GFLOP/s (no SIMD, slow clock) and 1 TFLOP/s (AVX-512, 5 GHz)
    assert 1e9 <= auto / torch.get_num_threads() <= 1e12
    assert cpu_peak_flops(torch.float64) == pytest.approx(cpu_peak_flops(torch.float32) / 2)
