"""GPU speed knobs (training/perf.py) and the parallel config: safe no-ops on the CPU, SDPA
attention equal to the classic attention it replaces. FSDP: tests/test_fsdp.py."""
import dataclasses

import pytest
import torch

from reference_impl.config import ConfigError, load_config
from reference_impl.training import perf


@pytest.fixture(scope="module")
def tiny():
    from reference_impl.models.unet import build_unet

    torch.manual_seed(0)
    return build_unet("tiny", 16, cross_attention_dim=16)


def test_h100_presets_load_and_cpu_presets_keep_defaults():
    for name in ("h100", "h100x8"):
        cfg = load_config(name)
        assert cfg.train.mixed_precision == "bf16" and cfg.model.preset == "h100"
        assert cfg.perf.tf32 and cfg.perf.fused_adamw and cfg.perf.channels_last
        assert [s.resolution for s in cfg.train.curriculum] == [32, 64]
    for name in ("ci", "laptop"):
        assert load_config(name).perf == load_config(name).perf.__class__()


def test_parallel_section_is_validated():
    assert load_config("ci", ["parallel.strategy=fsdp"]).parallel.strategy == "fsdp"
    with pytest.raises(ConfigError, match="parallel.strategy='zero9'"):
        load_config("ci", ["parallel.strategy=zero9"])
    with pytest.raises(ConfigError, match="unknown key perf.fast"):
        load_config("ci", ["perf.fast=true"])


def test_cuda_only_knobs_are_no_ops_on_cpu(tiny):
    on = load_config("h100").perf
    cpu = torch.device("cpu")
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not perf.make_optimizer(params, 1e-3, 0.0, on, cpu).defaults.get("fused")
    x = torch.randn(2, 3, 8, 8)
    assert perf.to_layout(x, on, cpu).is_contiguous()  # NCHW kept
    tf32 = torch.backends.cuda.matmul.allow_tf32
    perf.set_backend_flags(on, cpu)
    assert torch.backends.cuda.matmul.allow_tf32 == tf32
    compiled = perf.prepare_model(tiny, dataclasses.replace(on, compile=True), cpu)
    assert compiled is tiny and next(tiny.parameters()).is_contiguous()


def test_sdpa_matches_classic_attention(tiny):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    g = torch.Generator().manual_seed(0)
    x, t, h = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)
    cfg = load_config("ci").perf
    perf.prepare_model(tiny, dataclasses.replace(cfg, sdpa=False), "cpu")
    assert all(isinstance(p, AttnProcessor) for p in tiny.attn_processors.values())
    with torch.no_grad():
        classic = tiny(x, t, h).sample
    perf.prepare_model(tiny, cfg, "cpu")
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny.attn_processors.values())
    with torch.no_grad():
        fused = tiny(x, t, h).sample
    torch.testing.assert_close(fused, classic, rtol=1e-4, atol=1e-5)


def test_subnormals_flush_to_zero_only_inside_training():
    """perf.flush_denormals: subnormal fp32 values read as zero inside, and as themselves after
    (torch's default); on a non-CPU device it changes nothing."""
    tiny_value = torch.tensor([1e-39])  # below fp32's smallest normal, 1.18e-38
    assert float(tiny_value * 1.0) != 0.0
    with perf.flush_denormals(torch.device("cpu")):
        assert float(tiny_value * 1.0) == 0.0
        assert float(torch.tensor([1e-30]) * 1.0) == pytest.approx(1e-30)  # normals untouched
    assert float(tiny_value * 1.0) != 0.0
    with perf.flush_denormals(torch.device("meta")):
        assert float(tiny_value * 1.0) != 0.0


def test_trainer_steps_run_with_subnormals_flushed(tmp_path):
    """Every training step of Trainer.fit computes with subnormals as zero (the loss sees it)."""
    from reference_impl.diffusion.objectives import DiffusionLoss
    from reference_impl.training.trainer import Trainer

    seen = []
    inner = DiffusionLoss()

    def loss(unet, batch, forward):
        seen.append(float(torch.tensor([1e-39]) * 1.0))
        return inner(unet, batch, forward)
    cfg = load_config("ci", [f"output_dir={tmp_path}", "train.curriculum=[{steps: 2, resolution: 16}]",
                             "train.batch_size=2", "train.validate_every=0"])
    Trainer(cfg, progress=False, loss=loss).fit()
    assert seen and set(seen) == {0.0}
    assert float(torch.tensor([1e-39]) * 1.0) != 0.0  # restored after fit
