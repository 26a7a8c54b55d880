"""ShapesWorld: a procedural "web" of captioned images whose ground truth is known.

Scene ``i`` of world seed ``s`` is drawn from its own random generator, seeded by ``(s, i)``,
so it is always the same scene, whichever process, worker or resolution asks for it. A scene
is resolution-independent (continuous coordinates); ``render`` draws it at any size.

The knobs reproduce the problems of web-scale data that the course teaches to fix:
  class_probs      class imbalance over shape kinds (the 90% cats / 10% dogs question)
  caption_mix      filename / poor alt-text / rich caption (auto-captioning)
  hq_fraction      share of sharp, clean, centred images; the rest are blurred, noisy or
                   off-centre ("1 billion blurry, 1 million 4K")
  brightness_probs dark / grey / light backgrounds (what noise offset fixes)
  unsafe_fraction  images carrying the hazard sign (the safety filter)
  brand_fraction   images in the "brand look" (LoRA)
  aesthetic_label_noise  the aesthetic label is the true score plus this much noise
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from . import captions as cap
from .render import render_arrays
from .vocab import (
    BACKGROUND_LEVEL,
    BRAND_OUTLINE,
    BRAND_PASTEL,
    BRAND_STROKE,
    COLOURS,
    KINDS,
    RGB,
    SIZE_RADIUS,
)

# Layout of 1, 2 or 3 shapes (centres before jitter), in image sides.
LAYOUTS = {
    1: ((0.5, 0.5),),
    2: ((0.28, 0.5), (0.72, 0.5)),
    3: ((0.5, 0.27), (0.26, 0.71), (0.74, 0.71)),
}
BLUR_RANGE = (0.012, 0.04)  # Gaussian sigma, image sides: resolution-independent blur
NOISE_RANGE = (0.04, 0.15)  # pixel noise std on the [0, 1] scale
OFFSET_RANGE = (0.15, 0.3)  # off-centre shift of the whole composition, image sides


@dataclass
class WorldConfig:
    """The knobs of a ShapesWorld. All probabilities are validated by ``config.py``."""

    seed: int = 0
    class_probs: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    caption_mix: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    hq_fraction: float = 0.5
    brightness_probs: list[float] = field(default_factory=lambda: [1 / 3, 1 / 3, 1 / 3])
    unsafe_fraction: float = 0.05
    brand_fraction: float = 0.1
    aesthetic_label_noise: float = 0.0


def _cumulative(p, n: int, name: str) -> list[float]:
    """Normalised cumulative weights, for drawing a category from one uniform number."""
    return _cumulative_cached(tuple(float(x) for x in p), n, name)


@functools.lru_cache(maxsize=64)
def _cumulative_cached(a: tuple, n: int, name: str) -> list[float]:
    assert len(a) == n and min(a) >= 0 and sum(a) > 0, f"{name} must be {n} weights >= 0"
    total, acc, out = sum(a), 0.0, []
    for x in a:
        acc += x / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _pick(cumulative: list[float], u: float) -> int:
    return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)


def sample_scene(world: WorldConfig, index: int) -> dict:
    """Draw scene ``index`` of ``world``: a dict of attributes, geometry and captions.

    One generator per scene, seeded by (world seed, index), and one vector of uniforms read
    in a fixed order: fast (tens of thousands of scenes per second) and reproducible.
    """
    rng = np.random.default_rng([world.seed, index])
    u = rng.random(24).tolist()
    kind = _pick(_cumulative(world.class_probs, len(KINDS), "class_probs"), u[0])
    colour = min(int(u[1] * len(COLOURS)), len(COLOURS) - 1)
    size = int(u[2] < 0.5)
    count = 1 + min(int(u[3] * 3), 2)
    bg = _pick(_cumulative(world.brightness_probs, 3, "brightness_probs"), u[4])
    lo, hi = BACKGROUND_LEVEL[bg]
    level = lo + (hi - lo) * u[5]
    style = int(u[6] < world.brand_fraction)
    unsafe = bool(u[7] < world.unsafe_fraction)
    r_lo, r_hi = SIZE_RADIUS[size]
    radius = [r_lo + (r_hi - r_lo) * x for x in u[8:8 + count]]
    centres = [[cx + 0.1 * (u[11 + 2 * j] - 0.5), cy + 0.1 * (u[12 + 2 * j] - 0.5)]
               for j, (cx, cy) in enumerate(LAYOUTS[count])]

    blur = noise = offset = 0.0
    if u[17] >= world.hq_fraction:  # a low-quality web image: at least one defect
        defects = [u[18] < 0.5, u[19] < 0.5, u[20] < 0.5]
        if not any(defects):
            defects[min(int(u[18] * 6), 2)] = True  # u[18] >= 0.5 here: reuse it
        blur = BLUR_RANGE[0] + (BLUR_RANGE[1] - BLUR_RANGE[0]) * u[21] if defects[0] else 0.0
        noise = NOISE_RANGE[0] + (NOISE_RANGE[1] - NOISE_RANGE[0]) * u[22] if defects[1] else 0.0
        if defects[2]:
            offset = OFFSET_RANGE[0] + (OFFSET_RANGE[1] - OFFSET_RANGE[0]) * u[23]
            angle = 2 * math.pi * u[16]
            centres = [[x + offset * math.cos(angle), y + offset * math.sin(angle)]
                       for x, y in centres]

    scene = dict(index=index, kind=kind, colour=colour, size=size, count=count, background=bg,
                 level=level, style=style, unsafe=unsafe, radius=radius, centres=centres,
                 blur=blur, noise=noise, offset=offset)
    scene["aesthetic"] = aesthetic_score(scene)
    scene["aesthetic_label"] = scene["aesthetic"]
    if world.aesthetic_label_noise > 0:
        scene["aesthetic_label"] += world.aesthetic_label_noise * float(rng.standard_normal())
    quality = _pick(_cumulative(world.caption_mix, 3, "caption_mix"), u[15])
    scene["captions"] = (cap.filename_caption(rng), cap.alt_caption(scene, rng),
                         cap.rich_caption(scene))
    scene["caption_quality"] = cap.QUALITIES[quality]
    scene["caption"] = scene["captions"][quality]
    return scene


def aesthetic_score(scene: dict) -> float:
    """The programmatic aesthetic score in [0, 10]: sharp, clean, centred, contrasting.

    Weights: sharpness 0.35, cleanliness 0.2, centring 0.25, contrast 0.2.
    """
    sharp = 1.0 - scene["blur"] / BLUR_RANGE[1]
    clean = 1.0 - scene["noise"] / NOISE_RANGE[1]
    centred = 1.0 - scene["offset"] / OFFSET_RANGE[1]
    r, g, b = RGB[COLOURS[scene["colour"]]]
    contrast = min(1.0, abs(0.299 * r + 0.587 * g + 0.114 * b - scene["level"]) / 0.6)
    return 10.0 * (0.35 * sharp + 0.2 * clean + 0.25 * centred + 0.2 * contrast)


def scene_arrays(scenes: list[dict], resolution: int, world_seed: int = 0) -> dict:
    """Pack scenes into the batched arrays ``render.render_arrays`` draws (see its docstring)."""
    b = len(scenes)
    centre, radius = np.zeros((b, 3, 2), np.float32), np.zeros((b, 3), np.float32)
    active = np.zeros((b, 3), bool)
    fill, outline = np.zeros((b, 3), np.float32), np.zeros((b, 3), np.float32)
    stroke = np.zeros(b, np.float32)
    noise = None
    for i, s in enumerate(scenes):
        n = s["count"]
        centre[i, :n], radius[i, :n], active[i, :n] = s["centres"], s["radius"], True
        rgb = RGB[COLOURS[s["colour"]]]
        if s["style"]:
            fill[i] = [c * (1 - BRAND_PASTEL) + BRAND_PASTEL for c in rgb]
            outline[i], stroke[i] = BRAND_OUTLINE, BRAND_STROKE
        else:
            fill[i] = outline[i] = rgb
        if s["noise"] > 0:  # pixel noise: its own generator, per scene and resolution
            if noise is None:
                noise = np.zeros((b, 3, resolution, resolution), np.float32)
            g = np.random.default_rng([world_seed, s["index"], 7919, resolution])
            noise[i] = g.standard_normal((3, resolution, resolution)) * s["noise"]
    level = np.array([s["level"] for s in scenes], np.float32)
    return dict(centre=torch.from_numpy(centre), radius=torch.from_numpy(radius),
                active=torch.from_numpy(active),
                kind=torch.tensor([s["kind"] for s in scenes], dtype=torch.long),
                fill=torch.from_numpy(fill), outline=torch.from_numpy(outline),
                stroke=torch.from_numpy(stroke),
                background=torch.from_numpy(level).view(b, 1).expand(b, 3),
                unsafe=torch.tensor([bool(s["unsafe"]) for s in scenes]),
                blur=torch.tensor([s["blur"] for s in scenes], dtype=torch.float32),
                noise=None if noise is None else torch.from_numpy(noise))


def render(scenes: list[dict], resolution: int, world_seed: int = 0) -> torch.Tensor:
    """Render scenes to images in [0, 1], shape (B, 3, resolution, resolution)."""
    return render_arrays(scene_arrays(scenes, resolution, world_seed), resolution)


def make_scene(kind: str, colour: str, background: str, count: int = 1, size: str = "large",
               brand: bool = False, unsafe: bool = False, index: int = 0) -> dict:
    """A clean, centred scene from attribute names: the ground-truth render of a prompt."""
    from .vocab import BACKGROUNDS, SIZES

    bg = BACKGROUNDS.index(background)
    sz = SIZES.index(size)
    s = dict(index=index, kind=KINDS.index(kind), colour=COLOURS.index(colour), size=sz,
             count=count, background=bg, level=float(np.mean(BACKGROUND_LEVEL[bg])),
             style=int(brand), unsafe=unsafe, radius=np.full(count, np.mean(SIZE_RADIUS[sz])),
             centres=np.asarray(LAYOUTS[count], dtype=np.float64), blur=0.0, noise=0.0,
             offset=0.0)
    s["aesthetic"] = s["aesthetic_label"] = aesthetic_score(s)
    s["captions"] = ("", "", cap.rich_caption(s))
    s["caption"], s["caption_quality"] = s["captions"][2], "rich"
    return s


LABEL_KEYS = ("kind", "colour", "size", "count", "background", "style", "unsafe")


def labels(scene: dict) -> dict[str, int]:
    """The probe's targets for a scene, as class indices (count is stored as count - 1)."""
    out = {k: int(scene[k]) for k in LABEL_KEYS}
    out["count"] -= 1
    return out


class ShapesWorld(Dataset):
    """``size`` scenes of a world, starting at scene ``start``, rendered at ``resolution``.

    Item: dict(image (3, H, W) float in [-1, 1], caption str, index, the label ints of
    ``LABEL_KEYS``, aesthetic / aesthetic_label floats, brightness float).
    Batched fetching (``__getitems__``) renders a whole batch at once, which DataLoader uses.
    """

    def __init__(self, world: WorldConfig, size: int, resolution: int = 32, start: int = 0,
                 caption_override: dict[int, str] | None = None):
        assert size > 0 and resolution >= 8, "need size > 0 and resolution >= 8"
        self.world, self.size, self.resolution, self.start = world, size, resolution, start
        self.caption_override = caption_override or {}  # e.g. auto-captions by scene index

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(f"scene {i} out of range for a dataset of {self.size}")
        return sample_scene(self.world, self.start + i)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        scenes = [self.scene(int(i)) for i in indices]
        images = render(scenes, self.resolution, self.world.seed) * 2 - 1
        return [self._item(s, img) for s, img in zip(scenes, images)]

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def _item(self, s: dict, image: torch.Tensor) -> dict:
        item = dict(image=image, index=s["index"],
                    caption=self.caption_override.get(s["index"], s["caption"]),
                    aesthetic=float(s["aesthetic"]), aesthetic_label=float(s["aesthetic_label"]),
                    brightness=float(s["level"]))
        item.update(labels(s))
        return item
