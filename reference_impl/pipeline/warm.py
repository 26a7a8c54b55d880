"""The idle core at the start of a fresh run: train the evaluation probe there.

On a fresh cache, pre-training's validator needs the evaluation probe (evaluation/probe.py,
about a minute on one thread), and it used to be trained at the start of pre-training, by one
rank on one thread while the other rank waited. The stages before pre-training - the web, the
auto-captioner's training, the safety filter - also run on one thread. So on two cores one core
idled for about a minute and a half.

Here the pipeline starts the probe's training in a second process as it begins, on one thread,
while its own process runs the first stages. The stages that need the probe wait for that
process (``wait``) and then load the probe from the cache. It is the same training - one
thread, the same seed - so the same probe, bit for bit, as a rank would have trained
(tests/test_pipeline_warm.py). If the second process fails, ``get_probe`` trains the probe
where it is first needed, as before; nothing is lost but the time.

    python -m reference_impl.pipeline.warm [PROBE_CONFIG_JSON]   # the second process
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the stages that never use the probe: they run while it trains
OVERLAPPED = ("web", "caption", "safety")
LOG = "warm_probe.log"


def start(processes: int, run_dir: Path, cfg=None) -> subprocess.Popen | None:
    """Start training the probe (``cfg``: a ``ProbeConfig``, default the evaluation's) in a
    second process if there is a second core for it and the cache lacks it; its output goes
    to ``run_dir/warm_probe.log``. Returns the process, or None."""
    from ..evaluation.probe import ProbeConfig, probe_path

    cfg = cfg or ProbeConfig()
    if processes < 2 or probe_path(cfg).exists():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "reference_impl.pipeline.warm", json.dumps(dataclasses.asdict(cfg))]
    with open(run_dir / LOG, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait(proc: subprocess.Popen | None, run_dir: Path) -> float | None:
    """Wait for the probe's process; returns the seconds waited, or None if there was nothing
    left to wait for (no process, or one already waited for). A failure is reported: the probe
    is then trained where it is first needed."""
    if proc is None or proc.returncode is not None:
        return None
    t0 = time.perf_counter()
    if proc.wait() != 0:
        print(f"training the evaluation probe in a second process failed (exit {proc.returncode}, "
              f"see {run_dir / LOG}); it is trained where it is first needed instead")
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen | None) -> None:
    """End the probe's process early (the pipeline failed or was interrupted). Its cache file
    is written atomically and its build lock is released by the OS: nothing half-made stays."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait()


def main(argv: list[str]) -> int:
    from ..evaluation.probe import ProbeConfig, get_probe

    fields = json.loads(argv[0]) if argv else {}
    cfg = ProbeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    get_probe(cfg, progress=True)  # trains under the probe's build lock and writes the cache
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
