"""The lifecycle pipeline (reference_impl/pipeline/) end to end on the ci preset, interrupted and
resumed; its read/write contract; and the README's commands, exactly as written, on its output."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from reference_impl.alignment.preferences import load_pairs
from reference_impl.cli import main
from reference_impl.pipeline import LIFECYCLE, STAGES

REPO = Path(__file__).resolve().parents[1]
SMALL = ["eval.num_prompts=4", "eval.reference_images=16", "curation.num_check_samples=4",
         "sft.num_eval_prompts=4", "dpo.num_pairs=8", "dpo.num_eval_prompts=8",
         "lora.num_eval_prompts=4", "lora.num_images=8", "train.checkpoint_every=4"]


def _run(out, *extra):
    args = ["pipeline", "--config", "ci", "--no-progress", "--set", f"output_dir={out}"]
    for s in SMALL:
        args += ["--set", s]
    return main(args + list(extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny pipeline run in <tmp>/runs/laptop, where the README's commands look for one;
    "interrupted" after pre-training, then resumed. Returns (cwd, run folder, first mtimes)."""
    cwd = tmp_path_factory.mktemp("user")
    out = cwd / "runs" / "laptop"
    assert _run(out, "--stop-after-stage", "pretrain") == 0
    done = sorted(p.parent.name for p in (out / "stages").glob("*/DONE"))
    assert done == ["00_web", "01_caption", "02_safety", "03_pretrain"]
    first = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("0[0-3]_*/metrics.json")}
    assert _run(out) == 0  # resumes: the finished stages are skipped, not redone
    return cwd, out, first


def test_pipeline_end_to_end_and_resume(run):
    _, out, first = run
    stages = out / "stages"
    assert {p: p.stat().st_mtime_ns for p in first} == first
    log = (out / "pipeline.log").read_text().splitlines()
    assert sum(" run " in line for line in log) == len(STAGES)  # every stage ran exactly once
    assert sum(" skip " in line for line in log) == 4
    assert all((stages / f"{i:02d}_{s}" / "DONE").exists() for i, s in enumerate(STAGES))

    m = {s: json.loads((stages / f"{i:02d}_{s}" / "metrics.json").read_text())
         for i, s in enumerate(STAGES)}
    assert m["safety"]["kept"] + m["safety"]["dropped"] == 256
    assert m["caption"]["useful_after"] > m["caption"]["useful_before"]
    assert m["curate"]["true_aesthetic_selected"] > m["curate"]["true_aesthetic_all"]
    assert m["sft"]["before"]["n"] == m["sft"]["after"]["n"] == 4
    assert len(load_pairs(stages / "06_pairs" / "pairs")) == 8
    w = m["dpo"]["win_rate_vs_sft"]
    assert w["n"] == 8 and w["ci95_low"] <= w["win_rate"] <= w["ci95_high"]
    assert 0 < m["lora"]["trainable_fraction"] < 0.1 and m["lora"]["merged_max_abs_diff"] < 1e-4
    assert m["lora"]["steps"] == 4  # LoRA runs on Trainer.fit: it checkpoints like any run
    assert (stages / "08_lora" / "checkpoints").is_dir()
    assert (stages / "08_lora" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    report = (out / "report.md").read_text()
    assert all(f"{i:02d} {s}" in report for i, s in enumerate(STAGES[:-1]))
    total = sum(m[s]["seconds"] for s in STAGES[:-1])
    assert f"| **pipeline (sum of the stages)** | **{total:.1f}**" in report  # make train's time
    html = (out / "report.html").read_text()
    assert "<table>" in html and "DPO win rate" in html and "<img" in html

    # --from-stage re-runs that stage (and later ones) only
    before = (stages / "09_safety_check" / "metrics.json").stat().st_mtime_ns
    assert _run(out, "--from-stage", "report") == 0
    assert (stages / "09_safety_check" / "metrics.json").stat().st_mtime_ns == before
    assert (out / "pipeline.log").read_text().splitlines()[-1].endswith("run report")


def test_the_final_model_is_exported_where_the_readme_says(run):
    _, out, _ = run
    final = out / "final"
    dpo_final = out / "stages" / "07_dpo" / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(
        [p.name for p in dpo_final.iterdir()] + ["lora"])
    assert (final / "unet_ema" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (dpo_final / "unet_ema" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (final / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((final / "unet_ema" / "config.json").read_text())["sample_size"] == 32


def readme_commands() -> list[str]:
    """The README's command lines that use a finished run (runs/laptop), comments removed."""
    text = (REPO / "README.md").read_text()
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line.startswith("python -m reference_impl")
            and "runs/laptop" in line]


def test_readme_commands_run_as_written_after_a_pipeline_run(run):
    cwd = run[0]
    commands = readme_commands()
    assert {c.split()[3] for c in commands} >= {"sample", "evaluate", "report"}, commands
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if " evaluate " in f" {command} ":
            measures = json.loads(done.stdout.strip().splitlines()[-1])
            assert measures["resolution"] == 32, measures  # the last trained size, not 16


def test_training_stages_on_two_processes_match_one(run, tmp_path):
    """make train launches its training stages on every core (pipeline/launch.py): 2 gloo
    ranks with half the batch each train the same model as 1 process (measured: weights within
    2.8e-7, float32 rounding of the gradient sums; the bound leaves 35x margin)."""
    from safetensors.torch import load_file

    one = run[1] / "stages" / "03_pretrain"
    two = tmp_path / "two"
    # one sampling thread: two would share the cores with the suite's other worker
    assert _run(two, "--stop-after-stage", "pretrain", "--set", "parallel.pipeline_processes=2",
                "--set", "parallel.sampling_threads=1") == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two / "stages" / "03_pretrain"))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert m1["steps"] == m2["steps"] and m1["val/prompt_acc"] == m2["val/prompt_acc"]
    assert m2["val/fid"] == pytest.approx(m1["val/fid"], rel=1e-5)
    for weights in ("unet", "unet_ema"):
        a, b = (load_file(d / "final" / weights / "diffusion_pytorch_model.safetensors")
                for d in (one, two / "stages" / "03_pretrain"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_batches_split_over_the_ranks_or_the_count_is_lowered():
    from reference_impl.config import ConfigError, load_config
    from reference_impl.pipeline import launch

    cfg = load_config("laptop", ["parallel.pipeline_processes=2"])
    assert launch.num_processes(cfg) == 2
    half = launch.per_rank(cfg, 2)
    assert [b // 2 for b in launch.global_batches(cfg)] == launch.global_batches(half)
    with pytest.raises(ConfigError, match="does not divide"):
        launch.num_processes(load_config("laptop", ["parallel.pipeline_processes=3"]))
    odd = load_config("laptop", ["parallel.pipeline_processes=0", "lora.batch_size=5",
                                 "lora.num_images=5"])
    assert launch.num_processes(odd) == 1  # auto: lowered until every batch divides


def test_one_process_trains_in_the_pipelines_own_process(tmp_path):
    """With one process, launch.py calls the training function a stage hands it, here; the
    ranks of a launched run find the same functions in stages.TRAIN (rank.py)."""
    from types import SimpleNamespace

    from reference_impl.config import load_config
    from reference_impl.pipeline import launch, stages

    p = SimpleNamespace(cfg=load_config("ci"), progress=False)
    assert launch.num_processes(p.cfg) == 1
    assert launch.train_on_every_core(p, "sft", tmp_path, lambda q, out: {"in": str(out)}) == \
        {"in": str(tmp_path)}
    assert not (tmp_path / launch.RESULT).exists()  # nothing launched
    assert set(stages.TRAIN) == {"pretrain", "sft", "dpo", "lora"}


def test_a_stage_can_open_only_what_it_declared(tmp_path):
    from reference_impl.config import load_config
    from reference_impl.pipeline import Pipeline

    pipe = Pipeline(load_config("ci", [f"output_dir={tmp_path}"]), progress=False)
    pipe.current = next(s for s in LIFECYCLE if s.name == "curate")
    assert pipe.input("safety/kept.json") == pipe.dir("safety") / "kept.json"
    assert pipe.input("curate/sft_positions.json")  # its own output
    with pytest.raises(RuntimeError, match="without declaring"):
        pipe.input("pairs/pairs")
    with pytest.raises(RuntimeError, match="later stage"):
        pipe.metrics("sft")
    every_read = {r for s in LIFECYCLE for r in s.reads}
    written = {f"{s.name}/{w}" for s in LIFECYCLE for w in s.writes}
    assert every_read <= written, every_read - written
