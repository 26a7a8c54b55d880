"""``python -m reference_impl evaluate``: every measure of a set of images or a checkpoint.

    --images PATH        a folder of PNGs (with an optional captions.jsonl / metadata.jsonl of
                         {"file_name": ..., "text" or "caption": ...}) or a .pt file holding
                         {"images": (N, 3, H, W) in [-1, 1], "captions": [N strings]}
    --checkpoint DIR     sample --num-samples validation prompts from a checkpoint instead, at
                         the resolution it was last trained at (or --resolution)
    --reference N        real images of the same captions for domain-FID and brightness
    --json               print one JSON object with all measures on the last line
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of PNGs or a .pt file")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint folder to sample from")
    p.add_argument("--num-samples", type=int, default=72, help="samples drawn from --checkpoint")
    p.add_argument("--resolution", type=int, default=None,
                   help="--checkpoint: sample at this size (default: the last trained resolution)")
    p.add_argument("--reference", type=int, default=500, help="real images for domain-FID")
    p.add_argument("--seed", type=int, default=0, help="sampling and reference seed")
    p.add_argument("--device", default="cpu", help="device of the probe (cpu, cuda, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")


def _read_captions(folder: Path, names: list[str]) -> list[str] | None:
    for fname in CAPTION_FILES:
        path = folder / fname
        if path.is_file():
            by_name = {}
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    text = row.get("text", row.get("caption"))
                    if "file_name" not in row or text is None:
                        raise ValueError(f"{path}:{i}: need 'file_name' and 'text' (or 'caption')")
                    by_name[Path(row["file_name"]).name] = text
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ValueError(f"{path} has no caption for {len(missing)} images, e.g. {missing[0]}")
            return [by_name[n] for n in names]
    return None


def load_images(path: Path) -> tuple[torch.Tensor, list[str] | None]:
    """A .pt dict or a folder of images -> images (N, 3, H, W) in [-1, 1], captions or None."""
    from PIL import Image

    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {path}")
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        sizes = {a.shape for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"images in {path} have different sizes: {sorted(sizes)}")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return images, _read_captions(path, [f.name for f in files])
    if path.suffix == ".pt" and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "images" not in blob:
            raise ValueError(f"{path} must hold a dict with 'images' (N, 3, H, W) and 'captions'")
        images, captions = blob["images"].float(), blob.get("captions")
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{path}: {len(images)} images but {len(captions)} captions")
        return images, (list(captions) if captions is not None else None)
    raise ValueError(f"--images must be a folder of images or a .pt file, got {path}")


def sample_from_checkpoint(checkpoint: Path, n: int, seed: int, resolution: int | None = None):
    """Sample the first n validation prompts from a checkpoint (the pre-training engine)."""
    from .validation import validation_prompts

    try:
        from ..diffusion.sampling import sample_checkpoint
    except ImportError as e:
        raise RuntimeError(f"checkpoint evaluation needs the pre-training engine "
                           f"(reference_impl.diffusion.sampling.sample_checkpoint): {e}") from None
    prompts = validation_prompts(n)
    kw = {} if resolution is None else {"resolution": resolution}
    return sample_checkpoint(checkpoint, prompts, seed, **kw), prompts


def evaluate(images: torch.Tensor, captions, reference: int, seed: int, device: str) -> dict:
    """All measures (metrics.evaluate_images) against ``reference`` real images of the captions."""
    from .metrics import evaluate_images
    from .probe import get_probe
    from .validation import real_images

    probe = get_probe(device=device)
    ref = real_images(captions or [""], reference, images.shape[-1], seed) if reference > 1 else None
    out = evaluate_images(images, captions, probe, reference_images=ref)
    out["reference"] = "real ShapesWorld images of the same captions" if captions \
        else "real ShapesWorld images, random attributes"
    out["probe_heldout_accuracy"] = probe.report.get("heldout_accuracy", {}).get("clean_32px")
    return out


def _summary(m: dict) -> list[str]:
    lines = [f"images: {m['num_images']} at {m['resolution']} px"]
    if m.get("domain_fid"):
        f = m["domain_fid"]
        lines.append(f"{f['name']}: {f['value']:.3f} (N = {f['n1']} vs {f['n2']} real)")
    if "prompt_accuracy" in m:
        pa = m["prompt_accuracy"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in pa.items() if k not in ("all_correct", "n"))
        lines.append(f"prompt accuracy: all correct {pa['all_correct']:.3f} ({per})")
    b = m["brightness"]
    lines.append(f"brightness: mean {b['mean']:.3f}, 5-95% [{b['p5']:.2f}, {b['p95']:.2f}], "
                 f"dark {b['frac_dark']:.2f}, bright {b['frac_bright']:.2f}")
    shares = ", ".join(f"{k} {v:.2f}" for k, v in m["class_proportions"]["shares"].items())
    lines.append(f"kinds: {shares} (TV to target {m['class_proportions']['total_variation']:.3f})")
    div = "n/a" if m["diversity"] is None else f"{m['diversity']:.3f}"
    lines.append(f"unsafe rate {m['unsafe_rate']:.3f}, diversity (mean feature distance) {div}")
    return lines


def main(args) -> int:
    try:
        if args.checkpoint is not None:
            images, captions = sample_from_checkpoint(args.checkpoint, args.num_samples, args.seed,
                                                      args.resolution)
        else:
            images, captions = load_images(args.images)
        result = evaluate(images, captions, args.reference, args.seed, args.device)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    for line in _summary(result):
        print(line)
    if args.json:
        print(json.dumps(result))
    return 0
