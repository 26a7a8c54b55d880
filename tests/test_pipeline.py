"""The lifecycle pipeline (pipeline.py) end to end on the ci preset, interrupted and resumed."""
import json

from reference_impl.alignment.preferences import load_pairs
from reference_impl.cli import main
from reference_impl.pipeline import STAGES

SMALL = ["eval.num_prompts=4", "eval.reference_images=16", "curation.num_check_samples=4",
         "sft.num_eval_prompts=4", "dpo.num_pairs=8", "dpo.num_eval_prompts=8",
         "lora.num_eval_prompts=4", "lora.num_images=8", "train.checkpoint_every=4"]


def _run(out, *extra):
    args = ["pipeline", "--config", "ci", "--no-progress", "--set", f"output_dir={out}"]
    for s in SMALL:
        args += ["--set", s]
    return main(args + list(extra))


def test_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    stages = out / "stages"
    # "interrupted" after pre-training: only the first four stages are done
    assert _run(out, "--stop-after-stage", "pretrain") == 0
    done = sorted(p.parent.name for p in stages.glob("*/DONE"))
    assert done == ["00_web", "01_caption", "02_safety", "03_pretrain"]
    first = {p: p.stat().st_mtime_ns for p in stages.glob("0[0-3]_*/metrics.json")}

    assert _run(out) == 0  # resumes: the finished stages are skipped, not redone
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
    assert (stages / "08_lora" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    report = (out / "report.md").read_text()
    assert all(f"{i:02d} {s}" in report for i, s in enumerate(STAGES[:-1]))
    assert "DPO win rate" in (out / "report.html").read_text()

    # --from-stage re-runs that stage (and later ones) only
    before = (stages / "09_safety_check" / "metrics.json").stat().st_mtime_ns
    assert _run(out, "--from-stage", "report") == 0
    assert (stages / "09_safety_check" / "metrics.json").stat().st_mtime_ns == before
    assert (out / "pipeline.log").read_text().splitlines()[-1].endswith("run report")
