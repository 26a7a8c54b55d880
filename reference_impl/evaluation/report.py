"""``python -m reference_impl report RUN_DIR``: a run's metrics.jsonl -> figures a person reads.

RUN_DIR/metrics.jsonl holds one JSON object per line with at least ``step`` and any of
``loss``, ``loss_ema``, ``grad_norm``, ``lr``, ``val/fid``, ``val/prompt_acc``. Each figure
below that has data is written to RUN_DIR/figures/<name>.png, plus ``overview.png`` with all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .fid import NAME as FID_NAME

# figure name -> (keys plotted, y label, log scale)
PANELS = {
    "loss": (("loss", "loss_ema"), "training loss", True),
    "grad_norm": (("grad_norm",), "gradient norm (before clipping)", True),
    "lr": (("lr",), "learning rate", False),
    # val/ is the EMA model, val_raw/ the raw weights (the EMA lecture compares them)
    "fid": (("val/fid", "val_raw/fid"), FID_NAME, False),
    "prompt_acc": (("val/prompt_acc", "val_raw/prompt_acc"), "prompt accuracy (all correct)", False),
}


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file; a line that is not a JSON object with 'step' is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path}:{i}: each line must be a JSON object with a 'step'")
        rows.append(row)
    return rows


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a numeric ``key`` (NaN kept: it shows as a gap)."""
    pts = [(float(r["step"]), float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [s for s, _ in pts], [v for _, v in pts]


def _draw(ax, rows, keys, ylabel, log) -> bool:
    drawn = False
    for key in keys:
        x, y = series(rows, key)
        if x:
            style = "o-" if len(x) < 50 else "-"
            ax.plot(x, y, style, label=key, markersize=3, alpha=0.5 if key == "loss" else 1.0)
            drawn = True
    if drawn:
        positive = all(v > 0 for k in keys for v in series(rows, k)[1] if math.isfinite(v))
        if log and positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if sum(bool(series(rows, k)[0]) for k in keys) > 1:
            ax.legend()
    return drawn


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write RUN_DIR/figures/*.png from RUN_DIR/metrics.jsonl; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written, present = [], []
    for name, (keys, ylabel, log) in PANELS.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        if _draw(ax, rows, keys, ylabel, log):
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            written.append(out_dir / f"{name}.png")
            present.append(name)
        plt.close(fig)
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.4), squeeze=False)
        for ax, name in zip(axes[0], present):
            _draw(ax, rows, *PANELS[name])
        fig.suptitle(run_dir.name)
        fig.tight_layout()
        fig.savefig(out_dir / "overview.png", dpi=110)
        plt.close(fig)
        written.append(out_dir / "overview.png")
    return written


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run folder holding metrics.jsonl")


def main(args) -> int:
    try:
        paths = plot_run(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    if not paths:
        print(f"nothing to plot: no known metric in {Path(args.run_dir) / 'metrics.jsonl'}")
        return 1
    for path in paths:
        print(path)
    return 0
