"""An exported model: a run's ``final/`` folder, written once and read by everything after it.

    final/unet/       raw weights     } diffusers ``UNet2DConditionModel.from_pretrained``
    final/unet_ema/   EMA weights     }   (their config's ``sample_size``: see below)
    final/scheduler/  the training noise schedule (``DDPMScheduler``)
    final/config.yaml the run's config

``sample_size`` in the exported UNet configs is the resolution the model was *last trained at*
(the last curriculum stage): diffusers' meaning of the field, the size a user samples at by
default. The model is built with its first stage's size (16 px on the laptop preset), which
``sample`` and ``evaluate --checkpoint`` used to draw at although training ended at 32 px.

It lives with the models, below training and sampling, because writing (the trainer) and
reading (sampling, fine-tuning, the pipeline, the CLI) both need it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import yaml


def export_final(run_dir: str | Path, unet, ema_unet, cfg_dict: dict, scheduler,
                 resolution: int | None = None) -> Path:
    """Write ``final/`` in diffusers format (atomically, like a checkpoint); returns it.

    ``resolution``: the last trained resolution, recorded as both UNets' ``sample_size``.
    """
    run_dir = Path(run_dir)
    tmp, final = run_dir / ".tmp-final", run_dir / "final"
    if tmp.exists():
        shutil.rmtree(tmp)
    for model, name in ((unet, "unet"), (ema_unet, "unet_ema")):
        if resolution is not None:
            model.register_to_config(sample_size=resolution)  # metadata only: the UNet is conv
        model.save_pretrained(tmp / name)
    scheduler.save_pretrained(tmp / "scheduler")
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_unet(final_dir: str | Path, init: str = "ema") -> torch.nn.Module:
    """The UNet of an exported ``final/`` folder: its EMA (``init='ema'``) or raw weights,
    in training mode (fine-tuning starts from it)."""
    if init not in ("ema", "raw"):
        raise ValueError(f"init must be 'ema' or 'raw', got {init!r}")
    from diffusers import UNet2DConditionModel

    folder = Path(final_dir) / ("unet_ema" if init == "ema" else "unet")
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist; pass a run's exported final/ folder")
    return UNet2DConditionModel.from_pretrained(folder).train()


def load_scheduler(final_dir: str | Path):
    """The training noise schedule of an exported ``final/`` folder (a ``DDPMScheduler``)."""
    from diffusers import DDPMScheduler

    folder = Path(final_dir) / "scheduler"
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist; pass a run's exported final/ folder")
    return DDPMScheduler.from_pretrained(folder)


def load_final(path: str | Path, ema: bool = True, device: str = "cpu"):
    """(unet, config, train scheduler, text encoder) from an exported ``final/`` folder."""
    from ..config import load_config
    from .text_encoder import TextEncoder

    path = Path(path)
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"{path} is not an exported model folder (no config.yaml); "
                                "pass a run's final/ folder")
    cfg = load_config(str(path / "config.yaml"))
    unet = load_unet(path, "ema" if ema else "raw").to(device)
    scheduler = load_scheduler(path)
    text = TextEncoder(cfg.text.encoder, cfg.text.max_length, device=device)
    return unet.eval(), cfg, scheduler, text
