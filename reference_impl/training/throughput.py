"""Throughput and Model FLOPs Utilization (MFU): how much of the chip the training step uses.

MFU (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311,
appendix B) is the FLOP/s the *model* needs at the observed throughput, divided by the device's
theoretical peak FLOP/s:

    MFU = (FLOPs per image * images/s) / (peak FLOP/s * number of devices)

FLOPs per step are *counted*, not estimated, with ``torch.utils.flop_counter.FlopCounterMode``
on one forward + backward pass. Conventions to keep in mind when reading the number:
- Only matrix multiplies, convolutions and attention are counted (a multiply-add = 2 FLOPs);
  elementwise work (bias, activations, norms, the loss) is left out, as in PaLM's count.
- The backward pass costs about 2x the forward (gradient w.r.t. inputs + w.r.t. weights).
- The optimizer step is excluded: Adam does ~10 elementwise FLOPs per parameter per step, tiny
  next to ~6 FLOPs per parameter per image of forward+backward times the batch.
- With activation checkpointing the recomputed forward is counted too: that is *hardware* FLOPs
  utilization (HFU), not MFU. Count with checkpointing off to get MFU.
Timings on CUDA must be taken after a synchronisation (``loss.item()`` does one), or they
measure kernel launches, not work.
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

TFLOP = 1e12
# Dense (no 2:4 sparsity) peak FLOP/s per GPU from NVIDIA's datasheets; fp16 = bf16 on these chips.
# "fp32" is the non-tensor-core rate, "tf32" the tensor-core rate for fp32 matmuls.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989 * TFLOP, "fp16": 989 * TFLOP, "tf32": 494 * TFLOP, "fp32": 67 * TFLOP},
    "H100 PCIe": {"bf16": 756 * TFLOP, "fp16": 756 * TFLOP, "tf32": 378 * TFLOP, "fp32": 51 * TFLOP},
    # H200 is an H100 SXM die with more, faster memory (141 GB HBM3e): same compute peaks.
    "H200": {"bf16": 989 * TFLOP, "fp16": 989 * TFLOP, "tf32": 494 * TFLOP, "fp32": 67 * TFLOP},
    # A100 SXM and PCIe share these peaks (40 and 80 GB).
    "A100": {"bf16": 312 * TFLOP, "fp16": 312 * TFLOP, "tf32": 156 * TFLOP, "fp32": 19.5 * TFLOP},
}
FALLBACK_GPU = "H100 SXM"
CPU_DEFAULT_GHZ = 3.0


def gpu_table_entry(name: str) -> str | None:
    """Map ``torch.cuda.get_device_name()`` to a key of :data:`PEAK_FLOPS` (None if unknown).

    Examples: "NVIDIA H100 80GB HBM3" (SXM) -> "H100 SXM", "NVIDIA H100 PCIe" -> "H100 PCIe",
    "NVIDIA H200" -> "H200", "NVIDIA A100-SXM4-80GB" -> "A100". NVL variants have other clocks
    and are not in the table.
    """
    upper = name.upper()
    if "NVL" in upper:
        return None
    if "H100" in upper:
        return "H100 PCIe" if "PCIE" in upper else "H100 SXM"
    if "H200" in upper:
        return "H200"
    if "A100" in upper:
        return "A100"
    return None


def precision_key(dtype: torch.dtype, tf32: bool | None = None) -> str:
    """The peak-table column for a compute dtype; fp32 matmuls use TF32 when it is enabled."""
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.float32:
        if tf32 is None:  # "high"/"medium" let cuBLAS use TF32 tensor cores for fp32 matmuls
            tf32 = torch.get_float32_matmul_precision() != "highest"
        return "tf32" if tf32 else "fp32"
    raise ValueError(f"no peak FLOP/s for dtype {dtype}; use bfloat16, float16 or float32")


def cpu_peak_flops(
    dtype: torch.dtype = torch.float32,
    cores: int | None = None,
    ghz: float | None = None,
    flops_per_cycle: int | None = None,
) -> float:
    """A rough CPU peak: ``cores * GHz * FLOPs per cycle per core``.

    Assumptions (override any of them): ``cores`` = ``torch.get_num_threads()`` (capped by
    ``os.cpu_count()``; hyper-threads share one core's FMA units, so logical cores overcount);
    ``ghz`` = the clock in /proc/cpuinfo, else 3.0 GHz (turbo clocks differ); ``flops_per_cycle``
    for fp32 = 2 FMA units x SIMD lanes x 2 FLOPs: 64 with AVX-512, 32 with AVX2+FMA, 8 without.
    bf16/fp16 are taken at the fp32 rate (CPU kernels mostly convert); fp64 at half.
    """
    cores = cores or min(torch.get_num_threads(), os.cpu_count() or 1)
    ghz = ghz or _cpuinfo_ghz() or CPU_DEFAULT_GHZ
    if flops_per_cycle is None:
        flags = _cpuinfo_flags()
        flops_per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
        if dtype == torch.float64:
            flops_per_cycle //= 2
    if cores < 1 or ghz <= 0 or flops_per_cycle < 1:
        raise ValueError(f"bad CPU description: cores={cores}, ghz={ghz}, flops/cycle={flops_per_cycle}")
    return cores * ghz * 1e9 * flops_per_cycle


def device_peak_flops(
    device: torch.device | str, dtype: torch.dtype = torch.bfloat16, tf32: bool | None = None
) -> float:
    """Peak FLOP/s of one device for matmuls in ``dtype`` (dense, datasheet values).

    CUDA: looked up by ``torch.cuda.get_device_name``; an unknown GPU warns and falls back to
    the H100 SXM entry, so its MFU reads "relative to an H100". CPU: :func:`cpu_peak_flops`.
    Other device types warn and use the CPU estimate.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = gpu_table_entry(name)
        if entry is None:
            warnings.warn(
                f"GPU {name!r} is not in the peak-FLOP/s table; MFU is computed against the "
                f"{FALLBACK_GPU} peak. Pass peak_flops explicitly for a true figure.",
                stacklevel=2,
            )
            entry = FALLBACK_GPU
        return PEAK_FLOPS[entry][precision_key(dtype, tf32)]
    if device.type != "cpu":
        warnings.warn(f"no peak table for device type {device.type!r}; using a CPU estimate", stacklevel=2)
    return cpu_peak_flops(dtype)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (matmul/conv/attention, multiply-add = 2) executed while calling ``fn()`` once."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def training_step_flops(step_fn: Callable[[], Any]) -> int:
    """FLOPs of one training step: ``step_fn()`` must run forward *and* backward, no optimizer.

    Lets the trainer pass its own loss (noise sampling, conditioning, weighting). Gradients it
    leaves behind are the caller's to clear.
    """
    return count_flops(step_fn)


def module_step_flops(
    model: torch.nn.Module, *inputs: torch.Tensor, loss_fn: Callable[[Any], torch.Tensor] | None = None
) -> int:
    """FLOPs of forward + backward of ``model(*inputs)``; grads are cleared afterwards.

    ``loss_fn(output) -> scalar`` defaults to the mean of squares (its cost is not counted).
    """
    loss_fn = loss_fn or (lambda out: out.float().square().mean())

    def step() -> None:
        loss_fn(model(*inputs)).backward()

    flops = training_step_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilization: achieved FLOP/s over the peak of all devices that did the work."""
    if seconds_per_step <= 0 or peak_flops <= 0 or num_devices < 1:
        raise ValueError(
            f"need seconds_per_step > 0, peak_flops > 0, num_devices >= 1; got "
            f"{seconds_per_step}, {peak_flops}, {num_devices}"
        )
    return flops_per_step / seconds_per_step / (peak_flops * num_devices)


class ThroughputMeter:
    """Images/s, data-wait fraction and MFU over recent training steps.

    Each step call ``update(images, seconds, data_seconds)`` where ``seconds`` is the whole
    step's wall time (data wait included) and ``data_seconds`` the part spent waiting for the
    data loader. If ``images`` counts all ranks' images, pass ``num_devices`` = world size.
    ``warmup_steps`` first updates are ignored (compilation, cuDNN autotuning); ``window`` keeps
    only the last steps (None: all).
    """

    def __init__(
        self,
        flops_per_image: float | None = None,
        peak_flops: float | None = None,
        num_devices: int = 1,
        window: int | None = None,
        warmup_steps: int = 0,
    ):
        if num_devices < 1 or warmup_steps < 0 or (window is not None and window < 1):
            raise ValueError(f"bad meter settings: num_devices={num_devices}, window={window}, warmup={warmup_steps}")
        self.flops_per_image, self.peak_flops = flops_per_image, peak_flops
        self.num_devices, self.warmup_steps = num_devices, warmup_steps
        self.steps: deque[tuple[int, float, float]] = deque(maxlen=window)
        self.seen = 0

    def update(self, images: int, seconds: float, data_seconds: float = 0.0) -> None:
        if images < 0 or seconds <= 0 or not 0 <= data_seconds <= seconds:
            raise ValueError(
                f"need images >= 0, seconds > 0, 0 <= data_seconds <= seconds; got {images}, {seconds}, {data_seconds}"
            )
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.steps.append((images, seconds, data_seconds))

    def reset(self) -> None:
        self.steps.clear()

    @property
    def images_per_s(self) -> float:
        seconds = sum(s for _, s, _ in self.steps)
        return sum(i for i, _, _ in self.steps) / seconds if seconds else 0.0

    @property
    def data_wait_fraction(self) -> float:
        """Share of wall time spent waiting for data: near 0 when the GPU is the bottleneck."""
        seconds = sum(s for _, s, _ in self.steps)
        return sum(d for _, _, d in self.steps) / seconds if seconds else 0.0

    @property
    def mfu(self) -> float | None:
        """None until flops_per_image and peak_flops are known and a step was measured."""
        if not self.flops_per_image or not self.peak_flops or not self.steps:
            return None
        return self.flops_per_image * self.images_per_s / (self.peak_flops * self.num_devices)

    def summary(self) -> dict[str, float | None]:
        """For the JSONL log: ``{"images_per_s", "data_wait_fraction", "mfu"}``."""
        return {"images_per_s": self.images_per_s, "data_wait_fraction": self.data_wait_fraction, "mfu": self.mfu}


def _cpuinfo_text() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.exists() else ""


def _cpuinfo_flags() -> set[str]:
    for line in _cpuinfo_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo_ghz() -> float | None:
    for line in _cpuinfo_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1000
    return None
