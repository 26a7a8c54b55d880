"""``python -m reference_impl sample --checkpoint RUN/final --prompt "..." [--num N]``."""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="a run's final/ folder")
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--num", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", choices=["ddim", "dpm"], default=None)
    p.add_argument("--resolution", type=int, default=None,
                   help="pixels (default: the resolution the model was last trained at)")
    p.add_argument("--out", default="samples.png", help="PNG grid (one row per prompt)")


def main(args) -> int:
    from torchvision.utils import save_image

    from .sampling import sample_checkpoint

    prompts = [p for p in args.prompt for _ in range(args.num)]
    kw = {k: v for k, v in (("guidance_scale", args.guidance_scale), ("steps", args.steps),
                            ("sampler", args.sampler), ("resolution", args.resolution))
          if v is not None}
    images = sample_checkpoint(args.checkpoint, prompts, seed=args.seed, ema=not args.raw, **kw)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image(images * 0.5 + 0.5, args.out, nrow=args.num)
    print(f"wrote {len(prompts)} samples to {args.out}")
    return 0
