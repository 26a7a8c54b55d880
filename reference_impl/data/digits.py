"""Real data that is always there: scikit-learn's bundled handwritten digits, as captions.

``sklearn.datasets.load_digits`` ships 1797 greyscale 8x8 images of the digits 0-9 (values
0..16) inside the scikit-learn package, so it loads offline and never disappears. We turn it
into a captioned image dataset with the same item convention as ``ShapesWorld``: images
(3, H, W) in [-1, 1] (grey replicated to RGB, so the same UNet takes both), a caption built
from a template ("a handwritten digit seven"), the row ``index`` and the ``digit`` label.

The train / held-out split is a permutation drawn from ``seed``: the same seed always gives
the same split, and the two parts never overlap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_TEMPLATE = "a handwritten digit {name}"
SPLITS = ("train", "held_out")


def load_digit_images(resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits, resized: images (N, 1, R, R) float in [-1, 1], labels (N,) long.

    Bilinear resizing with ``antialias=True``: when shrinking, the filter averages over the
    whole footprint instead of sampling (no aliasing); when growing 8 -> 32 px it is plain
    bilinear interpolation, which gives the soft strokes a diffusion model can learn.
    """
    from sklearn.datasets import load_digits

    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if resolution != images.shape[-1]:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                               align_corners=False, antialias=True)
    images = (images.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
    return images, torch.from_numpy(bunch.target).long()


def split_indices(n: int, held_out_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """A deterministic partition of range(n): {"train": (n - k,), "held_out": (k,)} indices.

    k = round(n * held_out_fraction); the permutation comes from a generator seeded by ``seed``
    so the split does not depend on the global random state. Indices are returned sorted.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    k = round(n * held_out_fraction)
    return {"train": perm[k:].sort().values, "held_out": perm[:k].sort().values}


def digit_caption(digit: int, template: str = DEFAULT_TEMPLATE) -> str:
    """Caption of a digit: ``template`` with ``{name}`` (seven) and/or ``{digit}`` (7) filled."""
    return template.format(name=DIGIT_NAMES[digit], digit=digit)


class Digits(Dataset):
    """The ``split`` part of scikit-learn's digits at ``resolution`` px, with captions.

    Item: dict(image (3, R, R) float in [-1, 1], caption str, index int (row in
    ``load_digits``, stable across splits and resolutions), digit int in 0..9).
    """

    def __init__(self, resolution: int = 32, split: str = "train", held_out_fraction: float = 0.2,
                 seed: int = 0, template: str = DEFAULT_TEMPLATE):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if "{name}" not in template and "{digit}" not in template:
            # A caption that does not name the digit cannot condition a generator on it.
            raise ValueError(f"template must contain {{name}} or {{digit}}, got {template!r}")
        images, labels = load_digit_images(resolution)
        self.rows = split_indices(len(labels), held_out_fraction, seed)[split]
        if len(self.rows) == 0:
            raise ValueError(f"split {split!r} is empty with held_out_fraction={held_out_fraction}")
        self.images, self.labels = images[self.rows], labels[self.rows]
        self.resolution, self.split, self.template = resolution, split, template

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a dataset of {len(self)}")
        digit = int(self.labels[i])
        # repeat, not expand: a real copy, so in-place augmentation cannot alias channels
        return {"image": self.images[i].repeat(3, 1, 1),
                "caption": digit_caption(digit, self.template),
                "index": int(self.rows[i]), "digit": digit}
