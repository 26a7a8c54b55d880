"""A toy experiment for the runner's tests: two arms, a deterministic number per seed."""
import os
from pathlib import Path

from reference_impl.evaluation.stats import (
    bootstrap_interval,
    decide,
    mean,
    ratio_of_means,
    t_interval,
)
from reference_impl.experiments.runner import (
    Arm,
    Experiment,
    Gate,
    Outcome,
    claim_row,
    constraint_row,
    size_row,
)


def units(settings, seeds):
    return [{"arm": arm, "seed": s} for arm in ("slow", "fast") for s in seeds]


def run_unit(unit, settings):
    calls = Path(os.environ["TOY_CALLS"])  # the tests count how often a unit really ran
    with open(calls, "a") as f:
        f.write(f"{unit['arm']}-{unit['seed']}\n")
    steps = settings["base"] * (2.0 if unit["arm"] == "slow" else 1.0) + unit["seed"]
    return {"steps": steps}


def summarize(s):
    from matplotlib.figure import Figure

    per = {a: [o["steps"] for o in outs] for a, outs in s.by_arm().items()}
    arms = [Arm(a, "steps to threshold", mean(v), *t_interval(v), n=len(v), per_seed=v)
            for a, v in per.items()]
    lo, hi = bootstrap_interval([per["slow"], per["fast"]], ratio_of_means, paired=True)
    ratio = Arm("speed-up", "steps(slow) / steps(fast)", ratio_of_means(per["slow"], per["fast"]),
                lo, hi, n=len(s.seeds), interval="bootstrap")
    verdict, reason = decide(lo, hi, 1.0, "above")
    gap = [a - b for a, b in zip(per["slow"], per["fast"])]
    gap_arm = Arm("gap", "steps(slow) - steps(fast)", mean(gap), *t_interval(gap), n=len(gap))
    rows = [claim_row("direction", ratio, 1.0, "above"), size_row(ratio, 3.0),
            constraint_row("gap at most 1000 steps", gap_arm, 1000.0, "below")]
    fig = Figure()
    fig.subplots().bar(list(per), [mean(v) for v in per.values()])
    fig.savefig(s.figure_dir / "bars.png")
    return Outcome(arms + [ratio], ratio, verdict, reason, ["bars.png"], {"per": per}, rows=rows,
                   gate_values={"slow_steps": mean(per["slow"])})


EXPERIMENT = Experiment(
    name="toy", claim="The fast arm needs fewer steps than the slow one.",
    rule="reproduced if the bootstrap interval of the speed-up lies above 1",
    lecture="00_painter_analogy", anchor="none (a test)", full_minutes=0.1,
    scales={"fast": {"base": 10}, "full": {"base": 100}}, default_seeds={"fast": 3, "full": 4},
    units=units, run_unit=run_unit, summarize=summarize, rule_fixed="2026-12-08",
    gates=(Gate("slow arm: mean steps", "slow_steps", ">=", 15.0),))
