"""``python -m reference_impl results`` (``make results``): every experiment, one page.

Runs each experiment at the chosen scale (default full) or loads it from the cache, then
writes ``docs/results.md``: one row per claim (claim, measured value with its interval and n,
verdict, lecture, figure), and below it each experiment's arms, rule and anchor. The figures
are copied to ``docs/figures/results/``. A claim that did not reproduce stays on the page with
its numbers: the page reports what was measured, not what was hoped.
"""
from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

from ..paths import content_hash
from .runner import (
    EXPERIMENTS,
    SCALES,
    ExperimentError,
    Result,
    experiment_config,
    get,
    names,
    result_dir,
    run_experiment,
    seed_list,
)

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


def cached_result(name: str, scale: str, out: Path) -> Result | None:
    """The result of ``name`` at ``scale`` without computing: the local cache (its default
    seeds), else the one this page shipped (``out/results/<name>.json``), else None."""
    exp = get(name)
    config = experiment_config(exp, scale, seed_list(exp, scale, None))
    path = result_dir(name, scale, content_hash(config)) / "result.json"
    shipped = out / "results" / f"{name}.json"
    for p in (path, shipped):
        if p.exists():
            stored = json.loads(p.read_text())
            if stored.get("scale") == scale:
                res = Result.from_dict(stored)
                res.cached = True
                return res
    return None


def pending_row(name: str) -> str:
    """A claim with no result under the gated runner: listed, with no number and no verdict."""
    exp = get(name)
    return (f"| {_cell(exp.claim)} | not yet measured with the competence gate "
            f"(`python -m reference_impl experiment {name} --scale full`) | *pending* "
            f"| `lectures/{exp.lecture}.ipynb` | |")


def write_page(results: list[Result], out: Path, note: str | None = None,
               pending: list[str] = ()) -> Path:
    """docs/results.md and its figures from a list of results (each also shipped as
    ``out/results/<name>.json``); ``pending`` names claims not measured yet. Returns the page."""
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
    for name in pending:  # a pending claim shows no figure of an older measurement
        for old in fig_dir.glob(f"{name}-*.png"):
            old.unlink()
    shipped = out / "results"
    shipped.mkdir(parents=True, exist_ok=True)
    for r in results:
        (shipped / f"{r.name}.json").write_text(json.dumps(r.to_dict(), indent=1, default=float))
    table: dict[str, list[str]] = {n: [pending_row(n)] for n in pending}
    for r in results:
        fig = f"[{Path(figs[r.name][0]).stem}]({figs[r.name][0]})" if figs[r.name] else ""
        table[r.name] = [(f"| {_cell(r.claim)} | {_cell(r.headline.metric)}: "
                         f"{_cell(r.headline.text())} | {BADGE[r.verdict]} "
                         f"| `lectures/{r.lecture}.ipynb` | {fig} |")]
        # the claim's other questions, each with its own verdict
        table[r.name] += [f"| ↳ {_cell(w.label)} | {_cell(w.measured.metric)}: "
                          f"{_cell(w.measured.text())} | {BADGE.get(w.verdict, w.verdict)} | | |"
                          for w in r.rows[1:]]
    order = [n for n in names() if n in table] + [n for n in table if n not in names()]
    lines += [line for n in order for line in table[n]]
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
    """Compute the chosen experiments (default: all); every other claim comes from the cache
    or the shipped results, or is listed as pending - the page always lists every claim."""
    chosen = args.only or names()
    out = Path(args.out)
    try:
        computed = {n: run_experiment(n, args.scale, None, force=args.force, workers=args.workers,
                                      progress=not args.no_progress) for n in chosen}
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results, pending = [], []
    for n in names():
        r = computed.get(n) or cached_result(n, args.scale, out)
        if r is not None and (r.gate or r.gate_note):  # measured with the gated runner
            results.append(r)
        elif n not in computed:
            pending.append(n)
    page = write_page(results, out, args.note, pending)
    for r in results:
        print(f"{r.name:<13} {r.verdict:<15} {r.headline.metric}: {r.headline.text()}")
    print(f"wrote {page}")
    return 0
