"""The auto-captioner: re-write a web image's useless caption from what the image shows.

Web alt-text is mostly noise ("IMG_0452.jpg", "abstract art"). DALL-E 3 (Betker et al. 2023,
"Improving Image Generation with Better Captions") re-captioned its training set with a
vision-language model and measurably improved prompt following. Here the vision model is a
small CNN trained on ShapesWorld (our stand-in for a VLM / CLIP): it predicts every attribute
of a scene and the caption writer turns the prediction into the canonical rich caption.

The captioner is a *curation* model: its own world seed (20_000) and its own index range, and
a different network from the evaluation probe (``evaluation/probe.py``), because we never
grade with the model that curated or captioned.

Besides the attributes, the network regresses four image-quality numbers (blur, noise,
off-centre shift, background level), the way CLIP's features "know" a photo is blurry. Its
penultimate layer (``features``) is frozen and reused by the aesthetic scorer and the safety
filter, as LAION re-used CLIP embeddings (Schuhmann et al. 2022, arXiv 2210.08402).

``VLMCaptioner`` is the same interface over a real image-to-text model from ``transformers``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.captions import rich_caption
from ..data.images import prepare_images
from ..data.shapes import (
    BLUR_RANGE,
    LABEL_KEYS,
    NOISE_RANGE,
    OFFSET_RANGE,
    WorldConfig,
    labels,
    render,
    sample_scene,
)
from ..data.vocab import ATTRIBUTES
from ..paths import build_lock, cache_dir, content_hash

QUALITY_KEYS = ("blur", "noise", "offset", "level")  # regressed, each scaled to about [0, 1]
_QUALITY_SCALE = (BLUR_RANGE[1], NOISE_RANGE[1], OFFSET_RANGE[1], 1.0)


@dataclass(frozen=True)
class CaptionerConfig:
    """What the captioner is trained on; its hash names the cached weights."""

    world_seed: int = 20_000  # the curation world: not the web (0) nor the probe's
    start: int = 0  # training scenes are [start, start + num_train) of that world
    num_train: int = 8_000
    resolution: int = 32  # the network's input; other sizes are resized to it
    # rendered at these sizes in equal shares: the web data and the generated samples of the
    # course come at 16 and 32 px, and a 16 px image upsampled is blurrier than a 32 px one
    resolutions: tuple[int, ...] = (16, 32)
    unsafe_fraction: float = 0.2  # generous, so the hazard sign is learned
    brand_fraction: float = 0.2
    hq_fraction: float = 0.4  # mostly degraded images: the captioner must read web images
    width: int = 16
    feature_dim: int = 128
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-3
    seed: int = 0

    def world(self) -> WorldConfig:
        return WorldConfig(seed=self.world_seed, unsafe_fraction=self.unsafe_fraction,
                           brand_fraction=self.brand_fraction, hq_fraction=self.hq_fraction)

    def hash(self) -> str:
        return content_hash(dataclasses.asdict(self))


class AttributeNet(nn.Module):
    """Image (B, 3, 32, 32) in [-1, 1] -> features (B, D), attribute logits, quality (B, 4)."""

    def __init__(self, width: int = 32, feature_dim: int = 128, resolution: int = 32):
        super().__init__()
        w = width

        def block(c_in, c_out, stride):
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.conv = nn.Sequential(*block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                  *block(4 * w, 4 * w, 2))
        side = resolution // 8
        # Flatten, not global pooling: count and off-centre shift are *where* things are.
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, feature_dim),
                                   nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, n) for k, n in ATTRIBUTES.items()})
        self.quality = nn.Linear(feature_dim, len(QUALITY_KEYS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        return f, {k: h(f) for k, h in self.heads.items()}, self.quality(f)


def scene_targets(scenes: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class targets {attribute: (B,)} and scaled quality targets (B, 4) for scenes."""
    lab = [labels(s) for s in scenes]
    cls = {k: torch.tensor([x[k] for x in lab]) for k in LABEL_KEYS}
    q = torch.tensor([[s[k] / sc for k, sc in zip(QUALITY_KEYS, _QUALITY_SCALE)] for s in scenes],
                     dtype=torch.float32)
    return cls, q


def render_world(world: WorldConfig, start: int, n: int, resolutions: int | tuple[int, ...],
                 size: int = 32):
    """Scenes [start, start + n) of a world: (scenes, images (n, 3, size, size) in [-1, 1]).

    Scene i is rendered at ``resolutions[i % len(resolutions)]``, then resized to ``size``.
    """
    res = (resolutions,) if isinstance(resolutions, int) else tuple(resolutions)
    scenes = [sample_scene(world, start + i) for i in range(n)]
    images = torch.empty(n, 3, size, size)
    for j, r in enumerate(res):
        rows = list(range(j, n, len(res)))
        for k in range(0, len(rows), 2048):
            chunk = rows[k:k + 2048]
            drawn = render([scenes[i] for i in chunk], r, world.seed) * 2 - 1
            images[chunk] = prepare_images(drawn, size)
    return scenes, images


def train_attribute_net(cfg: CaptionerConfig, progress: bool = True) -> AttributeNet:
    """Train the network on cfg's scenes: cross-entropy per attribute + MSE on quality."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    scenes, images = render_world(cfg.world(), cfg.start, cfg.num_train, cfg.resolutions,
                                  cfg.resolution)
    cls, q = scene_targets(scenes)
    net = AttributeNet(cfg.width, cfg.feature_dim, cfg.resolution)
    steps = cfg.epochs * (cfg.num_train // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=steps, desc="captioner", disable=not progress)
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(cfg.num_train, generator=gen)
        for i in range(cfg.num_train // cfg.batch_size):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            _, logits, quality = net(images[idx])
            loss = sum(F.cross_entropy(logits[k], cls[k][idx]) for k in logits)
            loss = loss + 10.0 * F.mse_loss(quality, q[idx])  # 10x: quality errors are ~0.1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


def write_caption(attributes: dict[str, int]) -> str:
    """Predicted class indices (count as count - 1, like ``labels``) -> the rich caption."""
    scene = dict(attributes)
    scene["count"] = int(scene["count"]) + 1
    return rich_caption(scene)


class AutoCaptioner:
    """Images -> rich captions and frozen features, with weights cached by config hash.

    ``AutoCaptioner.load_or_train(cfg)`` trains once (75 s of one-core CPU time,
    bit-for-bit reproducible) and then loads.
    """

    def __init__(self, net: AttributeNet, cfg: CaptionerConfig):
        self.net, self.cfg = net.eval(), cfg
        for p in self.net.parameters():
            p.requires_grad_(False)  # frozen: the heads built on it never move it

    @classmethod
    def load_or_train(cls, cfg: CaptionerConfig | None = None, progress: bool = True):
        cfg = cfg or CaptionerConfig()
        path = cache_dir("captioner") / f"{cfg.hash()}.pt"
        net = AttributeNet(cfg.width, cfg.feature_dim, cfg.resolution)
        with build_lock(path):  # a parallel process waits, then loads what this one trained
            if path.exists():
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            else:
                net = train_attribute_net(cfg, progress)
                tmp = path.with_suffix(".tmp")
                torch.save(net.state_dict(), tmp)
                tmp.replace(path)  # atomic: a parallel reader never sees half a file
        return cls(net, cfg)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def _run(self, images: torch.Tensor, batch_size: int = 512):
        x = prepare_images(images, self.cfg.resolution)
        outs = [self.net(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)]
        feats = torch.cat([o[0] for o in outs]).cpu()
        logits = {k: torch.cat([o[1][k] for o in outs]).cpu() for k in ATTRIBUTES}
        quality = torch.cat([o[2] for o in outs]).cpu()
        return feats, logits, quality

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features (B, feature_dim) of images (B, 3, H, W) in [-1, 1]."""
        return self._run(images)[0]

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class index per attribute, {name: (B,)} (count as count - 1)."""
        return {k: v.argmax(dim=1) for k, v in self._run(images)[1].items()}

    def caption(self, images: torch.Tensor) -> list[str]:
        """One rich caption per image, e.g. 'two small red circles on a dark background'."""
        pred = self.predict(images)
        return [write_caption({k: int(v[i]) for k, v in pred.items()}) for i in range(len(images))]


class VLMCaptioner:
    """A real vision-language captioner from ``transformers`` behind the same ``caption`` call.

    ``model_id_or_path``: a local folder or a hub id already in the cache (nothing downloads
    here when HF_HUB_OFFLINE=1), e.g. a BLIP captioning model. ``prompt`` is the text prefix
    the model continues (BLIP: "a picture of"); None for none.
    """

    def __init__(self, model_id_or_path: str, prompt: str | None = None, max_new_tokens: int = 30,
                 device: str | torch.device = "cpu"):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_id_or_path)
        self.model = AutoModelForImageTextToText.from_pretrained(model_id_or_path).to(device)
        self.model.eval()
        self.prompt, self.max_new_tokens, self.device = prompt, max_new_tokens, device

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        """images (B, 3, H, W) in [-1, 1] -> B strings."""
        x = prepare_images(images, images.shape[-1])
        pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # what processors expect
        kwargs = {"images": list(pixels), "return_tensors": "pt"}
        if self.prompt is not None:
            kwargs["text"] = [self.prompt] * len(pixels)
        inputs = self.processor(**kwargs).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def recaption(data, captioner, batch_size: int = 512, world_seed: int = 0) -> dict[int, str]:
    """Rewrite the captions of a ShapesWorld dataset, a list of scenes or an image tensor.

    Returns {scene index: new caption}, ready for ``ShapesWorld(caption_override=...)``;
    for a tensor of images (B, 3, H, W) in [-1, 1] the keys are 0..B-1. Scenes are rendered
    with ``world_seed`` (their pixel noise depends on it).
    """
    if isinstance(data, torch.Tensor):
        return dict(enumerate(captioner.caption(data)))
    if isinstance(data, (list, tuple)) and all(isinstance(s, dict) for s in data):
        res = getattr(captioner, "cfg", CaptionerConfig()).resolution
        out = {}
        for i in range(0, len(data), batch_size):
            chunk = data[i:i + batch_size]
            images = render(chunk, res, world_seed) * 2 - 1
            out.update(zip((s["index"] for s in chunk), captioner.caption(images)))
        return out
    if hasattr(data, "__getitems__") and hasattr(data, "__len__"):
        out = {}
        for i in range(0, len(data), batch_size):
            items = data.__getitems__(list(range(i, min(i + batch_size, len(data)))))
            images = torch.stack([it["image"] for it in items])
            out.update(zip((it["index"] for it in items), captioner.caption(images)))
        return out
    raise TypeError("recaption expects a ShapesWorld dataset, a list of scene dicts, "
                    f"or an image tensor (B, 3, H, W); got {type(data).__name__}")


def caption_accuracy(captioner: AutoCaptioner, world: WorldConfig, start: int, n: int,
                     resolution: int = 32) -> dict:
    """Accuracy on scenes [start, start + n) of ``world``, drawn at ``resolution``, against
    their ground truth.

    Returns {attribute: accuracy} plus "exact" (the whole rich caption matches) and, split by
    image quality, "exact_clean" / "exact_degraded" with their sample sizes "n_clean" /
    "n_degraded" (degraded = blurred, noisy or off-centre).
    """
    scenes, images = render_world(world, start, n, resolution, captioner.cfg.resolution)
    pred = captioner.predict(images)
    cls, _ = scene_targets(scenes)
    out = {k: (pred[k] == cls[k]).float().mean().item() for k in LABEL_KEYS}
    written = captioner.caption(images)
    exact = torch.tensor([c == rich_caption(s) for c, s in zip(written, scenes)])
    degraded = torch.tensor([s["blur"] > 0 or s["noise"] > 0 or s["offset"] > 0 for s in scenes])
    out["exact"] = exact.float().mean().item()
    out["exact_clean"] = exact[~degraded].float().mean().item()
    out["exact_degraded"] = exact[degraded].float().mean().item()
    out["n"], out["n_clean"], out["n_degraded"] = n, int((~degraded).sum()), int(degraded.sum())
    return out
