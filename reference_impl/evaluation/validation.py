"""The validation hook a trainer calls every few hundred steps: same prompts, same seed, always.

``Validator.run(sample_fn, step)`` asks the model (through ``sample_fn``) for one image per
validation prompt, always with the same seed, so a change in the numbers is a change in the
model, not in the luck of the draw. It returns domain-FID against a fixed set of real images of
the same prompts (with its sample counts), prompt accuracy and brightness statistics, and saves
a grid of the samples a person can look at.

The prompts are rich captions ("one large red circle on a dark background"), balanced over
kinds, colours and backgrounds: prompt i asks for kind i mod 4 and background i mod 3 (all 12
pairs every 12 prompts, by the Chinese remainder theorem) and colour (i + i // 12) mod 6, so 72
prompts are every (kind, colour, background) combination exactly once.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.captions import parse_caption, prompt
from ..data.shapes import LAYOUTS, make_scene, render
from ..data.vocab import (
    BACKGROUND_LEVEL,
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    KINDS,
    SIZE_RADIUS,
    SIZES,
)
from .fid import NAME, FeatureStats, fid
from .metrics import brightness_stats, prompt_accuracy

SampleFn = Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> (B, 3, H, W) in [-1, 1]


def validation_prompts(n: int) -> list[str]:
    """n balanced rich prompts (see the module docstring); they repeat after 72."""
    out = []
    for i in range(n):
        kind, bg, colour = KINDS[i % 4], BACKGROUNDS[i % 3], COLOURS[(i + i // 12) % 6]
        out.append(prompt(kind, colour, bg))
    return out


def real_scene(caption: str, rng: np.random.Generator, index: int = 0) -> dict:
    """A clean scene that fits ``caption``, drawn as ShapesWorld draws its scenes: attributes
    the caption does not name are random, and radius, position jitter and background level vary
    within the world's ranges (so the real images of a prompt are a distribution, not one
    picture)."""
    asked = parse_caption(caption)

    def pick(key: str, vocab) -> str:  # the word the caption names, else a random one
        return vocab[asked[key] if key in asked else int(rng.integers(len(vocab)))]

    count = asked.get("count", 1 + int(rng.integers(len(COUNT_WORDS))))
    s = make_scene(pick("kind", KINDS), pick("colour", COLOURS), pick("background", BACKGROUNDS),
                   count=count, size=pick("size", SIZES), brand=bool(asked.get("style", 0)),
                   unsafe=bool(asked.get("unsafe", 0)), index=index)
    lo, hi = SIZE_RADIUS[s["size"]]
    s["radius"] = rng.uniform(lo, hi, size=count)
    s["centres"] = np.asarray(LAYOUTS[count]) + 0.1 * (rng.random((count, 2)) - 0.5)
    lo, hi = BACKGROUND_LEVEL[s["background"]]
    s["level"] = float(rng.uniform(lo, hi))
    return s


def real_images(captions: list[str], n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """n real images of the captions (cycled), (n, 3, R, R) in [-1, 1]. Deterministic in seed."""
    rng = np.random.default_rng(seed)
    scenes = [real_scene(captions[i % len(captions)], rng, i) for i in range(n)]
    return render(scenes, resolution) * 2 - 1


class Validator:
    """Fixed prompts, fixed reference statistics, fixed seed: comparable numbers step to step.

    probe: the evaluation probe (``probe.get_probe()``); resolution: the model's final image
    side. ``num_reference`` real images of the prompts, rendered at that resolution, give the
    FID reference statistics, computed once here and reused by every ``run``. Samples of
    another size (an early, low-resolution stage of a curriculum) are measured against the same
    reference - the probe resizes everything to its input size - so one FID curve spans the
    whole run, and the low-resolution stages pay for their missing detail.
    """

    def __init__(self, probe, resolution: int, num_prompts: int = 72, seed: int = 0,
                 num_reference: int = 720):
        if num_prompts < 1 or num_reference < 2:
            raise ValueError(f"the validator needs >= 1 prompt and >= 2 reference images, got "
                             f"{num_prompts} and {num_reference}")
        self.probe, self.resolution, self.seed = probe, resolution, seed
        self.prompts = validation_prompts(num_prompts)
        self.reference_images = real_images(self.prompts, num_reference, resolution, seed)
        self.reference_features = probe.features(self.reference_images)
        self.reference_stats = FeatureStats.of(self.reference_features)
        self.reference_brightness = brightness_stats(self.reference_images)

    def measure(self, images: torch.Tensor) -> dict:
        """The validation numbers of images made from ``self.prompts``, as a flat dict.

        Keys: fid (None below 2 samples), fid_n, fid_n_reference, fid_name, prompt_acc (all
        attributes correct), prompt_acc/<attr>, brightness/<stat>. The trainer prefixes them
        ('val/' for the EMA model, 'val_raw/' for the raw weights).
        """
        if images.ndim != 4 or images.shape[:2] != (len(self.prompts), 3):
            raise ValueError(f"sample_fn must return ({len(self.prompts)}, 3, H, W) images for "
                             f"{len(self.prompts)} prompts, got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("sample_fn returned NaN or inf pixels")
        images = images.detach().float().cpu().clamp(-1, 1)
        fid_value = None
        if len(images) >= 2:  # a covariance needs two samples
            fid_value = fid(self.probe.features(images), self.reference_stats).value
        acc = prompt_accuracy(self.probe.predict(images), self.prompts)
        bright = brightness_stats(images)
        out = {"fid": fid_value, "fid_n": len(images), "fid_n_reference": self.reference_stats.n,
               "fid_name": NAME, "prompt_acc": acc["all_correct"]}
        out.update({f"prompt_acc/{a}": v for a, v in acc.items() if a not in ("all_correct", "n")})
        out.update({f"brightness/{k}": v for k, v in bright.items() if k != "histogram"})
        return out

    def run(self, sample_fn: SampleFn, step: int, out_dir: str | Path | None = None) -> dict:
        """Sample the prompts with the fixed seed, measure, save a grid. Returns {'step', ...}."""
        with torch.no_grad():
            images = sample_fn(list(self.prompts), self.seed)
        out = {"step": int(step), **self.measure(images)}
        if out_dir is not None:
            out["grid"] = str(save_grid(images, Path(out_dir) / f"val_{step:07d}.png"))
        return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 12) -> Path:
    """Images (B, 3, H, W) in [-1, 1] -> one PNG grid at ``path`` (folders created)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)
    return path
