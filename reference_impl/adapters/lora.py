"""LoRA: teach a frozen diffusion model a new look by training two thin matrices per layer.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685, eq. 3:

    h = W0 x + (alpha / r) B A x,   A in R^{r x d_in}, B in R^{d_out x r}, r << min(d_in, d_out)

W0 stays frozen; only A and B train. B starts at zero, so the adapted model *is* the base model
at step 0 and training starts from what the base already knows. A Linear layer of shape
(d_out, d_in) gains r * (d_in + d_out) parameters instead of d_in * d_out.

``LoRALinear`` writes the layer out by hand (what the course teaches); the rest is plumbing on
peft + diffusers (what a user ships): ``add_lora`` injects peft layers into the attention
projections of a ``UNet2DConditionModel``, ``save_lora`` / ``load_lora`` use the standard
diffusers file (``pytorch_lora_weights.safetensors``, keys prefixed ``unet.``) that
``StableDiffusionPipeline.load_lora_weights`` also reads, and ``merge_lora`` folds B A into W0.
``train_lora`` trains an adapter with the project's ``Trainer.fit`` (``lora_run_config``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..training.finetune import finetune_config

# The attention projections of diffusers' Attention blocks (self- and cross-attention):
# what the diffusers LoRA training examples adapt.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# ... plus the ResNet blocks' 3x3 convolutions (peft adapts a Conv2d with A a k x k conv to r
# channels and B a 1x1 conv back; the "LoCon" recipe). A UNet whose full-resolution level has no
# attention (the laptop preset's DownBlock2D / UpBlock2D) can only change fine detail there
# through these convolutions.
CONV_TARGETS = ("conv1", "conv2")
TARGETS = {"attention": ATTENTION_TARGETS, "attention_conv": ATTENTION_TARGETS + CONV_TARGETS}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoRALinear(nn.Module):
    """y = W0 x + b + (alpha / r) B (A x), with W0, b frozen (Hu et al. 2021, eq. 3).

    x: (..., d_in) -> y: (..., d_out). A starts like nn.Linear's weight (Kaiming-uniform, the
    same as peft's default), B at zero.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x A^T) B^T costs r (d_in + d_out) per token; forming B A first would cost d_in d_out.
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T

    def merged_weight(self) -> torch.Tensor:
        """W0 + (alpha / r) B A, shape (d_out, d_in): the layer with no extra cost at inference."""
        return self.base.weight + self.scaling * self.B @ self.A


def _targeted(name: str, targets) -> bool:
    """peft's rule for a list of target names: the module name ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_parameter_count(model: nn.Module, rank: int, target_modules=ATTENTION_TARGETS) -> int:
    """r * (d_in + d_out) summed over the targeted Linear layers (before or after add_lora);
    a targeted Conv2d (c_in -> c_out, k x k) counts r * (c_in k k + c_out)."""
    total = 0
    for name, module in model.named_modules():
        if not _targeted(name, target_modules):
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, nn.Linear):
            total += rank * (base.in_features + base.out_features)
        elif isinstance(base, nn.Conv2d):
            kh, kw = base.kernel_size
            total += rank * (base.in_channels * kh * kw + base.out_channels)
    return total


def lora_config(rank: int, alpha: float | None = None, target_modules=ATTENTION_TARGETS,
                init_lora_weights: bool | str = True):
    """peft LoraConfig; alpha defaults to rank (scaling 1). init: True (A Kaiming, B 0) or
    "gaussian" (A ~ N(0, 1/r), B 0): both keep the adapted model equal to the base at start."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if init_lora_weights not in (True, "gaussian"):
        raise ValueError(f"init_lora_weights must be True or 'gaussian', got {init_lora_weights!r}")
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank,
                      target_modules=list(target_modules), init_lora_weights=init_lora_weights)


def trainable_stats(model: nn.Module) -> dict:
    """Parameter counts: trainable, total, their ratio, and the trainable size in MB (float32)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / total,
            "trainable_mb": size / 2**20}


def add_lora(unet: nn.Module, rank: int, alpha: float | None = None,
             target_modules=ATTENTION_TARGETS, init_lora_weights: bool | str = True,
             adapter_name: str = "default") -> dict:
    """Freeze the UNet and inject LoRA layers (peft, through diffusers' ``add_adapter``).

    Returns ``trainable_stats``: only the A and B matrices are trainable afterwards.
    """
    unet.requires_grad_(False)  # first: add_adapter then marks only the new LoRA weights trainable
    unet.add_adapter(lora_config(rank, alpha, target_modules, init_lora_weights), adapter_name)
    stats = trainable_stats(unet)
    expected = lora_parameter_count(unet, rank, target_modules)
    assert stats["trainable"] == expected, f"{stats['trainable']} trainable, formula {expected}"
    return stats


def save_lora(unet: nn.Module, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write the adapter in the diffusers format; returns the path of the .safetensors file.

    peft names (``...to_q.lora_A.weight``) -> diffusers names, prefixed ``unet.``; the LoRA
    config (rank, alpha, targets) travels as safetensors metadata so loading restores alpha.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    peft_state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    state = convert_state_dict_to_diffusers(peft_state)
    meta = unet.peft_config[adapter_name].to_dict()
    meta = {k: list(v) if isinstance(v, set) else v for k, v in meta.items()}
    StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=state,
                                              weight_name=WEIGHT_NAME,
                                              unet_lora_adapter_metadata=meta)
    return Path(directory) / WEIGHT_NAME


def load_lora(unet: nn.Module, directory: str | Path, adapter_name: str = "default") -> None:
    """Load an adapter written by ``save_lora`` (or any diffusers UNet LoRA) into a base UNet."""
    path = Path(directory) / WEIGHT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no LoRA weights at {path}")
    unet.load_lora_adapter(str(directory), weight_name=WEIGHT_NAME, prefix="unet",
                           adapter_name=adapter_name)


def adapter_size_mb(directory: str | Path) -> float:
    """Size on disk of a saved adapter, in MB (2**20 bytes)."""
    return (Path(directory) / WEIGHT_NAME).stat().st_size / 2**20


def merge_lora(unet: nn.Module) -> None:
    """Fold (alpha / r) B A into each base weight: same outputs, no extra inference cost."""
    unet.fuse_lora()


def unmerge_lora(unet: nn.Module) -> None:
    """Undo ``merge_lora``: subtract the adapter back out of the base weights."""
    unet.unfuse_lora()


def lora_run_config(cfg, output_dir, num_images: int | None = None):
    """The run config of a LoRA pass: ``cfg.lora``'s steps, LR and batch size (at most
    ``num_images``) at the final resolution (see ``training.finetune.finetune_config``)."""
    lc = cfg.lora
    return finetune_config(cfg, output_dir, f"{cfg.name}-lora", lc.steps, lc.lr, lc.batch_size,
                           num_examples=num_images)


def export_adapter(run_dir, raw_model, ema_model, cfg_dict, scheduler, resolution=None) -> Path:
    """The trainer's export for a LoRA run: the adapter file alone, in ``run_dir/adapter``.

    A LoRA run ships its adapter, not a second copy of the base model. (diffusers'
    ``save_pretrained`` of a peft-wrapped UNet also writes base keys that reload with freshly
    initialised attention weights, so a whole-model export would be wrong besides.) The raw
    adapter is exported: an EMA over a run of a few dozen steps would lag far behind it.
    """
    return save_lora(raw_model, Path(run_dir) / "adapter")


def train_lora(cfg, base: str | Path, dataset, output_dir: str | Path,
               progress: bool = True, seed: int | None = None) -> dict:
    """The LoRA pass in one call: ``fine_tune`` of ``lora_run_config`` from the EMA weights of
    ``base`` (a final/ folder), with the UNet frozen and adapters added, on ``dataset`` (brand
    images with their captions); the adapter is saved to ``output_dir/adapter``. Like every
    run it checkpoints, resumes and has the health checks. ``seed``: the torch seed the
    adapters' initial A matrices are drawn with (None: the global generator as it stands).

    Returns the numbers of the run: trainable parameters and their fraction, adapter size
    (MB), training time (s, the whole ``fit``: steps, checkpoints and export), first/last loss.
    """
    from ..training.finetune import fine_tune

    lc, stats = cfg.lora, {}

    def adapt(unet):
        if seed is not None:
            torch.manual_seed(seed)
        stats.update(add_lora(unet, lc.rank, lc.alpha, TARGETS[lc.targets]))
    t0 = time.perf_counter()
    trainer = fine_tune(lora_run_config(cfg, output_dir, len(dataset)), base, dataset,
                        adapt=adapt, export=export_adapter, progress=progress)
    seconds = time.perf_counter() - t0
    if not trainer.is_main:  # under data parallelism rank 0 alone writes the log and the adapter
        return {}
    losses = [r["loss"] for r in _read_log(Path(output_dir) / "metrics.jsonl")]
    return {"trainable_params": stats["trainable"], "total_params": stats["total"],
            "trainable_fraction": stats["fraction"],
            "adapter_mb": adapter_size_mb(Path(output_dir) / "adapter"),
            "train_seconds": seconds, "steps": trainer.step, "num_images": len(dataset),
            "loss_first": losses[0], "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            "rank": lc.rank}


def _read_log(path: Path) -> list[dict]:
    """The training records of a run's metrics.jsonl (those with a loss)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def brand_images(world, num_images: int, resolution: int):
    """The brand's look, the images a LoRA adapter learns it from: ``num_images`` scenes of
    ``world`` under another seed, every one in the brand style, sharp, rich captions, no
    hazard signs. The pipeline's lora stage and the lora experiment both train on this."""
    import dataclasses

    from ..data.shapes import ShapesWorld

    brand = dataclasses.replace(world, seed=world.seed + 7, brand_fraction=1.0,
                                caption_mix=[0.0, 0.0, 1.0], unsafe_fraction=0.0, hq_fraction=1.0)
    return ShapesWorld(brand, num_images, resolution)
