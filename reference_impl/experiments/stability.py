"""Experiment `stability`: do LR warm-up and gradient clipping keep a run from diverging?

The seed's NaN scenario. Two arms train the same tiny UNet from the same initial weights on
the same batches and noise (one seed = one of each), over a grid of learning rates:

  bare     no warm-up, no clipping, constant LR  (train.warmup_steps=0, max_grad_norm=0)
  guarded  linear warm-up over the first quarter of the run, then constant; the gradient
           norm clipped to 1 (Goyal et al. 2017, arXiv 1706.02677, sec. 2.2, for warm-up;
           Pascanu et al. 2013, arXiv 1211.5063, eq. 7 (alg. 1), for clipping)

Warm-up matters for Adam in particular: its first updates divide by a second-moment estimate
made from one or two gradients, so every weight moves by about the full LR at once (Liu et al.
2020, "On the variance of the adaptive learning rate and beyond", arXiv 1908.03265, sec. 3).

A run *diverges* (decided per run, by a definition fixed before the full run) if any of
  nan      a non-finite loss or gradient: the health monitor (training/health.py) skipped a
           step, or aborted the run with TrainingDiverged after max_bad_steps in a row;
  spike    the monitor flagged a loss spike (z-score above train.spike_z, tested once its
           statistics have settled, after HealthMonitor.warmup = 20 steps);
  peak     the loss rose above PEAK_FACTOR x its step-1 loss at any step: the blow-up the
           monitor cannot see while it settles - the very steps warm-up exists for;
  end      the mean loss of the last 5 steps ends above END_FACTOR x the step-1 loss.
The step-1 loss is the untrained model's, the same for both arms of a seed. The two factors
were set after a scan (3 seeds, LR 0.03-0.3: bare runs peaked at 5-75x their start and mostly
recovered) and before the full run.
Each arm's share of diverged runs at each LR gets a Wilson interval (n = seeds).

No probe, no sampling: divergence is read from the record of every step (a step hook on
Trainer.fit), which keeps this cheap.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from ..evaluation.stats import bootstrap_interval, decide, wilson_interval
from .common import make_config, train_and_measure
from .runner import Arm, Experiment, Gate, Outcome, Summary

ARMS = {"bare": "no warm-up, no clipping", "guarded": "warm-up + clipping"}
END_FACTOR = 2.0  # "ends far above where it started": last-5 mean loss > 2 x the step-1 loss
PEAK_FACTOR = 10.0  # a spike at any step: loss > 10 x the step-1 loss
CAUSES = ("nan", "spike", "peak", "end")  # in the order they are tested
TAIL = 5  # steps averaged for the end of a run

SCALES = {
    # fast: the lecture's and CI's run - the two ends of the grid, one seed (~15 s)
    "fast": {"base": "ci", "preset": "tiny", "resolution": 16, "batch_size": 4, "steps": 24,
             "warmup_frac": 0.25, "clip": 1.0, "lrs": [0.01, 1.0]},
    # full: the LR grid picked by a scan (see the report in docs/results.md) from "both stable"
    # to "both diverge"
    "full": {"base": "ci", "preset": "tiny", "resolution": 16, "batch_size": 4, "steps": 40,
             "warmup_frac": 0.25, "clip": 1.0, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0]},
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
    """Train one run, catch a divergence, return the monitor's log and the verdict on the run."""
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
    """Did this run diverge, and why (the definition in the module docstring)."""
    losses = [x for x in curve["loss"] if x is not None]
    start = curve["loss"][0]
    end = float(np.mean(losses[-TAIL:])) if losses else None
    if aborted or any(curve["skipped"]):
        cause = "nan"
    elif any(curve["spike"]):
        cause = "spike"
    elif start is not None and losses and max(losses) > PEAK_FACTOR * start:
        cause = "peak"
    elif start is not None and end is not None and end > END_FACTOR * start:
        cause = "end"
    else:
        cause = None
    return {"diverged": cause is not None, "cause": cause, "aborted": aborted,
            "steps_done": len(curve["step"]), "steps": steps, "skipped": sum(curve["skipped"]),
            "spikes": sum(curve["spike"]), "loss_start": start, "loss_end": end,
            "loss_max": max(losses) if losses else None,
            "peak_ratio": max(losses) / start if losses and start else None,
            "grad_norm_max": max((g for g in curve["grad_norm"] if g is not None), default=None)}


# ------------------------------------------------------------------ the summary
def _table(s: Summary) -> dict:
    """{(arm, lr): [output of each seed, in seed order]}."""
    out: dict = {}
    for u, o in sorted(zip(s.units, s.outputs), key=lambda p: p[0]["seed"]):
        out.setdefault((u["arm"], u["lr"]), []).append(o)
    return out


def pooled_difference(bare: np.ndarray, guarded: np.ndarray) -> float:
    """Share diverged without guards minus with them, pooled over the LR grid.

    bare, guarded: (seeds,) each seed's share of diverged runs over the whole LR grid, paired
    by seed (every seed ran every LR, so the mean of these is the pooled share).
    """
    return float(np.mean(bare) - np.mean(guarded))


def summarize(s: Summary) -> Outcome:
    lrs, table = s.settings["lrs"], _table(s)
    arms, rows = [], []
    for lr in lrs:
        for arm, label in ARMS.items():
            outs = table[(arm, lr)]
            hits = [int(o["diverged"]) for o in outs]
            lo, hi = wilson_interval(sum(hits), len(hits))
            arms.append(Arm(f"{label} @ lr {lr:g}", "share of runs that diverged",
                            sum(hits) / len(hits), lo, hi, n=len(hits), n_what="seeds",
                            interval="Wilson", per_seed=hits))
            causes = [o["cause"] for o in outs if o["cause"]]
            rows.append({"lr": lr, "arm": arm, "diverged": sum(hits), "n": len(hits),
                         "share": sum(hits) / len(hits), "lo": lo, "hi": hi,
                         "causes": {c: causes.count(c) for c in sorted(set(causes))},
                         "loss_end": [o["loss_end"] for o in outs],
                         "peak_ratio": [o["peak_ratio"] for o in outs]})
    # seeds x LRs matrices of 0/1: the pooled difference, bootstrapped over seeds (paired)
    mat = {a: np.array([[int(table[(a, lr)][i]["diverged"]) for lr in lrs]
                        for i in range(len(s.seeds))]) for a in ARMS}
    per_seed = {a: m.mean(axis=1) for a, m in mat.items()}  # (seeds,)
    diff = pooled_difference(per_seed["bare"], per_seed["guarded"])
    lo, hi = bootstrap_interval([per_seed["bare"], per_seed["guarded"]], pooled_difference,
                                paired=True)
    headline = Arm("diverged share, no guards - guards", "share of runs that diverged, "
                   f"pooled over {len(lrs)} LRs: bare minus guarded", diff, lo, hi,
                   n=len(s.seeds), n_what="seeds (each over all LRs)", interval="bootstrap",
                   per_seed=(per_seed["bare"] - per_seed["guarded"]).tolist())
    verdict, reason = decide(lo, hi, 0.0, "above", equivalence=0.05)
    reason = f"{reason}; {_story(rows, lrs)}"
    event = pick_event(table, lrs, s.seeds)
    figures = [plot_shares(rows, lrs, s.figure_dir / "divergence_share.png")]
    if event is not None:
        figures.append(plot_event(event, s.figure_dir / "health_log.png"))
    # the gates: the grid must reach from a learning rate where unguarded training is stable to
    # one where it fails, or the comparison of guards has no edge to move (fixed 2026-12-08)
    low, high = mat["bare"][:, 0], mat["bare"][:, -1]
    gates = {"bare_stable_at_lowest_lr": float(1 - low.mean()),
             "bare_diverged_at_highest_lr": float(high.mean())}
    return Outcome(arms + [headline], headline, verdict, reason, figures,
                   {"rows": rows, "event": event, "lrs": lrs, "end_factor": END_FACTOR},
                   gate_values=gates)


def _story(rows: list[dict], lrs: list[float]) -> str:
    """Per LR, 'lr: k/n vs k/n' - the numbers behind the pooled one."""
    by = {(r["arm"], r["lr"]): r for r in rows}
    return "diverged (bare vs guarded) " + ", ".join(
        f"lr {lr:g}: {by[('bare', lr)]['diverged']}/{by[('bare', lr)]['n']} vs "
        f"{by[('guarded', lr)]['diverged']}/{by[('guarded', lr)]['n']}" for lr in lrs)


def pick_event(table: dict, lrs: list[float], seeds: list[int]) -> dict | None:
    """The divergence to draw: the bare run at the lowest LR that diverged (first seed), with
    the guarded run of the same seed and LR beside it."""
    for lr in lrs:
        for i, o in enumerate(table[("bare", lr)]):
            if o["diverged"]:
                return {"lr": lr, "seed": seeds[i], "cause": o["cause"], "bare": o["curve"],
                        "guarded": table[("guarded", lr)][i]["curve"],
                        "guarded_cause": table[("guarded", lr)][i]["cause"]}
    return None


# ------------------------------------------------------------------ figures
# matplotlib's Figure without pyplot: no backend is switched, so a notebook that runs the
# experiment keeps drawing its own figures inline
def plot_shares(rows: list[dict], lrs: list[float], path) -> str:
    """Share of diverged runs against the LR, one line per arm, Wilson 95% intervals."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for k, arm in enumerate(ARMS):
        r = [x for x in rows if x["arm"] == arm]
        x = np.array(lrs) * (1.08 if k else 1 / 1.08)  # side by side, not on top of each other
        y = np.array([v["share"] for v in r])
        err = np.array([[v["share"] - v["lo"] for v in r], [v["hi"] - v["share"] for v in r]])
        err = np.clip(err, 0.0, None)  # Wilson's bound at k = n is 1 - 1e-16, not 1
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=ARMS[arm])
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("learning rate (AdamW)")
    ax.set_ylabel("share of runs that diverged")
    ax.set_title(f"divergence (NaN, spike, peak or end), n = {rows[0]['n']} seeds per point")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_event(event: dict, path) -> str:
    """The monitor's log of one divergence: loss and its EMA, spike z-score, gradient norm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 7))
    axes = fig.subplots(3, 1, sharex=True)
    last = 0
    for arm, style, colour in (("bare", "-", "C0"), ("guarded", "--", "C1")):
        c = event[arm]
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
                      f"bare run {event['cause']}, guarded {event['guarded_cause'] or 'stable'}")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


EXPERIMENT = Experiment(
    name="stability",
    claim="LR warm-up plus gradient clipping make a run far less likely to diverge (NaN or a "
          "loss spike) than no warm-up and no clipping, over a range of learning rates.",
    rule="A run diverges if the health monitor skips a non-finite step or aborts, flags a loss "
         f"spike, its loss rises above {PEAK_FACTOR:g}x its step-1 loss at any step, or its "
         f"last-{TAIL}-step mean loss ends above {END_FACTOR:g}x its step-1 loss. "
         "Reproduced if the paired bootstrap 95% interval (over seeds) of the diverged share "
         "without guards minus with guards, pooled over the LR grid, lies above 0; not "
         "reproduced if it lies below 0 or within +-0.05; otherwise inconclusive.",
    lecture="03_training_health",
    anchor="Goyal et al. 2017 (arXiv 1706.02677): without warm-up, large-LR training diverges "
           "early; Pascanu et al. 2013 (arXiv 1211.5063): clipping tames exploding gradients "
           "(qualitative claims, no single published number)",
    full_minutes=7.0, scales=SCALES, default_seeds={"fast": 1, "full": 6},
    units=units, run_unit=run_unit, summarize=summarize, version=1, rule_fixed="2026-12-01",
    gates=(Gate("bare arm at the lowest LR: share of seeds that did not diverge",
                "bare_stable_at_lowest_lr", ">=", 0.66),
           Gate("bare arm at the highest LR: share of seeds that diverged",
                "bare_diverged_at_highest_lr", ">=", 0.66)))
