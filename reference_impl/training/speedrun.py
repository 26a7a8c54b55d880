"""The laptop speedrun: how fast can 2 CPU cores train a model that draws every prompt right?

``python -m reference_impl bench speedrun --config laptop --seeds 0 1 2 [--label "..."]``

The target was fixed on 2026-12-08, before any recipe change (issue 23), and never moves:

* **Clock.** Wall time of ``python -m reference_impl train --config C --no-validation``, from
  the command's start to its exported ``final/`` folder, with the command using every core on
  its own (``distributed/launch.py``: 2 gloo ranks of one thread on a 2-core laptop). Training,
  process start-up, imports, data and export count; evaluation does not (it runs afterwards,
  below), nor does periodic validation, which ``--no-validation`` switches off.
* **Bar.** The EMA weights of ``final/`` reach kind+colour+background prompt accuracy of at
  least ``TARGET`` when the evaluation probe reads back ``EVAL_PROMPTS`` samples at
  ``EVAL_RESOLUTION`` px, drawn from the validation prompts (balanced over kind, colour and
  background) with the fixed seed ``EVAL_SEED`` and the run's own sampler settings.
* **Evidence.** A record holds on every one of at least 3 training seeds (``seed``: the
  initial weights, the noise and the batch order; the ShapesWorld data stay the same). Its time
  is the slowest seed's. The domain-FID (probe features, ``EVAL_REFERENCE`` real images of the
  same prompts) is reported beside it but is not part of the bar.

Every run is appended to ``docs/speedrun/runs.jsonl`` (``--runs-file``; one-process pilots go
to ``pilots.jsonl``) with the commit, date and machine; ``--render`` rebuilds the tables of
``docs/speedrun.md`` from those files, so no number in them is typed by hand (modded-nanogpt's
record table, each line with its evidence).
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..config import load_config
from ..distributed import launch

TARGET = 0.9            # kind+colour+background prompt accuracy, EMA weights
EVAL_PROMPTS = 96
EVAL_RESOLUTION = 32
EVAL_SEED = 1234
EVAL_REFERENCE = 960    # real images for the domain-FID beside the bar
MIN_SEEDS = 3
RUNS = Path("docs/speedrun/runs.jsonl")      # records and tries: 2 ranks, the real clock
PILOTS = Path("docs/speedrun/pilots.jsonl")  # one seed, one process: what is worth 3 seeds
PAGE = Path("docs/speedrun.md")


def machine() -> str:
    """'<CPU model>, <n> cores' (or the GPU's name): which machine a time was measured on."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from ..distributed.cores import available_cores
    return f"{model}, {available_cores()} cores"


def commit() -> str:
    """The checkout's commit, '+' when the tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed_train(config: str, overrides: list[str], out: Path, processes: int | None) -> float:
    """Run the ``train`` command as a user would; its wall seconds (the speedrun's clock)."""
    cmd = [sys.executable, "-m", "reference_impl", "train", "--config", config,
           "--no-validation", "--no-progress", "--set", f"output_dir={out}",
           *[a for o in overrides for a in ("--set", o)]]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not (out / "final" / "unet_ema").is_dir():
        raise RuntimeError(f"speedrun: training failed (exit {done.returncode}): {' '.join(cmd)}")
    return seconds


def throughput(run_dir: Path) -> dict[str, float]:
    """Median training images/s per resolution from a run's metrics.jsonl: the machine's speed
    during the run, so a slow sitting shows beside its time (this VM's speed drifts)."""
    per: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("images_per_s") and r.get("resolution"):
            per.setdefault(r["resolution"], []).append(r["images_per_s"])
    return {f"img_s_{res}px": round(statistics.median(v), 1) for res, v in sorted(per.items())}


def warm_caption_cache(cfg) -> int:
    """Encode every training caption into the embedding cache before the clock starts, so each
    seed times training with the cache as any run after the first finds it (ShapesWorld's
    rich captions are a few hundred strings). Returns how many captions there are."""
    from ..data.curriculum import stage_dataset
    from ..models.text_encoder import TextEncoder

    text = TextEncoder(cfg.text.encoder, cfg.text.max_length)
    captions = set()
    for stage in cfg.train.curriculum:
        ds = stage_dataset(cfg.data, stage)
        captions |= {ds.scene(i)["caption"] for i in range(len(ds))}
    text.encode(sorted(captions))  # only the uncached ones are run through the encoder
    text.save_cache()  # writes only if something was new
    return len(captions)


def evaluate_final(final: Path, threads_n: int | None = None, grid: Path | None = None,
                   **sampler) -> dict:
    """The bar's measurement of an exported model (EMA weights): accuracy and domain-FID.

    ``sampler`` replaces the run's sampler settings (``sampler="dpm"``, ``steps=10``): the
    sampler is a lever too, and costs no training time. ``threads_n``: torch threads (default:
    every core; a pilot sharing the machine passes the cores it trained on)."""
    from ..diffusion.sampling import sample_checkpoint
    from ..distributed.cores import available_cores, threads
    from ..evaluation.probe import get_probe
    from ..evaluation.validation import Validator, save_grid

    validator = Validator(get_probe(progress=False), EVAL_RESOLUTION, EVAL_PROMPTS,
                          EVAL_SEED, EVAL_REFERENCE)
    with threads(threads_n or available_cores()), torch.no_grad():
        images = sample_checkpoint(final, list(validator.prompts), EVAL_SEED,
                                   resolution=EVAL_RESOLUTION, **sampler)
    m = validator.measure(images)
    if grid is not None:  # the 96 samples the bar was measured on, to look at
        save_grid(images, grid)
    per = {f"acc_{a}": m[f"prompt_acc/{a}"] for a in ("kind", "colour", "background")
           if m.get(f"prompt_acc/{a}") is not None}
    return {"acc_kcb": m["prompt_acc/kind_colour_background"], "acc_all": m["prompt_acc"], **per,
            "fid": m["fid"], "n": EVAL_PROMPTS, "n_reference": EVAL_REFERENCE}


def run(config: str, seeds: list[int], overrides: list[str], label: str,
        processes: int | None = None, record: Path | None = RUNS,
        keep: Path | None = None) -> list[dict]:
    """Train and measure ``config`` once per seed; each run's row (appended to ``record``).

    ``keep``: leave each seed's run folder in ``keep/seed<k>`` (else a scratch folder, removed).
    """
    cfg = load_config(config, overrides)  # a bad key fails here, before minutes of training
    n = processes or launch.self_launch_processes(cfg)
    warm_caption_cache(cfg)
    rows = []
    for seed in seeds:
        out = keep / f"seed{seed}" if keep else Path(tempfile.mkdtemp(prefix="speedrun-")) / "run"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: never resume an older one
        seconds = timed_train(config, [*overrides, f"seed={seed}"], out, processes)
        metrics = evaluate_final(out / "final", threads_n=n,
                                 grid=out / "speedrun_samples.png" if keep else None)
        metrics.update(throughput(out))
        if not keep:
            shutil.rmtree(out.parent, ignore_errors=True)
        row = {"label": label, "config": config, "overrides": overrides, "seed": seed,
               "processes": n, "steps": sum(s.steps for s in cfg.train.curriculum),
               "train_seconds": round(seconds, 1), **metrics,
               "meets_target": metrics["acc_kcb"] >= TARGET,
               "commit": commit(), "date": dt.date.today().isoformat(), "machine": machine()}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            with open(record, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def summarize(rows: list[dict]) -> dict:
    """One line of the record table: a label's runs over its seeds."""
    secs = [r["train_seconds"] for r in rows]
    return {"label": rows[0]["label"], "seeds": len(rows),
            "all_meet": all(r["meets_target"] for r in rows) and len(rows) >= MIN_SEEDS,
            "slowest_s": max(secs), "mean_s": statistics.fmean(secs),
            "acc_kcb": [r["acc_kcb"] for r in rows], "fid": [r["fid"] for r in rows],
            "steps": rows[0]["steps"], "commit": rows[0]["commit"], "date": rows[0]["date"],
            "machine": rows[0]["machine"], "overrides": rows[0]["overrides"],
            "processes": rows[0].get("processes", 2),
            "config": rows[0]["config"]}


def table(rows: list[dict]) -> str:
    """Markdown: one line per label, in the order first run."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    header = ("| change | config | steps | seeds | train s, slowest (mean) | kind+colour+bg "
              f"accuracy per seed (n={EVAL_PROMPTS}) | domain-FID per seed | all seeds >= "
              f"{TARGET} | img/s at 16 / 32 px per seed (median) | commit | date | machine |")
    lines = [header, "|" + "---|" * 12]
    for rs in groups.values():
        s = summarize(rs)
        acc = ", ".join(f"{a:.3f}" for a in s["acc_kcb"])
        fid = ", ".join(f"{f:.0f}" for f in s["fid"])
        extra = " ".join(f"`{o}`" for o in s["overrides"])
        if s["processes"] != 2:
            extra += f" ({s['processes']} process{'es' if s['processes'] > 1 else ''})"
        verdict = "yes" if s["all_meet"] else ("no" if s["seeds"] >= MIN_SEEDS or not all(
            r["meets_target"] for r in rs) else f"pilot ({s['seeds']} seed)")
        speed = ", ".join(f"{r.get('img_s_16px', '?')} / {r.get('img_s_32px', '?')}" for r in rs)
        lines.append(f"| {s['label']} | `{s['config']}` {extra} | {s['steps']} | {s['seeds']} | "
                     f"{s['slowest_s']:.0f} ({s['mean_s']:.0f}) | {acc} | {fid} | {verdict} | "
                     f"{speed} | {s['commit']} | {s['date']} | {s['machine']} |")
    return "\n".join(lines)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(page: Path = PAGE, tables: dict[str, Path] | None = None) -> None:
    """Rewrite each table of ``page`` (between ``<!-- name:start/end -->``) from its runs file."""
    tables = tables or {"runs": RUNS, "pilots": PILOTS}
    text = page.read_text()
    for name, record in tables.items():
        start, end = markers(name)
        if start not in text or end not in text:
            raise ValueError(f"{page} needs the markers {start} and {end}")
        rows = [json.loads(x) for x in record.read_text().splitlines() if x.strip()]
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table(rows) + "\n" + end + rest.split(end, 1)[1]
    page.write_text(text)
    if set(tables) == {"runs", "pilots"}:  # the page's figure: every run of both files
        everything = [json.loads(x) for p in tables.values()
                      for x in p.read_text().splitlines() if x.strip()]
        plot(everything, page.parent / "speedrun" / "accuracy.png")


def images_seen(row: dict) -> tuple[int, int]:
    """(images at 16 px or below, images above) a run trained on, from its config."""
    cfg = load_config(row["config"], row["overrides"])
    low = sum(st.steps * (st.batch_size or cfg.train.batch_size)
              for st in cfg.train.curriculum if st.resolution <= 16)
    high = sum(st.steps * (st.batch_size or cfg.train.batch_size)
               for st in cfg.train.curriculum if st.resolution > 16)
    return low, high


def plot(rows: list[dict], path: Path) -> Path:
    """What the tries show: each attribute's accuracy against the images a run trained on at
    16 px (x) and at 32 px (colour). Kind is the attribute the short runs miss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    seen = [images_seen(r) for r in rows]
    for ax, attr in zip(axes, ("kind", "colour", "background")):
        have = [(lo, hi, r) for (lo, hi), r in zip(seen, rows) if f"acc_{attr}" in r]
        dots = ax.scatter([lo / 1000 for lo, _, _ in have], [r[f"acc_{attr}"] for *_, r in have],
                          c=[hi / 1000 for _, hi, _ in have], cmap="viridis", vmin=0,
                          vmax=max(hi for _, hi in seen) / 1000, s=40,
                          edgecolors=["k" if r["meets_target"] else "none" for *_, r in have])
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{attr} (n={EVAL_PROMPTS} prompts a run)", fontsize=10)
        ax.set_xlabel("thousand images trained at 16 px")
    axes[0].set_ylabel("accuracy read back by the probe")
    axes[0].set_ylim(0, 1.03)
    fig.colorbar(dots, ax=axes, label="thousand images at 32 px")
    fig.suptitle("Every try and pilot (black edge: met the bar, kind+colour+background >= "
                 f"{TARGET})", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def bench_speedrun(args) -> dict:
    """``bench speedrun``: time-to-target of ``--config`` over ``--seeds`` (or ``--render``)."""
    if args.render:
        render()
        return {"benchmark": "speedrun", "rendered": str(PAGE)}
    if args.evaluate:  # an exported model again, perhaps with another sampler
        sampler = {k: v for k, v in (("sampler", args.sampler), ("steps", args.sample_steps),
                                     ("guidance_scale", args.guidance)) if v is not None}
        name = "_".join(f"{k}{v}" for k, v in sampler.items()) or "own"
        grid = args.evaluate.parent / f"speedrun_samples_{name}.png"
        return {"benchmark": "speedrun", "final": str(args.evaluate), **sampler,
                **evaluate_final(args.evaluate, grid=grid, **sampler), "grid": str(grid)}
    rows = run(args.config, args.seeds, args.overrides, args.label or args.config,
               processes=args.processes, record=None if args.no_record else Path(args.runs_file),
               keep=args.keep)
    s = summarize(rows)
    return {"benchmark": "speedrun", **{k: s[k] for k in (
        "label", "seeds", "slowest_s", "mean_s", "acc_kcb", "fid", "all_meet", "machine")},
            "target": f"kind+colour+background accuracy >= {TARGET} at {EVAL_RESOLUTION} px, "
                      f"n={EVAL_PROMPTS}, on every one of >= {MIN_SEEDS} seeds"}
