"""The probe: a small CNN that reads every ground-truth attribute of a ShapesWorld image.

It is the evaluation's eye. Inception-v3 weights (what FID normally uses, Heusel et al. 2017,
arXiv 1706.08500) cannot be downloaded here, and an ImageNet network knows nothing of our world
anyway. So we train our own network on ShapesWorld, where the truth is known:

  * one classification head per attribute of ``vocab.ATTRIBUTES`` (kind, colour, size, count,
    background, style, unsafe): prompt accuracy and the unsafe rate are its predictions;
  * its penultimate layer (``feature_dim`` numbers) is the embedding FID is computed on, so the
    FID of this course is always called "domain-FID (probe features)".

It must also read *generated* samples, which are imperfect, so it trains on the web mix (blur,
noise, off-centre crops) at every resolution the course uses (16, 32, 64 px, all resized to
``input_size``), with many unsafe and brand images. Training is seeded and its data is a fixed
range of scenes of a dedicated world (seed 10 000), disjoint from the held-out range it reports
accuracy on. The weights are cached on disk, keyed by a hash of the config and ``VERSION``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.images import prepare_images
from ..data.shapes import WorldConfig, labels, render, sample_scene
from ..data.vocab import ATTRIBUTES
from ..paths import build_lock, cache_dir, content_hash

VERSION = "1"  # bump when the architecture or the training recipe changes


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe is built and trained. Every field is part of the cache key."""

    world_seed: int = 10_000  # a world no training run uses
    num_train: int = 18_000  # scenes [0, num_train) of that world
    heldout_start: int = 1_000_000  # held-out scenes [heldout_start, + num_heldout)
    num_heldout: int = 2_000
    resolutions: tuple[int, ...] = (16, 32, 64)  # rendered at each, in equal shares
    input_size: int = 32  # every image is resized to this before the network
    unsafe_fraction: float = 0.3
    brand_fraction: float = 0.3
    hq_fraction: float = 0.5  # the other half is blurred / noisy / off-centre
    width: int = 32  # channels of the first stage (then x2, x4)
    feature_dim: int = 64  # the FID embedding
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.heldout_start < self.num_train:
            raise ValueError(f"held-out scenes start at {self.heldout_start}, inside the "
                             f"training range [0, {self.num_train})")
        if self.input_size % 8 or self.width % 8:
            raise ValueError("input_size and width must be multiples of 8 (three stride-2 "
                             f"stages, GroupNorm(8)), got {self.input_size} and {self.width}")

    def world(self, hq_fraction: float | None = None) -> WorldConfig:
        hq = self.hq_fraction if hq_fraction is None else hq_fraction
        return WorldConfig(seed=self.world_seed, hq_fraction=hq,
                           unsafe_fraction=self.unsafe_fraction,
                           brand_fraction=self.brand_fraction)

    def key(self) -> str:
        return content_hash({"version": VERSION, **dataclasses.asdict(self)})


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: a sample's features never depend on the rest of its batch.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(8, c_out), nn.SiLU())


class Probe(nn.Module):
    """Images (B, 3, H, W) in [-1, 1], any H = W >= 8 -> features (B, D) and one head per attribute."""

    def __init__(self, cfg: ProbeConfig = ProbeConfig()):
        super().__init__()
        self.cfg, w = cfg, cfg.width
        s = cfg.input_size // 8  # three stride-2 stages
        # A flattened 4 x 4 map rather than global pooling: count and the hazard sign's corner
        # are *where* questions, which pooling would throw away.
        self.trunk = nn.Sequential(
            _block(3, w, 2), _block(w, 2 * w, 1), _block(2 * w, 2 * w, 2),
            _block(2 * w, 4 * w, 2), nn.Flatten(),
            nn.Linear(4 * w * s * s, cfg.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({a: nn.Linear(cfg.feature_dim, n) for a, n in ATTRIBUTES.items()})
        self.report: dict = {}  # held-out accuracies, filled by training / loading

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_images(images, self.cfg.input_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: prepared images (B, 3, S, S) -> features (B, D), logits {attr: (B, n_attr)}."""
        f = self.trunk(x)
        return f, {a: head(f) for a, head in self.heads.items()}

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, batch_size: int = 512):
        self.eval()
        device = next(self.parameters()).device
        for i in range(0, len(images), batch_size):
            yield self(self.prepare(images[i:i + batch_size].to(device)))

    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, feature_dim) float32 on the CPU."""
        return torch.cat([f.cpu() for f, _ in self._batched(images, batch_size)])

    def logits(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> {attribute: (B, num_classes)} on the CPU."""
        parts = [lg for _, lg in self._batched(images, batch_size)]
        return {a: torch.cat([p[a].cpu() for p in parts]) for a in ATTRIBUTES}

    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> {attribute: (B,) long class index} (count as count - 1)."""
        return {a: lg.argmax(dim=1) for a, lg in self.logits(images, batch_size).items()}


def render_dataset(cfg: ProbeConfig, start: int, size: int, resolutions, hq_fraction=None):
    """Scenes [start, start + size) of the probe's world, scene i rendered at
    ``resolutions[i % len]`` and resized to ``cfg.input_size``.

    Returns images (size, 3, S, S) float16 in [-1, 1] (half the memory) and labels
    {attr: (size,) long}.
    """
    world = cfg.world(hq_fraction)
    scenes = [sample_scene(world, start + i) for i in range(size)]
    images = torch.empty(size, 3, cfg.input_size, cfg.input_size, dtype=torch.float16)
    for r, res in enumerate(resolutions):
        idx = list(range(r, size, len(resolutions)))
        for j in range(0, len(idx), 2048):
            chunk = idx[j:j + 2048]
            img = render([scenes[i] for i in chunk], res, world.seed) * 2 - 1
            images[chunk] = prepare_images(img, cfg.input_size).half()
    targets = {a: torch.tensor([labels(s)[a] for s in scenes]) for a in ATTRIBUTES}
    return images, targets


def accuracy(probe: Probe, images: torch.Tensor, targets: dict) -> dict[str, float]:
    """Fraction of correct predictions per attribute."""
    pred = probe.predict(images.float())
    return {a: round(float((pred[a] == targets[a]).float().mean()), 4) for a in ATTRIBUTES}


def heldout_report(probe: Probe) -> dict:
    """Held-out accuracy per attribute: clean renders at each resolution, and the web mix."""
    cfg, out = probe.cfg, {}
    for res in cfg.resolutions:
        images, targets = render_dataset(cfg, cfg.heldout_start, cfg.num_heldout, (res,), 1.0)
        out[f"clean_{res}px"] = accuracy(probe, images, targets)
    images, targets = render_dataset(cfg, cfg.heldout_start, cfg.num_heldout, cfg.resolutions)
    out["web_mix"] = accuracy(probe, images, targets)
    return out


def train_probe(cfg: ProbeConfig = ProbeConfig(), progress: bool = True,
                threads: int | None = 1) -> Probe:
    """Train the probe from scratch, deterministically (seeded init, data and shuffling).

    Loss: the sum of one cross-entropy per attribute. AdamW with a one-cycle LR schedule.
    threads: torch CPU threads while training (None: leave as is). One by default: convolutions
    this small gain little from more, and on a shared machine extra threads wait on each other.
    """
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        # the probe may first be asked for inside a measurement's torch.no_grad() block
        with torch.enable_grad():
            return _train(cfg, progress)
    finally:
        torch.set_num_threads(saved)


def _train(cfg: ProbeConfig, progress: bool) -> Probe:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    probe = Probe(cfg)
    images, targets = render_dataset(cfg, 0, cfg.num_train, cfg.resolutions)
    steps_per_epoch = cfg.num_train // cfg.batch_size
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    probe.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="training the probe", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(cfg.num_train, generator=gen)
        for k in range(steps_per_epoch):
            idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            _, logits = probe(images[idx].float())
            loss = sum(F.cross_entropy(logits[a], targets[a][idx]) for a in ATTRIBUTES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    probe.eval()
    seconds = round(time.perf_counter() - t0, 1)  # rendering + training, not the held-out check
    probe.report = {"heldout_accuracy": heldout_report(probe), "train_seconds": seconds,
                    "torch_threads": torch.get_num_threads(), "config": dataclasses.asdict(cfg)}
    return probe


_LOADED: dict[tuple[str, str], Probe] = {}


def probe_path(cfg: ProbeConfig) -> Path:
    """Where the disk cache keeps the probe trained with ``cfg``."""
    return cache_dir("probe") / f"probe-{cfg.key()}.pt"


def get_probe(cfg: ProbeConfig | None = None, device: str | torch.device = "cpu",
              progress: bool = True) -> Probe:
    """The probe for ``cfg``: from this process, from the disk cache, or trained (~1 min)."""
    cfg = cfg or ProbeConfig()
    key = (cfg.key(), str(device))
    if key in _LOADED:
        return _LOADED[key]
    path = probe_path(cfg)
    with build_lock(path):  # a parallel process waits for this one's training, then loads
        probe = _load_or_train(cfg, path, progress)
    probe = probe.to(device).eval()
    for p in probe.parameters():
        p.requires_grad_(False)  # a yardstick, never trained by whoever uses it
    _LOADED[key] = probe
    return probe


def _load_or_train(cfg: ProbeConfig, path, progress: bool) -> Probe:
    probe = Probe(cfg)
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        probe.load_state_dict(blob["state_dict"])
        probe.report = json.loads(blob["report"])
    else:
        probe = train_probe(cfg, progress=progress)
        tmp = path.with_suffix(f".tmp{os.getpid()}")  # atomic: a parallel run never reads half
        torch.save({"state_dict": probe.state_dict(), "report": json.dumps(probe.report)}, tmp)
        os.replace(tmp, path)
        (path.with_suffix(".json")).write_text(json.dumps(probe.report, indent=1))
        if progress:
            for split, acc in probe.report["heldout_accuracy"].items():
                tqdm.write(f"probe held-out accuracy, {split}: "
                           + ", ".join(f"{a} {v:.3f}" for a, v in acc.items()))
    return probe
