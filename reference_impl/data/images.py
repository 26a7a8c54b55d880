"""The input gate of every frozen image network here (the evaluation probe, the auto-captioner).

It lives in data/ because both sides use it: curation (the captioner) and evaluation (the probe)
sit in the same layer and may not import each other (tests/test_import_layers.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Check and resize: (B, 3, H, W) in [-1, 1] -> (B, 3, size, size) float32.

    The input gate of every frozen image network here (the probe, the auto-captioner).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.5 or hi > 1.5:  # slack for unclamped samples; 0..1 or 0..255 data is a bug
        raise ValueError(f"expected images in [-1, 1], got values in [{lo:.2f}, {hi:.2f}]"
                         " (rescale 0..255 images with x / 127.5 - 1, 0..1 images with 2x - 1)")
    x = images.float().clamp(-1, 1)
    if x.shape[-2:] != (size, size):
        # antialias: downsizing 64 -> 32 averages pixels instead of skipping them
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x
