"""Every measure the course's claims are judged by, on a set of images (B, 3, H, W) in [-1, 1].

  prompt accuracy     the probe reads back the attributes each caption asked for
                      (per attribute, and "all correct": every named attribute right)
  class proportions   the probe's kind histogram against the target (90/10 and balancing)
  brightness          mean luma per image: histogram, dark / bright fractions, percentile range
                      (what noise offset fixes), beside the same numbers for real data
  unsafe rate         share of images the probe sees the hazard sign on (safety filter, DPO)
  diversity           mean pairwise distance of probe features (mode collapse lowers it)
  domain-FID          Frechet distance on probe features (see fid.py), with its sample counts
  sharpness/contrast  image statistics (Laplacian variance, luma std); the learned aesthetic
                      score lives in curation and can be passed in as ``aesthetic_scorer``.

Everything returned is plain Python (JSON-serialisable).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.captions import parse_caption
from ..data.vocab import ATTRIBUTES, KINDS
from .fid import FeatureStats, fid

DARK, BRIGHT = 0.2, 0.8  # thresholds on the [0, 1] mean-luma scale
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: perceived brightness of R, G, B


def _check(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"expected images of shape (B > 0, 3, H, W), got {tuple(images.shape)}")
    return images.detach().float().cpu()


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) luma in [0, 1]."""
    x = (_check(images).clamp(-1, 1) + 1) / 2
    return torch.einsum("bchw,c->bhw", x, torch.tensor(LUMA))


CORE = ("kind", "colour", "background")


def prompt_accuracy(predictions: dict[str, torch.Tensor], captions: list[str]) -> dict:
    """How often the probe's reading agrees with what each caption asked for.

    predictions: {attr: (B,) class index} from ``Probe.predict``; captions: B strings.
    Per attribute, the accuracy is over the captions that name it; "all_correct" is the share
    of captions with at least one named attribute whose named attributes are all right.
    """
    b = len(captions)
    if any(len(p) != b for p in predictions.values()):
        raise ValueError(f"{b} captions but predictions for {len(next(iter(predictions.values())))}")
    hits = {a: [] for a in ATTRIBUTES}
    all_ok, core_ok = [], []
    for i, text in enumerate(captions):
        asked = parse_caption(text)
        if "count" in asked:
            asked["count"] -= 1  # the probe's class form
        ok = [int(predictions[a][i]) == v for a, v in asked.items()]
        for (a, _), o in zip(asked.items(), ok):
            hits[a].append(o)
        if ok:
            all_ok.append(all(ok))
        if all(a in asked for a in CORE):
            core_ok.append(all(int(predictions[a][i]) == asked[a] for a in CORE))
    out = {a: float(np.mean(h)) for a, h in hits.items() if h}
    out["all_correct"] = float(np.mean(all_ok)) if all_ok else None  # None: nothing was asked
    # the headline number of the main job: shape, colour and background all read back right
    out["kind_colour_background"] = float(np.mean(core_ok)) if core_ok else None
    out["n"] = len(all_ok)
    return out


def class_proportions(kind_pred: torch.Tensor, target: list[float] | None = None) -> dict:
    """Probe kind histogram (B,) -> shares per kind, the target shares and their total
    variation distance 0.5 * sum |p - q| (0 = exactly on target). Default target: uniform."""
    counts = torch.bincount(kind_pred.long(), minlength=len(KINDS)).double()
    p = (counts / counts.sum()).numpy()
    q = np.full(len(KINDS), 1 / len(KINDS)) if target is None else np.asarray(target, float)
    q = q / q.sum()
    return {"shares": dict(zip(KINDS, p.round(4).tolist())),
            "target": dict(zip(KINDS, q.round(4).tolist())),
            "total_variation": float(0.5 * np.abs(p - q).sum())}


def brightness_stats(images: torch.Tensor, bins: int = 10) -> dict:
    """Mean luma per image (B,) summarised: mean, 5th/95th percentiles and their range,
    fractions very dark (< 0.2) and very bright (> 0.8), histogram over [0, 1]."""
    m = luma(images).mean(dim=(1, 2)).numpy()
    p5, p95 = np.percentile(m, [5, 95])
    hist, _ = np.histogram(m, bins=bins, range=(0.0, 1.0))
    return {"mean": float(m.mean()), "p5": float(p5), "p95": float(p95),
            "range_p5_p95": float(p95 - p5), "frac_dark": float((m < DARK).mean()),
            "frac_bright": float((m > BRIGHT).mean()), "histogram": (hist / len(m)).tolist()}


def diversity(features: torch.Tensor, max_items: int = 1000) -> float:
    """Mean pairwise Euclidean distance of features (N, D) (first ``max_items`` rows)."""
    f = features[:max_items].double()
    if len(f) < 2:
        raise ValueError("diversity needs at least two images")
    return float(torch.pdist(f).mean())


def sharpness_contrast(images: torch.Tensor) -> dict:
    """Mean over images of the Laplacian variance of luma (sharpness; blur lowers it) and of
    luma's standard deviation (global contrast). Raw statistics, not an aesthetic score."""
    y = luma(images).unsqueeze(1)
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    lap = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k)
    return {"sharpness": float(lap.flatten(1).var(dim=1).mean()),
            "contrast": float(y.flatten(1).std(dim=1).mean())}


def evaluate_images(images: torch.Tensor, captions: list[str] | None, probe,
                    reference_features=None, *, reference_images: torch.Tensor | None = None,
                    target_kinds: list[float] | None = None,
                    aesthetic_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """All measures of ``images`` (B, 3, H, W) in [-1, 1] as one JSON-serialisable dict.

    captions: B prompts the images were made from (None: no prompt accuracy). reference_features
    (N, D) or FeatureStats of real images: domain-FID. reference_images: real images, for the
    brightness comparison (and for FID when reference_features is not given). target_kinds:
    kind shares the sampler aimed for (default: the kinds the captions ask for, else uniform).
    """
    images = _check(images)
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    feats = probe.features(images)
    pred = probe.predict(images)
    out: dict = {"num_images": len(images), "resolution": int(images.shape[-1])}
    if captions is not None:
        out["prompt_accuracy"] = prompt_accuracy(pred, captions)
        asked = [parse_caption(c).get("kind") for c in captions]
        if target_kinds is None and all(k is not None for k in asked):
            target_kinds = np.bincount(asked, minlength=len(KINDS)).tolist()
    out["class_proportions"] = class_proportions(pred["kind"], target_kinds)
    out["brightness"] = brightness_stats(images)
    out["unsafe_rate"] = float(pred["unsafe"].float().mean())
    out["diversity"] = diversity(feats) if len(images) > 1 else None
    out.update(sharpness_contrast(images))
    if aesthetic_scorer is not None:
        out["aesthetic_mean"] = float(torch.as_tensor(aesthetic_scorer(images)).float().mean())
    if reference_images is not None:
        out["reference_brightness"] = brightness_stats(reference_images)
        if reference_features is None:
            reference_features = probe.features(reference_images)
    if reference_features is not None:
        ref = reference_features if isinstance(reference_features, FeatureStats) \
            else FeatureStats.of(reference_features)
        out["domain_fid"] = fid(feats, ref).to_dict() if len(images) > 1 else None
        if not isinstance(reference_features, FeatureStats):
            out["reference_diversity"] = diversity(torch.as_tensor(reference_features))
    return out
