"""Experiment `stability`: do LR warm-up and gradient clipping keep a run from failing, and how
far up the learning-rate axis do they move the edge of stability?

The seed's NaN scenario, on the course's own model: the laptop preset's UNet (``base: laptop``,
model preset ``laptop``, ~2 M parameters; its loss - min-SNR weighting, noise offset - and
AdamW), at 16 px, batch 8, 40 steps. Two arms train the same model from the same initial
weights on the same batches and noise (one seed = one of each), over a grid of learning rates:

  bare     no warm-up, no clipping, constant LR  (train.warmup_steps=0, max_grad_norm=0)
  guarded  linear warm-up over the first quarter of the run, then constant; the gradient
           norm clipped to 1 (Goyal et al. 2017, arXiv 1706.02677, sec. 2.2, for warm-up;
           Pascanu et al. 2013, arXiv 1211.5063, eq. 7 (alg. 1), for clipping)

Warm-up matters for Adam in particular: its first updates divide by a second-moment estimate
made from one or two gradients, so every weight moves by about the full LR at once (Liu et al.
2020, "On the variance of the adaptive learning rate and beyond", arXiv 1908.03265, sec. 3).
Divergence shows in the first tens of steps, so a run is short; no probe, no sampling: the
outcome is read from the record of every step (a step hook on Trainer.fit).

Outcome of a run (exclusive, tested in this order; fixed 2026-12-08, before the full run):
  nan              a non-finite loss or gradient: the health monitor (training/health.py)
                   skipped a step, or aborted the run with TrainingDiverged after
                   max_bad_steps in a row;
  unrecovered      all finite, but the mean loss of the last TAIL = 5 steps ends above
                   END_FACTOR = 2 x the step-1 loss;
  recovered spike  the monitor flagged a loss spike (z-score above train.spike_z once its
                   statistics have settled, after HealthMonitor.warmup = 20 steps) or the
                   loss rose above PEAK_FACTOR = 10 x its step-1 loss at some step (the
                   blow-up the monitor cannot see while it settles) - but the run ends fine;
  stable           none of these.
A run *fails* if it is nan or unrecovered. A recovered spike is not a failure: the old version
of this experiment counted it as one, and most of its effect came from such runs. The step-1
loss is the untrained model's, the same for both arms of a seed. The two factors are the old
version's (set after a scan of the tiny UNet, before its full run), kept unchanged: the pilot
below gave no reason to move them (its one unrecovered run ended at 2.7x its start, every
other finite run at most 1.17x; its recovered spike peaked at 10.3x, its stable runs at most 8x).

The *edge of stability* of a (seed, arm): the largest grid LR at which neither that run nor any
run of the same seed and arm at a lower LR failed - the last LR before the first failure. A seed
that fails already at the lowest LR gets one grid step below it, one that never fails the
highest LR (both censored; counted in ``details["edges"]``; the gates make them rare).

Rows (each decided by its own interval):
  1. guards cut the share of runs that fail, pooled over the LR grid: bare minus guarded,
     per seed the share over all LRs (every seed ran every LR), paired bootstrap 95% interval
     over seeds; reproduced above 0, not reproduced below 0 or within +-0.05;
  2. guards cut recovered spikes: the same for the share of runs that are recovered spikes;
  3. the edge of stability moves up: per seed log2(edge guarded / edge bare), Student's t 95%
     interval over seeds; reproduced above 0, not reproduced below 0 or within +- half a grid
     step (0.33: the grid cannot see a smaller move).
Gates (the grid must bracket the edge of both arms, or there is no edge to move): each arm's
share of seeds not failing at the lowest LR >= 0.66, and failing at the highest >= 0.66.

The pilot (run once, 2026-12-08, before the grid was fixed; laptop model, 16 px, batch 8,
40 steps, warm-up 10 steps, clip 1; one thread on the shared 2-core box; the code of this
version; step-1 loss 1.087 for seed 0, 0.849 for seed 1). Outcome by the rule above, peak =
max loss / step-1 loss, end = last-5 mean / step-1 loss:

  seed 0   bare                                 guarded
  0.003    stable (peak 1.0, end 0.10)          stable (1.0, 0.10)
  0.01     stable (1.2, 0.73)                   stable (1.1, 0.75)
  0.03     stable (5.6, 0.73)                   stable (3.5, 0.75)
  0.1      unrecovered (38, end 2.7)            stable (1.7, 1.17)
  0.3      nan (abort at step 10)               nan (abort at step 17)
  1.0      nan (step 7)                         nan (step 11)
  seed 1
  0.01     stable (1.5, 0.95)                   stable (1.5, 0.97)
  0.032    stable (8.0, 0.98)                   stable (1.7, 0.96)
  0.056    recovered spike (10.3, 1.01)         stable (3.4, 0.95)
  0.1      nan (step 24)                        stable (7.0, 1.04)
  0.18     nan (step 17)                        nan (step 28)
  0.32     nan (step 11)                        nan (step 15)

Bare fails first at 0.1 in both seeds (last good 0.03 / 0.056), guarded at 0.3 / 0.18 (last
good 0.1): both edges lie between 0.01 and 0.3, and everything at 0.3 and above went NaN. The
grid (fixed from this, before the full run): 10 LRs, 5 per decade (10^(k/5), two digits), from
0.01 (both arms stable in the pilot) to 0.63 (two grid steps above the first LR where every
pilot run of both arms went NaN), so each edge has 3-4 grid points around it.

Seeds: 10 (the runner's maximum). On this grid the pilot's edges put the per-seed pooled fail
difference at 1 to 3 grid LRs out of 10, i.e. 0.1-0.3; the pilot's two seeds had the same
difference (1 of 6 on their own grids), so their spread (0) cannot size the run, and the bound
is the grid's: values in [0.1, 0.3] have a standard deviation of at most 0.1, so with k seeds the
paired bootstrap's half-width is about 1.96 x 0.1 / sqrt(k) = 0.08 (k=6), 0.06 (k=10): row 1
needs few seeds. Row 3 likewise: log2 edge ratios of 1-3 grid steps (0.66-2.0, sd <= 0.66) give
a t half-width of 2.26 x 0.66 / sqrt(10) = 0.47 at k = 10 against an expected ~1.3. Row 2 sets
the count: the pilot saw 1 recovered spike in 12 bare runs and 0 in 12 guarded, an expected
difference of ~0.05-0.1 with a per-seed sd of ~0.07, for a half-width of 1.96 x 0.07 / sqrt(k) =
0.056 at k = 6, 0.043 at k = 10 - so the maximum, and row 2 may still end inconclusive.

Time: the pilot's runs took 7-11 s each when they ran all 40 steps and 2-7 s when they aborted
(one thread, the box loaded by other training; a process's first run ~5 s more): ~150 s per
seed over the grid (both arms), so 10 seeds = ~25 min of worker time, ~13-15 min of wall time
with two one-thread workers.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from ..evaluation.stats import bootstrap_interval, t_interval, wilson_interval
from .common import make_config, train_and_measure
from .runner import Arm, Experiment, Gate, Outcome, Summary, claim_row

ARMS = {"bare": "no warm-up, no clipping", "guarded": "warm-up + clipping"}
END_FACTOR = 2.0  # "ends far above where it started": last-5 mean loss > 2 x the step-1 loss
PEAK_FACTOR = 10.0  # a spike at any step: loss > 10 x the step-1 loss
TAIL = 5  # steps averaged for the end of a run
OUTCOMES = ("nan", "unrecovered", "recovered spike", "stable")  # in the order they are tested
FAILS = ("nan", "unrecovered")  # the outcomes that count as a failed run
EQUIVALENCE = 0.05  # rows 1-2: a pooled share difference inside +-0.05 is no effect
GATE = 0.66  # the bracketing gates: share of seeds

# the full grid: 5 LRs per decade, 10^(k/5) rounded to two digits (the pilot in the docstring)
FULL_LRS = [0.01, 0.016, 0.025, 0.04, 0.063, 0.1, 0.16, 0.25, 0.4, 0.63]

SCALES = {
    # fast: the lecture's and CI's smoke test (~25 s) - the laptop model at the full grid's two
    # ends and its middle, one seed, shorter runs at batch 4 (so its edges are not the full
    # run's: there guarded 0.1 can fail too); one seed decides nothing
    "fast": {"base": "laptop", "preset": "laptop", "resolution": 16, "batch_size": 4,
             "steps": 24, "warmup_frac": 0.25, "clip": 1.0, "lrs": [0.01, 0.1, 0.63]},
    # full: the grid picked by the pilot, from "both stable" to "both fail"
    "full": {"base": "laptop", "preset": "laptop", "resolution": 16, "batch_size": 8,
             "steps": 40, "warmup_frac": 0.25, "clip": 1.0, "lrs": FULL_LRS},
}


# ------------------------------------------------------------------ one run
def units(settings: dict, seeds: list[int]) -> list[dict]:
    """One run per (arm, LR, seed); the arms share each seed's weights, data and noise."""
    return [{"arm": arm, "lr": lr, "seed": s}
            for lr in settings["lrs"] for arm in ARMS for s in seeds]


def overrides(arm: str, lr: float, settings: dict) -> dict:
    """The config keys of one arm (everything else is the ``base`` preset's)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    steps = settings["steps"]
    out = {"model.preset": settings["preset"], "data.resolution": settings["resolution"],
           "train.curriculum": [{"steps": steps, "resolution": settings["resolution"]}],
           "train.batch_size": settings["batch_size"], "train.lr": lr}
    if arm == "bare":
        out.update({"train.warmup_steps": 0, "train.max_grad_norm": 0.0,
                    "train.lr_schedule": "constant"})
    else:
        out.update({"train.warmup_steps": max(1, round(settings["warmup_frac"] * steps)),
                    "train.max_grad_norm": settings["clip"],
                    "train.lr_schedule": "constant_with_warmup"})
    return out


def run_unit(unit: dict, settings: dict) -> dict:
    """Train one run, catch an abort, return the monitor's log and the run's outcome."""
    from ..training.health import TrainingDiverged

    cfg = make_config(overrides(unit["arm"], unit["lr"], settings), base=settings["base"],
                      seed=unit["seed"], name=f"stability-{unit['arm']}")
    history: list[dict] = []  # every step's log record, kept by a step hook: it survives an abort
    aborted = False
    with contextlib.redirect_stdout(io.StringIO()):  # its "update skipped" lines: in the log
        try:
            train_and_measure(cfg, at_steps=[], on_step=lambda trainer, rec: history.append(rec))
        except TrainingDiverged:
            aborted = True  # the run stopped; what it recorded until then is the record
    curve = monitor_log(history, cfg.train.spike_z)
    return {**judge(curve, aborted, settings["steps"]), "curve": curve}


def _finite(x) -> float | None:
    """JSON has no NaN: a non-finite number is stored as None."""
    return float(x) if x is not None and math.isfinite(x) else None


def monitor_log(history: list[dict], spike_z: float) -> dict:
    """The health monitor's per-step record as lists (one entry per logged step).

    z is the spike z-score the monitor tested, (loss_t - EMA_{t-1}) / std_{t-1}, rebuilt from
    the EMA and spread it logged after each step (training/health.py, ``check``).
    """
    z, prev = [], None
    for r in history:
        loss = r["loss"]
        if prev is None or not prev.get("loss_std") or not math.isfinite(loss):
            z.append(None)
        else:
            z.append(_finite((loss - prev["loss_ema"]) / prev["loss_std"]))
        if not r["skipped"]:
            prev = r
    return {"step": [r["step"] for r in history], "loss": [_finite(r["loss"]) for r in history],
            "loss_ema": [_finite(r["loss_ema"]) for r in history], "z": z,
            "grad_norm": [_finite(r["grad_norm"]) for r in history],
            "lr": [r["lr"] for r in history], "skipped": [bool(r["skipped"]) for r in history],
            "spike": [bool(r["spike"]) for r in history], "spike_z": spike_z}


def judge(curve: dict, aborted: bool, steps: int) -> dict:
    """The outcome of one run (the definition in the module docstring).

    curve: ``monitor_log``'s lists (only "step", "loss", "grad_norm", "skipped", "spike" are
    read); a non-finite loss is None there. aborted: the run raised TrainingDiverged.
    """
    losses = [x for x in curve["loss"] if x is not None]
    start = curve["loss"][0] if curve["loss"] else None
    end = float(np.mean(losses[-TAIL:])) if losses else None
    spiked = any(curve["spike"])
    peaked = start is not None and bool(losses) and max(losses) > PEAK_FACTOR * start
    if aborted or any(curve["skipped"]) or start is None:
        outcome = "nan"
    elif end is not None and end > END_FACTOR * start:
        outcome = "unrecovered"
    elif spiked or peaked:
        outcome = "recovered spike"
    else:
        outcome = "stable"
    return {"outcome": outcome, "failed": outcome in FAILS, "aborted": aborted,
            "flagged_spike": spiked, "peaked": peaked,
            "steps_done": len(curve["step"]), "steps": steps, "skipped": sum(curve["skipped"]),
            "spikes": sum(curve["spike"]), "loss_start": start, "loss_end": end,
            "loss_max": max(losses) if losses else None,
            "peak_ratio": max(losses) / start if losses and start else None,
            "end_ratio": end / start if end is not None and start else None,
            "grad_norm_max": max((g for g in curve["grad_norm"] if g is not None), default=None)}


def edge(failed: list[bool], lrs: list[float]) -> tuple[float, str]:
    """The edge of stability of one (seed, arm) from its runs over the sorted grid ``lrs``:
    the last LR before the first failure. Returns (edge, censoring): "" when the edge lies
    inside the grid, "below" (failed at the lowest LR: one grid step below it) or "above"
    (never failed: the highest LR, a lower bound)."""
    first = next((i for i, f in enumerate(failed) if f), None)
    if first is None:
        return lrs[-1], "above"
    if first == 0:
        step = lrs[1] / lrs[0] if len(lrs) > 1 else 2.0
        return lrs[0] / step, "below"
    return lrs[first - 1], ""


# ------------------------------------------------------------------ the summary
def _table(s: Summary) -> dict:
    """{(arm, lr): [output of each seed, in seed order]}."""
    out: dict = {}
    for u, o in sorted(zip(s.units, s.outputs), key=lambda p: p[0]["seed"]):
        out.setdefault((u["arm"], u["lr"]), []).append(o)
    return out


def pooled_difference(bare: np.ndarray, guarded: np.ndarray) -> float:
    """A share without guards minus with them, pooled over the LR grid.

    bare, guarded: (seeds,) each seed's share of runs (failed, or recovered spikes) over the
    whole LR grid, paired by seed (every seed ran every LR, so their mean is the pooled share).
    """
    return float(np.mean(bare) - np.mean(guarded))


def grid_step(lrs: list[float]) -> float:
    """The grid's mean step in log2 (0.66 on the full grid: 5 LRs per decade)."""
    return math.log2(lrs[-1] / lrs[0]) / (len(lrs) - 1) if len(lrs) > 1 else 1.0


def _pooled_arm(name: str, metric: str, per_seed: dict, n_lrs: int) -> Arm:
    diff = pooled_difference(per_seed["bare"], per_seed["guarded"])
    lo, hi = bootstrap_interval([per_seed["bare"], per_seed["guarded"]], pooled_difference,
                                paired=True)
    return Arm(name, f"{metric}, pooled over {n_lrs} LRs: bare minus guarded", diff, lo, hi,
               n=len(per_seed["bare"]), n_what="seeds (each over all LRs)", interval="bootstrap",
               per_seed=(per_seed["bare"] - per_seed["guarded"]).tolist())


def summarize(s: Summary) -> Outcome:
    lrs, table = sorted(s.settings["lrs"]), _table(s)
    n_seeds = len(s.seeds)
    arms, rows = [], []
    for lr in lrs:
        for arm, label in ARMS.items():
            outs = table[(arm, lr)]
            kinds = [o["outcome"] for o in outs]
            failed = [int(o["failed"]) for o in outs]
            lo, hi = wilson_interval(sum(failed), len(failed))
            arms.append(Arm(f"{label} @ lr {lr:g}", "share of runs that failed (NaN or "
                            "unrecovered)", sum(failed) / len(failed), lo, hi, n=len(failed),
                            n_what="seeds", interval="Wilson", per_seed=failed))
            counts = {k: kinds.count(k) for k in OUTCOMES}
            rows.append({"lr": lr, "arm": arm, "n": len(outs), "outcomes": counts,
                         "per_seed": kinds, "failed": sum(failed),
                         "diverged": sum(failed),  # = failed (the name lecture 03 reads)
                         "share": sum(failed) / len(failed), "lo": lo, "hi": hi,
                         "causes": {k: counts[k] for k in FAILS if counts[k]},
                         "recovered_spikes": counts["recovered spike"],
                         "loss_end": [o["loss_end"] for o in outs],
                         "peak_ratio": [o["peak_ratio"] for o in outs],
                         "end_ratio": [o["end_ratio"] for o in outs]})
    # seeds x LRs matrices of 0/1, paired by seed; pooled shares bootstrapped over seeds
    fail = {a: np.array([[int(table[(a, lr)][i]["failed"]) for lr in lrs]
                         for i in range(n_seeds)]) for a in ARMS}
    spike = {a: np.array([[int(table[(a, lr)][i]["outcome"] == "recovered spike") for lr in lrs]
                          for i in range(n_seeds)]) for a in ARMS}
    headline = _pooled_arm("failed share, no guards - guards", "share of runs that failed",
                           {a: m.mean(axis=1) for a, m in fail.items()}, len(lrs))
    spike_diff = _pooled_arm("recovered-spike share, no guards - guards",
                             "share of runs that spiked and recovered",
                             {a: m.mean(axis=1) for a, m in spike.items()}, len(lrs))
    # the edge of stability per seed and arm; its move as log2(guarded / bare), t over seeds
    edges = {a: [edge(list(fail[a][i].astype(bool)), lrs) for i in range(n_seeds)] for a in ARMS}
    log_edge = {a: np.log2([e for e, _ in edges[a]]) for a in ARMS}
    for a, label in ARMS.items():
        lo, hi = t_interval(log_edge[a])
        arms.append(Arm(f"edge of stability, {label}", "largest grid LR before the first "
                        "failure (geometric mean over seeds)", float(2 ** log_edge[a].mean()),
                        2 ** lo if math.isfinite(lo) else math.nan,
                        2 ** hi if math.isfinite(hi) else math.nan, n=n_seeds,
                        interval="t over seeds (of log2)",
                        per_seed=[e for e, _ in edges[a]]))
    move = log_edge["guarded"] - log_edge["bare"]
    lo, hi = t_interval(move)
    edge_move = Arm("edge of stability: log2(guarded / bare)", "log2 of the edge ratio, "
                    "paired by seed", float(move.mean()), lo, hi, n=n_seeds,
                    per_seed=move.tolist())
    arms += [headline, spike_diff, edge_move]
    half_step = grid_step(lrs) / 2
    out_rows = [
        claim_row("guards cut the share of runs that fail (NaN or unrecovered)", headline, 0.0,
                  "above", EQUIVALENCE,
                  rule=f"per seed the share of failed runs over all {len(lrs)} LRs, bare minus "
                       "guarded: reproduced if its paired bootstrap 95% interval over seeds lies "
                       f"above 0; not reproduced if it lies below 0 or within +-{EQUIVALENCE:g}; "
                       "else inconclusive"),
        claim_row("guards cut recovered spikes", spike_diff, 0.0, "above", EQUIVALENCE,
                  rule=f"per seed the share of recovered-spike runs over all {len(lrs)} LRs, "
                       "bare minus guarded: reproduced if its paired bootstrap 95% interval "
                       f"over seeds lies above 0; not reproduced if it lies below 0 or within "
                       f"+-{EQUIVALENCE:g}; else inconclusive"),
        claim_row("the edge of stability moves up", edge_move, 0.0, "above", half_step,
                  rule="per seed log2(edge guarded / edge bare), the edge being the largest grid "
                       "LR before the arm's first failure: reproduced if its 95% t interval over "
                       f"seeds lies above 0; not reproduced if it lies below 0 or within "
                       f"+-{half_step:.2g} (half a grid step); else inconclusive"),
    ]
    reason = f"{out_rows[0].reason}; {_story(rows, lrs)}"
    out_rows[0].reason = reason
    event = pick_event(table, lrs, s.seeds)
    figures = [plot_shares(rows, lrs, s.figure_dir / "divergence_share.png")]
    if event is not None:
        figures.append(plot_event(event, s.figure_dir / "health_log.png"))
    # the gates: the grid must reach from a learning rate where each arm is stable to one where
    # it fails, or there is no edge to move (fixed 2026-12-08)
    gates = {}
    for a in ARMS:
        gates[f"{a}_stable_at_lowest_lr"] = float(1 - fail[a][:, 0].mean())
        gates[f"{a}_failed_at_highest_lr"] = float(fail[a][:, -1].mean())
    details = {"rows": rows, "event": event, "lrs": lrs, "end_factor": END_FACTOR,
               "peak_factor": PEAK_FACTOR, "outcomes": list(OUTCOMES),
               "edges": {a: {"per_seed": [e for e, _ in edges[a]],
                             "censored": [c for _, c in edges[a]]} for a in ARMS},
               "grid_step_log2": grid_step(lrs)}
    return Outcome(arms, headline, out_rows[0].verdict, reason, figures, details,
                   rows=out_rows, gate_values=gates)


def _story(rows: list[dict], lrs: list[float]) -> str:
    """Per LR, 'lr: failed/n (+ recovered spikes) vs ...' - the numbers behind the pooled one."""
    by = {(r["arm"], r["lr"]): r for r in rows}

    def one(r: dict) -> str:
        k = r["recovered_spikes"]
        return f"{r['failed']}/{r['n']}" + (f" (+{k} recovered)" if k else "")

    return "failed (bare vs guarded) " + ", ".join(
        f"lr {lr:g}: {one(by[('bare', lr)])} vs {one(by[('guarded', lr)])}" for lr in lrs)


def pick_event(table: dict, lrs: list[float], seeds: list[int]) -> dict | None:
    """The failure to draw: the bare run at the lowest LR where one failed (its first seed that
    failed there), with the guarded run of the same seed and LR beside it."""
    for lr in lrs:
        for i, o in enumerate(table[("bare", lr)]):
            if o["failed"]:
                g = table[("guarded", lr)][i]
                return {"lr": lr, "seed": seeds[i], "outcome": o["outcome"],
                        "guarded_outcome": g["outcome"], "bare": o["curve"],
                        "guarded": g["curve"]}
    return None


# ------------------------------------------------------------------ figures
# matplotlib's Figure without pyplot: no backend is switched, so a notebook that runs the
# experiment keeps drawing its own figures inline
COLOURS = {"nan": "#b2182b", "unrecovered": "#ef8a62", "recovered spike": "#fddbc7"}


def plot_shares(rows: list[dict], lrs: list[float], path) -> str:
    """Per LR and arm, a stacked bar of the share of runs by outcome (NaN, unrecovered,
    recovered spike; the rest were stable), with the Wilson 95% interval of the failed share."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9.5, 4.2))
    ax = fig.subplots()
    by = {(r["arm"], r["lr"]): r for r in rows}
    x = np.arange(len(lrs))
    width = 0.38
    for k, (arm, hatch) in enumerate((("bare", ""), ("guarded", "//"))):
        pos = x + (k - 0.5) * width
        bottom = np.zeros(len(lrs))
        for outcome in ("nan", "unrecovered", "recovered spike"):
            share = np.array([by[(arm, lr)]["outcomes"][outcome] / by[(arm, lr)]["n"]
                              for lr in lrs])
            ax.bar(pos, share, width, bottom=bottom, color=COLOURS[outcome], hatch=hatch,
                   edgecolor="black", linewidth=0.6)
            bottom += share
        fail = np.array([by[(arm, lr)]["share"] for lr in lrs])
        err = np.clip([[fail[i] - by[(arm, lr)]["lo"] for i, lr in enumerate(lrs)],
                       [by[(arm, lr)]["hi"] - fail[i] for i, lr in enumerate(lrs)]], 0, None)
        ax.errorbar(pos, fail, yerr=err, fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.set_xticks(x, [f"{lr:g}" for lr in lrs])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("learning rate (AdamW)")
    ax.set_ylabel("share of runs")
    n = rows[0]["n"]
    ax.set_title(f"outcome of each run, n = {n} seed{'s' if n > 1 else ''} per bar "
                 "(whiskers: Wilson 95% of failed = NaN + unrecovered)", fontsize=9)
    handles = [Patch(facecolor=COLOURS[o], edgecolor="black", label=o) for o in COLOURS]
    handles += [Patch(facecolor="none", edgecolor="none", label="stable: the rest (empty)")]
    handles += [Patch(facecolor="white", edgecolor="black", label=f"left: {ARMS['bare']}"),
                Patch(facecolor="white", edgecolor="black", hatch="//",
                      label=f"right: {ARMS['guarded']}")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_event(event: dict, path) -> str:
    """The monitor's log of one failure: loss and its EMA, spike z-score, gradient norm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 7))
    axes = fig.subplots(3, 1, sharex=True)
    last = 0
    for arm, style, colour in (("bare", "-", "C0"), ("guarded", "--", "C1")):
        c = event[arm]
        if not c["step"]:
            continue
        st, last = c["step"], max(last, c["step"][-1])
        val = {k: [np.nan if v is None else v for v in c[k]] for k in ("loss", "loss_ema", "z",
                                                                          "grad_norm")}
        axes[0].plot(st, val["loss"], style, color=colour, alpha=0.4, label=f"{ARMS[arm]}: loss")
        axes[0].plot(st, val["loss_ema"], style, color=colour, lw=2,
                     label=f"{ARMS[arm]}: loss EMA")
        axes[1].plot(st, val["z"], style, color=colour, label=ARMS[arm])
        axes[2].plot(st, val["grad_norm"], style, color=colour,
                     label=f"{ARMS[arm]} (before clipping)")
        bad = [s_ for s_, k in zip(st, c["skipped"]) if k]  # non-finite: update skipped
        spikes = [s_ for s_, k in zip(st, c["spike"]) if k]
        if bad:
            axes[0].plot(bad, [val["loss_ema"][st.index(b)] for b in bad], "x", color=colour,
                         ms=9, mew=2, label=f"{ARMS[arm]}: non-finite, skipped")
        if spikes:
            axes[1].plot(spikes, [val["z"][st.index(p)] for p in spikes], "o", color=colour,
                         mfc="none", ms=9, mew=2, label=f"{ARMS[arm]}: spike flagged")
    start = event["bare"]["loss"][0] if event["bare"]["loss"] else None
    if start is not None:
        axes[0].axhline(PEAK_FACTOR * start, color="grey", ls=":",
                        label=f"{PEAK_FACTOR:g}x step-1 loss (peak)")
        axes[0].axhline(END_FACTOR * start, color="grey", ls="-.",
                        label=f"{END_FACTOR:g}x step-1 loss (end)")
    axes[1].axhline(event["bare"]["spike_z"], color="grey", ls=":", label="spike threshold")
    axes[1].axvspan(0, min(20, last), color="grey", alpha=0.1,
                    label="monitor settling (no spike test)")
    axes[1].set_yscale("symlog", linthresh=10)
    axes[2].axhline(1.0, color="grey", ls=":", label="clipping threshold (guarded arm)")
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("spike z-score")
    axes[2].set_ylabel("gradient norm")
    axes[2].set_xlabel("optimizer step")
    axes[0].set_title(f"health monitor log, lr {event['lr']:g}, seed {event['seed']}: "
                      f"bare {event['outcome']}, guarded {event['guarded_outcome']}", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=6.5, loc="best", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


EXPERIMENT = Experiment(
    name="stability",
    claim="On the course's laptop UNet, LR warm-up plus gradient clipping make a run less likely "
          "to fail (a NaN, or a loss that never comes back) than no warm-up and no clipping, "
          "over a grid of learning rates that brackets both arms' edge of stability, and move "
          "that edge to a higher learning rate.",
    rule="Each run's outcome, exclusive and tested in this order: nan (the health monitor "
         "skipped a non-finite step or aborted), unrecovered (its last-"
         f"{TAIL}-step mean loss ends above {END_FACTOR:g}x its step-1 loss), recovered spike "
         f"(the monitor flagged a spike or the loss rose above {PEAK_FACTOR:g}x its step-1 loss, "
         "but it ended fine), stable; a run fails if nan or unrecovered. Row 1 (headline): per "
         "seed the failed share over the whole LR grid, bare minus guarded; reproduced if its "
         "paired bootstrap 95% interval over seeds lies above 0, not reproduced if below 0 or "
         f"within +-{EQUIVALENCE:g}, else inconclusive. Row 2: the same for the share of recovered "
         "spikes. Row 3: per seed log2(edge guarded / edge bare), the edge being the largest grid "
         "LR before the arm's first failure; reproduced if its 95% t interval over seeds lies "
         "above 0, not reproduced if below 0 or within +- half a grid step, else inconclusive. "
         f"Gates: in each arm, the share of seeds not failing at the lowest LR >= {GATE:g} and "
         f"failing at the highest LR >= {GATE:g}; if one is missed every row is underpowered.",
    lecture="03_training_health",
    anchor="Goyal et al. 2017 (arXiv 1706.02677): without warm-up, large-LR training diverges "
           "early; Pascanu et al. 2013 (arXiv 1211.5063): clipping tames exploding gradients "
           "(qualitative claims, no single published number)",
    # measured in the pilot: ~150 s of one-thread worker time per seed over the grid (both
    # arms, the box loaded) x 10 seeds / 2 workers
    full_minutes=15.0, scales=SCALES, default_seeds={"fast": 1, "full": 10},
    units=units, run_unit=run_unit, summarize=summarize, version=2, rule_fixed="2026-12-08",
    gates=tuple(g for a, label in ARMS.items() for g in (
        Gate(f"{a} arm ({label}) at the lowest LR: share of seeds whose run did not fail",
             f"{a}_stable_at_lowest_lr", ">=", GATE),
        Gate(f"{a} arm ({label}) at the highest LR: share of seeds whose run failed (NaN or "
             "unrecovered)", f"{a}_failed_at_highest_lr", ">=", GATE))))
