"""The lifecycle, stage by stage: ``python -m reference_impl pipeline --config laptop``.

    web -> caption -> safety -> pretrain -> curate -> sft -> pairs -> dpo -> lora
        -> safety_check -> export -> report

This file only orchestrates: the stages, in order, are ``LIFECYCLE`` (``lifecycle.py``); what
each stage does is a short function in ``stages.py`` that calls the library (curation, training,
alignment, adapters, evaluation); the report page is ``evaluation/report.py``. Imports run one
way - this file -> stages.py -> launch.py, and both of the first two -> lifecycle.py - and a
launched training rank starts at ``rank.py``, which nothing imports. Each stage *declares* what
it reads (files of earlier stages) and writes (files in its own folder,
``<output_dir>/stages/NN_name/``); a stage can open only what it declared, and a stage that
does not write what it declared fails. Every stage also writes ``metrics.json`` (its measured
numbers, with sample sizes) and, last, a ``DONE`` marker.

A rerun skips every stage with a marker (resumable; the training stages also resume from their
own checkpoints); ``--from-stage NAME`` deletes that stage and the later ones and runs them
again. ``pipeline.log`` records which stages ran and which were skipped. On a fresh cache
with a second core, the evaluation probe trains there during the first stages (``warm.py``).
The lifecycle's final model - the DPO model, with the LoRA adapter beside it in ``lora/`` - is
exported to ``<output_dir>/final``, where ``sample`` and ``evaluate --checkpoint`` find it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError, load_config
from ..distributed import cores
from . import warm
from .lifecycle import LIFECYCLE, STAGES, Stage  # re-exported: the pipeline's public names


def add_arguments(p) -> None:
    p.add_argument("--config", default="laptop", help="preset name (ci, laptop, ...) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--from-stage", choices=STAGES, default=None,
                   help="re-run this stage and every later one, even if finished")
    p.add_argument("--stop-after-stage", choices=STAGES, default=None,
                   help="stop once this stage is done (resume later by running again)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


class Pipeline:
    """Runs the stages of ``LIFECYCLE`` in order for one config; holds the models the stages
    share (loaded lazily, once) and hands each stage only the inputs it declared."""

    def __init__(self, cfg, progress: bool = True):
        if cfg.data.source != "shapes":
            raise ConfigError(f"data.source={cfg.data.source!r}: the pipeline runs on ShapesWorld")
        if cfg.data.balance != "none":
            raise ConfigError("data.balance must be 'none' in the pipeline: the filtered subset "
                              "has no per-scene class list for the balanced sampler")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "REFERENCE_IMPL_STAGE" not in os.environ:
            raise RuntimeError("run the pipeline as one process: it launches its training "
                               "stages on every core itself (parallel.pipeline_processes)")
        self.cfg, self.progress = cfg, progress
        self.root = Path(cfg.output_dir)
        self.res = cfg.train.curriculum[-1].resolution
        c = cfg.curation
        self.world = dataclasses.replace(cfg.data.world, caption_mix=list(c.web_caption_mix),
                                         unsafe_fraction=c.web_unsafe_fraction)
        self.cache: dict = {}  # models several stages share (see stages.py)
        self.current: Stage | None = None

    # ------------------------------------------------------------------ a stage's inputs
    def dir(self, name: str) -> Path:
        return self.root / "stages" / f"{STAGES.index(name):02d}_{name}"

    def input(self, ref: str) -> Path:
        """The path of ``"stage/file"``, which the running stage must have declared: one it
        reads, or one it writes itself (a stage may sample the model it just trained)."""
        own = self.current is not None and ref in {f"{self.current.name}/{w}" for w in self.current.writes}
        if not own and (self.current is None or ref not in self.current.reads):
            who = self.current.name if self.current else "no stage"
            raise RuntimeError(f"{who} reads {ref!r} without declaring it in LIFECYCLE")
        stage, name = ref.split("/", 1)
        return self.dir(stage) / name

    def read_json(self, ref: str):
        return json.loads(self.input(ref).read_text())

    def metrics(self, name: str) -> dict:
        """An earlier stage's metrics.json (every stage may read those)."""
        if self.current is not None and STAGES.index(name) >= STAGES.index(self.current.name):
            raise RuntimeError(f"{self.current.name} reads the metrics of a later stage, {name}")
        return json.loads((self.dir(name) / "metrics.json").read_text())

    def lazy(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _log(self, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "pipeline.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    # ------------------------------------------------------------------ running
    def run(self, from_stage: str | None = None, stop_after: str | None = None) -> list[str]:
        """Run the unfinished stages in order; returns the names of the stages that ran."""
        from . import launch

        if from_stage is not None:
            for name in STAGES[STAGES.index(from_stage):]:
                if self.dir(name).exists():
                    shutil.rmtree(self.dir(name))
        ran = []
        last = STAGES.index(stop_after) if stop_after else len(STAGES) - 1
        todo = [s for s in LIFECYCLE[: last + 1] if not (self.dir(s.name) / "DONE").exists()]
        # a fresh cache: the evaluation probe trains on a second core during the first stages
        probe_job = warm.start(launch.num_processes(self.cfg), self.root) if any(
            s.name not in warm.OVERLAPPED for s in todo) else None
        try:
            self._run_stages(last, probe_job, ran)
        finally:
            warm.stop(probe_job)  # only still running if a stage failed before needing it
        if "text" in self.cache:
            self.cache["text"].save_cache()
        return ran

    def _run_stages(self, last: int, probe_job, ran: list[str]) -> None:
        from . import launch, stages

        bar = tqdm(LIFECYCLE[: last + 1], desc="pipeline", disable=not self.progress,
                   dynamic_ncols=True)
        for stage in bar:
            bar.set_postfix_str(stage.name)
            out = self.dir(stage.name)
            if (out / "DONE").exists():
                self._log(f"skip {stage.name} (done)")
                continue
            missing = [r for r in stage.reads if not self._exists(r)]
            if missing:
                raise RuntimeError(f"stage {stage.name} needs {missing}, which an earlier stage "
                                   "should have written; rerun with --from-stage of that stage")
            waited = None if stage.name in warm.OVERLAPPED else warm.wait(probe_job, self.root)
            if waited is not None:
                self._log(f"waited {waited:.1f} s for the evaluation probe's training "
                          f"(exit {probe_job.returncode}, see {warm.LOG})")
            out.mkdir(parents=True, exist_ok=True)
            self._log(f"run {stage.name}")
            t0, self.current = time.perf_counter(), stage
            try:
                # this process samples and measures only while no training rank runs: it may
                # use every core the ranks use (distributed/cores.py)
                with cores.threads(launch.sampling_threads(self.cfg)):
                    metrics = getattr(stages, stage.name)(self, out)
            finally:
                self.current = None
            unwritten = [w for w in stage.writes if not (out / w).exists()]
            if unwritten:
                raise RuntimeError(f"stage {stage.name} did not write {unwritten}")
            metrics["seconds"] = time.perf_counter() - t0
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            (out / "DONE").write_text("done\n")  # last: a stage without it reruns from scratch
            ran.append(stage.name)

    def _exists(self, ref: str) -> bool:
        stage, name = ref.split("/", 1)
        return (self.dir(stage) / name).exists()


def main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    pipe = Pipeline(cfg, progress=not args.no_progress)
    ran = pipe.run(from_stage=args.from_stage, stop_after=args.stop_after_stage)
    print(f"ran {len(ran)} stage(s): {', '.join(ran) or 'none (all done)'}; output in {pipe.root}")
    if (pipe.root / "report.md").exists():
        print(f"report: {pipe.root / 'report.md'}")
        print("\n".join(line for line in (pipe.root / "report.md").read_text().splitlines()
                        if line.startswith("|")))
    return 0
