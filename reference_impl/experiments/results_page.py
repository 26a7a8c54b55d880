"""``python -m reference_impl results`` (``make results``): every experiment, one page.

Runs each experiment at the chosen scale (default full) or loads it from the cache, then
writes ``docs/results.md``: one row per claim (claim, measured value with its interval and n,
verdict, lecture, figure), and below it each experiment's arms, rule and anchor. The figures
are copied to ``docs/figures/results/``. A claim that did not reproduce stays on the page with
its numbers: the page reports what was measured, not what was hoped.
"""
from __future__ import annotations

import datetime
import shutil
import sys
from pathlib import Path

from .runner import EXPERIMENTS, SCALES, ExperimentError, Result, get, names, run_experiment

BADGE = {"reproduced": "reproduced", "not reproduced": "**not reproduced**",
         "inconclusive": "*inconclusive*", "underpowered": "*underpowered*",
         "consistent": "consistent", "smaller": "**smaller**", "larger": "**larger**",
         "held": "held", "violated": "**violated**"}


def add_arguments(p) -> None:
    p.add_argument("--scale", default="full", choices=SCALES)
    p.add_argument("--only", nargs="*", default=None, metavar="NAME", help="a subset of experiments")
    p.add_argument("--out", default="docs", help="folder for results.md and figures/results/")
    p.add_argument("--force", action="store_true", help="recompute, ignoring the cache")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--note", default=None,
                   help="a paragraph for the top of the page (e.g. how loaded the machine was)")
    p.add_argument("--no-progress", action="store_true")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def rule_changes(r: Result) -> list[str]:
    """What changed in the experiment's rule or gate since this result was measured."""
    if r.name not in EXPERIMENTS:
        return []
    exp, notes = get(r.name), []
    if exp.rule != r.rule:
        notes.append(f"the rule was changed after this run (now: {exp.rule})")
    if exp.rule_fixed and r.date and exp.rule_fixed > r.date[:10]:
        notes.append(f"the rule is dated {exp.rule_fixed}, after this run of {r.date[:10]}")
    gates = [g["key"] for g in r.gate if g["key"]]
    if [g.key for g in exp.gates] != gates:
        notes.append("the competence gate was changed after this run")
    return notes


def gate_text(r: Result) -> str:
    """'met: a >= 0.6: measured 0.93; ...', or why the experiment has no gate."""
    if not r.gate:
        return f"none ({r.gate_note})" if r.gate_note else "none"
    parts = [f"{g['what']} {g['op']} {g['threshold']:g}: measured {g['value']:.3g}"
             if g["key"] else g["what"] for g in r.gate]
    return ("met" if r.gate_met else "**not met**") + ": " + "; ".join(parts)


def rows_table(r: Result) -> str:
    """The result's decided questions as a Markdown table, headline first."""
    rows = r.rows or []
    lines = ["| question | measured [95% interval] (n) | rule | verdict |", "|---|---|---|---|"]
    lines += [f"| {_cell(w.label)} | {_cell(w.measured.metric)}: {_cell(w.measured.text())} "
              f"| {_cell(w.rule)} | {BADGE.get(w.verdict, w.verdict)}: {_cell(w.reason)} |"
              for w in rows]
    return "\n".join(lines)


def write_page(results: list[Result], out: Path, note: str | None = None) -> Path:
    """docs/results.md and its figures from a list of results; returns the page's path."""
    fig_dir = out / "figures" / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, list[str]] = {}
    for r in results:
        figs[r.name] = []
        for f in r.figures:
            src = Path(f)
            if src.exists():
                dst = fig_dir / f"{r.name}-{src.name}"
                shutil.copyfile(src, dst)
                figs[r.name].append(dst.relative_to(out).as_posix())
    scales = sorted({r.scale for r in results})
    lines = [
        "# Results: every claim of the course, measured",
        "",
        ("Written by `python -m reference_impl results` (`make results`) at scale "
        f"**{', '.join(scales)}** on {datetime.date.today().isoformat()}. Each verdict follows a "
        "rule fixed before the run (below each experiment). Intervals are 95%; n says over what. "
        "FID is a *domain-FID* on the features of our ShapesWorld probe, not Inception-FID."),
        "",
        *([f"**Note.** {note}", ""] if note else []),
        "| claim | measured | verdict | lecture | figure |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        fig = f"[{Path(figs[r.name][0]).stem}]({figs[r.name][0]})" if figs[r.name] else ""
        lines.append(f"| {_cell(r.claim)} | {_cell(r.headline.metric)}: {_cell(r.headline.text())} "
                     f"| {BADGE[r.verdict]} | `lectures/{r.lecture}.ipynb` | {fig} |")
        for w in r.rows[1:]:  # the claim's other questions, each with its own verdict
            lines.append(f"| ↳ {_cell(w.label)} | {_cell(w.measured.metric)}: "
                         f"{_cell(w.measured.text())} | {BADGE.get(w.verdict, w.verdict)} | | |")
    for r in results:
        m = r.machine
        dated = f" (fixed {r.rule_fixed})" if r.rule_fixed else ""
        changed = rule_changes(r)
        lines += ["", f"## `{r.name}`", "", f"**Claim.** {r.claim}", "",
                  f"**Rule{dated}.** {r.rule}", "",
                  *([f"**Rule changed.** {'; '.join(changed)}.", ""] if changed else []),
                  f"**Competence gate.** {gate_text(r)}", "",
                  f"**Published anchor.** {r.anchor}", "", r.table(), "",
                  *([rows_table(r), ""] if r.rows else []),
                  f"**Verdict: {r.verdict}.** {r.reason}", "",
                  (f"Scale {r.scale}, seeds {r.seeds}; {len(r.unit_seconds)} runs that took "
                  f"{sum(r.unit_seconds) / 60:.1f} min of worker time in all (each run's own wall "
                  f"clock, summed; two workers share the wall clock); this page's computation "
                  f"{r.wall_s / 60:.1f} min with {r.units_cached} runs loaded from the cache; "
                  f"{m.get('cpus')} cores ({m.get('processor')}, torch {m.get('torch')}); "
                  f"config key `{r.config_key}`"
                  + (f"; measured {r.date[:10]} at commit `{r.commit}`" if r.date else "")
                  + "."), ""]
        lines += [f"![{r.name}]({f})" for f in figs[r.name]]
    page = out / "results.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main(args) -> int:
    chosen = args.only or names()
    try:
        results = [run_experiment(n, args.scale, None, force=args.force, workers=args.workers,
                                  progress=not args.no_progress) for n in chosen]
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = write_page(results, Path(args.out), args.note)
    for r in results:
        print(f"{r.name:<13} {r.verdict:<15} {r.headline.metric}: {r.headline.text()}")
    print(f"wrote {page}")
    return 0
