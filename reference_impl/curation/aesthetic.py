"""The aesthetic scorer: a small MLP on frozen image embeddings, then keep the best images.

LAION-5B (Schuhmann et al. 2022, arXiv 2210.08402) filtered its "LAION-Aesthetics" subsets with
the LAION aesthetic predictor (github.com/christophschuhmann/improved-aesthetic-predictor):
an MLP on frozen CLIP ViT-L/14 embeddings, regressing mean human ratings (1-10) with MSE.
Stable Diffusion's later training stages used only images it scored highly.

Here the frozen embedding is ``AutoCaptioner.features`` and the "human ratings" are ShapesWorld's
*noisy* ``aesthetic_label`` (true score + Gaussian noise), as real ratings are noisy. We report
Spearman's rank correlation with the *true* score on held-out web images: ranking is what
curation uses (keep the top k), so a monotone error costs nothing.
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
class AestheticConfig:
    """Training data and schedule of the head; the captioner's world, its own index range."""

    world_seed: int = 20_000
    start: int = 100_000  # disjoint from the captioner's training scenes [0, 8_000)
    num_train: int = 6_000
    label_noise: float = 1.0  # std of the rating noise, on the 0-10 scale
    hidden: int = 64
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0

    def hash(self, captioner: AutoCaptioner) -> str:
        return content_hash([dataclasses.asdict(self), captioner.cfg.hash()])


class AestheticHead(nn.Module):
    """features (B, D) -> score (B,). LAION's predictor is 768-1024-128-64-16-1 with dropout;
    ours is the same shape of idea, scaled down to D-hidden-16-1."""

    def __init__(self, feature_dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp(f).squeeze(-1)


class AestheticScorer:
    """Images (B, 3, H, W) in [-1, 1] -> predicted aesthetic score (B,) on the 0-10 scale."""

    def __init__(self, captioner: AutoCaptioner, head: AestheticHead, norm: torch.Tensor):
        self.captioner, self.head = captioner, head.eval()
        self.norm = norm  # (4,): feature mean / std scalars and label mean / std

    def score_features(self, f: torch.Tensor) -> torch.Tensor:
        mu_f, sd_f, mu_y, sd_y = self.norm.tolist()
        with torch.no_grad():
            return self.head((f - mu_f) / sd_f) * sd_y + mu_y

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.captioner.features(images))

    @classmethod
    def load_or_train(cls, captioner: AutoCaptioner, cfg: AestheticConfig | None = None):
        cfg = cfg or AestheticConfig()
        path = cache_dir("aesthetic") / f"{cfg.hash(captioner)}.pt"
        head = AestheticHead(captioner.cfg.feature_dim, cfg.hidden)
        with build_lock(path):  # a parallel process waits, then loads what this one trained
            if path.exists():
                state = torch.load(path, map_location="cpu", weights_only=True)
                head.load_state_dict(state["head"])
                return cls(captioner, head, state["norm"])
            scorer = train_aesthetic(captioner, cfg)
            tmp = path.with_suffix(".tmp")
            torch.save({"head": scorer.head.state_dict(), "norm": scorer.norm}, tmp)
            tmp.replace(path)
            return scorer


def train_aesthetic(captioner: AutoCaptioner, cfg: AestheticConfig) -> AestheticScorer:
    """Fit the head with MSE on noisy labels of cfg's scenes (features frozen, computed once)."""
    torch.manual_seed(cfg.seed)
    world = dataclasses.replace(captioner.cfg.world(), seed=cfg.world_seed,
                                aesthetic_label_noise=cfg.label_noise)
    scenes, images = render_world(world, cfg.start, cfg.num_train, captioner.cfg.resolutions,
                                  captioner.cfg.resolution)
    f = captioner.features(images)
    y = torch.tensor([s["aesthetic_label"] for s in scenes], dtype=torch.float32)
    # Standardise inputs and targets: one learning rate then fits any feature scale.
    norm = torch.tensor([f.mean(), f.std(), y.mean(), y.std()])
    f, y = (f - norm[0]) / norm[1], (y - norm[2]) / norm[3]
    head = AestheticHead(f.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(f), (cfg.batch_size,), generator=gen)
        loss = F.mse_loss(head(f[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return AestheticScorer(captioner, head, norm)


def spearman_on_world(scorer: AestheticScorer, world: WorldConfig, start: int, n: int,
                      resolution: int = 32) -> dict:
    """Spearman correlation of predicted vs TRUE score on scenes [start, start + n) of world.

    Also "label_spearman": that of the world's own labels (noisy when
    ``world.aesthetic_label_noise > 0``) with the truth, what a perfect fit of the labels gets.
    """
    from scipy.stats import spearmanr

    scenes, images = render_world(world, start, n, resolution, scorer.captioner.cfg.resolution)
    pred = scorer.score(images).numpy()
    true = [s["aesthetic"] for s in scenes]
    noisy = [s["aesthetic_label"] for s in scenes]
    return {"spearman": float(spearmanr(pred, true).statistic),
            "label_spearman": float(spearmanr(noisy, true).statistic), "n": n}


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores, best first: scores (N,) -> (k,) long."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if not 0 < k <= len(scores):
        raise ValueError(f"k must be in 1..{len(scores)}, got {k}")
    # stable sort: equal scores keep dataset order, so curation is deterministic
    return torch.sort(scores, descending=True, stable=True).indices[:k]


def score_dataset(dataset, scorer: AestheticScorer, batch_size: int = 512) -> torch.Tensor:
    """Predicted score of every item of a ShapesWorld-like dataset, (len(dataset),)."""
    out = []
    for i in range(0, len(dataset), batch_size):
        items = dataset.__getitems__(list(range(i, min(i + batch_size, len(dataset)))))
        out.append(scorer.score(torch.stack([it["image"] for it in items])))
    return torch.cat(out)


def curate(dataset, scorer: AestheticScorer, k: int | None = None,
           fraction: float | None = None) -> torch.Tensor:
    """Dataset positions of the k (or fraction * len) best-scored items, best first.

    Use with ``torch.utils.data.Subset(dataset, indices.tolist())`` for the SFT set.
    """
    if (k is None) == (fraction is None):
        raise ValueError("give exactly one of k or fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = max(1, round(fraction * len(dataset)))
    return select_top_k(score_dataset(dataset, scorer), k)
