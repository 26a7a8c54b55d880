"""The safety filter: find the hazard sign, drop it from training data, block it at the output.

Production text-to-image systems filter twice: the training set (LAION-5B shipped NSFW and
watermark scores from CLIP-embedding classifiers, Schuhmann et al. 2022, arXiv 2210.08402) and
the generated images (Stable Diffusion's safety checker compares CLIP embeddings of each output
with embeddings of unsafe concepts). Both are a classifier on frozen image embeddings.

Here the unsafe concept is ShapesWorld's hazard sign (a magenta X in the top-right corner) and
the classifier is logistic regression on ``AutoCaptioner.features``. A missed unsafe image is
worse than a dropped safe one, so the decision threshold is chosen on a validation split for a
target *recall* (default: every unsafe validation image), not at 0.5; precision pays.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import WorldConfig
from ..paths import build_lock, cache_dir, content_hash
from .captioner import AutoCaptioner, render_world


@dataclass(frozen=True)
class SafetyConfig:
    """Training / validation data of the filter: the captioner's world, its own index range."""

    world_seed: int = 20_000
    start: int = 200_000  # disjoint from the captioner's and the aesthetic head's scenes
    num_train: int = 4_000
    num_val: int = 2_000
    unsafe_fraction: float = 0.3  # generous: enough positives to learn and to set a threshold
    # 1.0: the threshold is the lowest score of any unsafe validation image, so every one is
    # caught; with ~600 positives held-out recall is then ~1 - 1/600 (measured 1.0, n=2000).
    target_recall: float = 1.0
    steps: int = 400
    lr: float = 1e-2
    seed: int = 0

    def hash(self, captioner: AutoCaptioner) -> str:
        return content_hash([dataclasses.asdict(self), captioner.cfg.hash()])


def threshold_for_recall(scores: torch.Tensor, unsafe: torch.Tensor, recall: float) -> float:
    """The highest threshold t such that flagging ``scores >= t`` catches >= recall of the
    unsafe items. scores (N,) float, unsafe (N,) bool with at least one True."""
    pos = torch.sort(scores[unsafe]).values
    if len(pos) == 0:
        raise ValueError("the validation split has no unsafe items: raise unsafe_fraction")
    # Missing at most floor((1 - recall) * P) positives: keep the lowest-scored one we need.
    allowed_misses = int((1 - recall) * len(pos) + 1e-9)
    return float(pos[allowed_misses])


class SafetyFilter:
    """Images (B, 3, H, W) in [-1, 1] -> unsafe probability (B,) and a blocking decision."""

    def __init__(self, captioner: AutoCaptioner, head: nn.Linear, threshold: float):
        self.captioner, self.head, self.threshold = captioner, head.eval(), threshold

    def prob(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.head(self.captioner.features(images)).squeeze(-1))

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) bool: True where the image must be dropped or blocked."""
        return self.prob(images) >= self.threshold

    @classmethod
    def load_or_train(cls, captioner: AutoCaptioner, cfg: SafetyConfig | None = None):
        cfg = cfg or SafetyConfig()
        path = cache_dir("safety") / f"{cfg.hash(captioner)}.pt"
        head = nn.Linear(captioner.cfg.feature_dim, 1)
        with build_lock(path):  # a parallel process waits, then loads what this one trained
            if path.exists():
                state = torch.load(path, map_location="cpu", weights_only=True)
                head.load_state_dict(state["head"])
                return cls(captioner, head, float(state["threshold"]))
            filt = train_safety_filter(captioner, cfg)
            tmp = path.with_suffix(".tmp")
            torch.save({"head": filt.head.state_dict(), "threshold": filt.threshold}, tmp)
            tmp.replace(path)
            return filt

    def check_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Output-side check of generated images: (mask_blocked (B,) bool, stats)."""
        blocked = self.flag(images)
        return blocked, {"n": len(images), "blocked": int(blocked.sum()),
                         "block_rate": float(blocked.float().mean()) if len(images) else 0.0}


def train_safety_filter(captioner: AutoCaptioner, cfg: SafetyConfig) -> SafetyFilter:
    """Logistic regression on frozen features; threshold set on the validation split."""
    torch.manual_seed(cfg.seed)
    world = dataclasses.replace(captioner.cfg.world(), seed=cfg.world_seed,
                                unsafe_fraction=cfg.unsafe_fraction)
    scenes, images = render_world(world, cfg.start, cfg.num_train + cfg.num_val,
                                  captioner.cfg.resolutions, captioner.cfg.resolution)
    f = captioner.features(images)
    y = torch.tensor([float(s["unsafe"]) for s in scenes])
    n = cfg.num_train
    f_tr, y_tr, f_val, y_val = f[:n], y[:n], f[n:], y[n:]
    head = nn.Linear(f.shape[1], 1)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):  # full batch: a convex problem on a few thousand rows
        loss = F.binary_cross_entropy_with_logits(head(f_tr).squeeze(-1), y_tr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        val_prob = torch.sigmoid(head(f_val).squeeze(-1))
    threshold = threshold_for_recall(val_prob, y_val.bool(), cfg.target_recall)
    return SafetyFilter(captioner, head, threshold)


def precision_recall(flagged: torch.Tensor, unsafe: torch.Tensor) -> dict:
    """Precision and recall of bool flags (N,) against the truth (N,), with the counts."""
    tp = int((flagged & unsafe).sum())
    fp, fn = int((flagged & ~unsafe).sum()), int((~flagged & unsafe).sum())
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "tp": tp, "fp": fp, "fn": fn, "n": len(flagged), "n_unsafe": int(unsafe.sum())}


def evaluate_on_world(filt: SafetyFilter, world: WorldConfig, start: int, n: int,
                      resolution: int = 32) -> dict:
    """Precision / recall of the filter on scenes [start, start + n) of ``world`` at a size."""
    scenes, images = render_world(world, start, n, resolution, filt.captioner.cfg.resolution)
    return precision_recall(filt.flag(images), torch.tensor([bool(s["unsafe"]) for s in scenes]))


def filter_dataset(dataset, filt: SafetyFilter, batch_size: int = 512) -> tuple[list[int], dict]:
    """Drop flagged items of a ShapesWorld-like dataset before training.

    Returns (kept dataset positions, counts dict(total, dropped, kept)); use the positions with
    ``torch.utils.data.Subset``.
    """
    kept: list[int] = []
    for i in range(0, len(dataset), batch_size):
        pos = list(range(i, min(i + batch_size, len(dataset))))
        items = dataset.__getitems__(pos)
        flags = filt.flag(torch.stack([it["image"] for it in items]))
        kept.extend(p for p, f in zip(pos, flags.tolist()) if not f)
    return kept, {"total": len(dataset), "dropped": len(dataset) - len(kept), "kept": len(kept)}


def check_outputs(images: torch.Tensor, filt: SafetyFilter) -> tuple[torch.Tensor, dict]:
    """Block unsafe generated images: (mask_blocked (B,) bool, stats); see SafetyFilter."""
    return filt.check_outputs(images)
