"""Reports a person reads: a run's training curves, and the lifecycle's report page.

``python -m reference_impl report RUN_DIR``: RUN_DIR/metrics.jsonl holds one JSON object per line with at least ``step`` and any of
``loss``, ``loss_ema``, ``grad_norm``, ``lr``, ``val/fid``, ``val/prompt_acc``. Each figure
below that has data is written to RUN_DIR/figures/<name>.png, plus ``overview.png`` with all.

``lifecycle_report``: the pipeline's report.md and report.html - the headline table (the
number each stage exists for, with its n), then every stage's metrics and figures. Markdown
becomes HTML through markdown-it-py (CommonMark plus tables), with raw HTML escaped.
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
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written, present = [], []
    for name, (keys, ylabel, log) in PANELS.items():
        fig = Figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        if _draw(ax, rows, keys, ylabel, log):
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            written.append(out_dir / f"{name}.png")
            present.append(name)
    if present:
        fig = Figure(figsize=(4.5 * len(present), 3.4))
        axes = fig.subplots(1, len(present), squeeze=False)
        for ax, name in zip(axes[0], present):
            _draw(ax, rows, *PANELS[name])
        fig.suptitle(run_dir.name)
        fig.tight_layout()
        fig.savefig(out_dir / "overview.png", dpi=110)
        written.append(out_dir / "overview.png")
    return written


# ------------------------------------------------------------------ the lifecycle report
NOTE = ("Domain-FID and prompt accuracy use the evaluation probe (features and attribute "
        "readings of a CNN trained on ShapesWorld); the aesthetic score and the DPO judge use "
        "the curation models. n = sample counts.")


def _num(x) -> str:
    """A measured fraction or score to three decimals; "n/a" where the stage did not measure it."""
    return "n/a" if x is None else f"{x:.3f}"


def headline(m: dict[str, dict]) -> list[tuple[str, str, int]]:
    """(measure, value, n) rows from the stages' metrics ``m[stage]``: what each stage is for."""
    cap, safety, pre, sft, lora = m["caption"], m["safety"], m["pretrain"], m["sft"], m["lora"]
    dpo, check = m["dpo"], m["safety_check"]
    w = dpo["win_rate_vs_sft"]
    dpo_rows = [
        ("DPO: shapes read as large (the judge's taste, probe) SFT -> DPO",
         f"{dpo['large_share']['sft']:.3f} -> {dpo['large_share']['dpo']:.3f}", w["n"]),
        ("DPO: prompt accuracy (kind+colour+background) SFT -> DPO",
         f"{dpo['sft']['prompt_acc']:.3f} -> {dpo['dpo']['prompt_acc']:.3f}", w["n"]),
    ] if "large_share" in dpo else []
    return [
        ("captions naming kind+colour+background",
         f"{cap['useful_before']:.3f} -> {cap['useful_after']:.3f}", cap["n"]),
        ("safety filter: unsafe dropped (recall) / precision",
         f"{safety['recall']:.3f} / {safety['precision']:.3f}", safety["total"]),
        ("pre-training prompt accuracy (EMA, probe)", _num(pre.get("val/prompt_acc")), pre["val_n"]),
        ("SFT aesthetic score before -> after",
         f"{sft['before']['aesthetic']:.3f} -> {sft['after']['aesthetic']:.3f}", sft["after"]["n"]),
        ("SFT prompt accuracy (kind+colour+background) before -> after",
         f"{_num(sft['before']['prompt_acc'])} -> {_num(sft['after']['prompt_acc'])}",
         sft["after"]["n"]),
        ("DPO win rate vs SFT (judge), 95% Wilson CI",
         f"{w['win_rate']:.3f} [{w['ci95_low']:.3f}, {w['ci95_high']:.3f}]", w["n"]),
        *dpo_rows,
        ("LoRA brand-style rate base -> adapter (probe)",
         f"{lora['brand_rate_base']:.3f} -> {lora['brand_rate_lora']:.3f}", lora["n_eval"]),
        ("LoRA trainable fraction / adapter MB / train s",
         f"{lora['trainable_fraction']:.4f} / {lora['adapter_mb']:.3f} / {lora['train_seconds']:.1f}",
         lora["num_images"]),
        ("outputs blocked: plain / hazard prompts",
         f"{check['plain']['block_rate']:.3f} / {check['hazard_prompts']['block_rate']:.3f}",
         check["plain"]["n"]),
    ]


def stage_times(m: dict[str, dict]) -> list[tuple[str, str]]:
    """(stage, seconds) rows from each stage's measured ``seconds``, then the pipeline's total
    (the report stage itself is not in it: it is writing this)."""
    rows = [(stage, f"{x['seconds']:.1f}") for stage, x in m.items() if "seconds" in x]
    total = sum(x["seconds"] for x in m.values() if "seconds" in x)
    return [*rows, ("**pipeline (sum of the stages)**", f"**{total:.1f}** ({total / 60:.1f} min)")]


def markdown_table(header: tuple[str, ...], rows) -> list[str]:
    """A Markdown table; ``|`` inside a cell is escaped so it cannot split the row."""
    def cells(row):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
    return [cells(header), "| " + " | ".join("---" for _ in header) + " |", *map(cells, rows)]


def to_html(markdown: str, title: str = "report") -> str:
    """A standalone HTML page from Markdown (markdown-it-py: CommonMark + tables, raw HTML
    escaped, so a string from a metrics file cannot inject markup)."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
            f"img{{height:160px}}</style><body>\n{body}</body>\n")


def lifecycle_report(root: str | Path, name: str, metrics: dict[str, dict],
                     figures: dict[str, list[Path]]) -> tuple[Path, Path]:
    """Write ``root/report.md`` and ``root/report.html``: the headline table, then each stage's
    metrics (as JSON) and figures (paths relative to ``root``). Returns both paths."""
    root = Path(root)
    lines = [f"# Lifecycle report: {name}", "", NOTE, "",
             *markdown_table(("measure", "value", "n"), headline(metrics)), "",
             "## Time", "", *markdown_table(("stage", "seconds"), stage_times(metrics)), ""]
    for i, (stage, m) in enumerate(metrics.items()):
        lines += [f"## {i:02d} {stage}", "", "```", json.dumps(m, indent=1), "```", ""]
        lines += [f"![{png.stem}]({png.relative_to(root)})" for png in figures.get(stage, [])]
        lines.append("")
    md = "\n".join(lines)
    (root / "report.md").write_text(md)
    (root / "report.html").write_text(to_html(md, f"Lifecycle report: {name}"))
    return root / "report.md", root / "report.html"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run folder holding metrics.jsonl, or a pipeline's folder "
                                   "(then every stage that trained is plotted)")


def runs_in(run_dir: str | Path) -> list[Path]:
    """The run folders to plot: ``run_dir`` itself, or a pipeline's stages that trained."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").is_file() or not (run_dir / "stages").is_dir():
        return [run_dir]
    return sorted(p.parent for p in (run_dir / "stages").glob("*/metrics.jsonl"))


def main(args) -> int:
    try:
        paths = [path for run in runs_in(args.run_dir) for path in plot_run(run)]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    if not paths:
        print(f"nothing to plot: no known metric in {Path(args.run_dir) / 'metrics.jsonl'}")
        return 1
    for path in paths:
        print(path)
    return 0
