"""The speedrun's machinery (training/speedrun.py) and the record preset: nothing here is timed.

The record table's times are measured by ``bench speedrun`` and kept in docs/speedrun/runs.jsonl;
these tests check that the preset trains, that the bench measures what its target says (the
EMA export, n prompts, kind+colour+background), and that the table's verdicts follow the rule
(every one of >= 3 seeds at the bar).
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from reference_impl.config import load_config
from reference_impl.training import speedrun
from reference_impl.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def test_record_preset_loads_and_trains_a_few_steps(tmp_path):
    cfg = load_config("laptop", [f"output_dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    before = [p.detach().clone() for p in trainer.raw_unet.parameters()]
    trainer.fit(stop_after=2)
    assert trainer.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.raw_unet.parameters()))
    assert not (tmp_path / "final").exists()  # two steps of many: nothing exported yet


def test_train_command_launches_itself_on_two_processes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "reference_impl", "train", "--config", "ci",
                          "--processes", "2", "--no-validation", "--no-progress",
                          "--set", f"output_dir={tmp_path}"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "training on 2 processes" in out.stdout and "[8, 8]" in out.stdout
    per_rank = yaml.safe_load((tmp_path / "launch_config.yaml").read_text())
    assert per_rank["train"]["batch_size"] == load_config("ci").train.batch_size // 2
    assert (tmp_path / "final" / "unet_ema" / "config.json").exists()
    assert out.stdout.count("trainable parameters") == 1  # rank 0 speaks for the run


def test_bench_measures_the_ema_export_on_n_prompts(tmp_path, probe):
    runs = tmp_path / "runs.jsonl"
    rows = speedrun.run("ci", [0], ["train.curriculum=[{steps: 2, resolution: 16}]"], "tiny",
                        processes=1, record=runs)
    row = json.loads(runs.read_text())
    assert row == rows[0]
    assert row["n"] == speedrun.EVAL_PROMPTS >= 96 and row["seed"] == 0 and row["steps"] == 2
    assert 0.0 <= row["acc_kcb"] <= 1.0 and row["fid"] > 0 and row["train_seconds"] > 0
    assert row["meets_target"] == (row["acc_kcb"] >= speedrun.TARGET)


def row(label, seed, acc, secs):
    return {"label": label, "config": "laptop", "overrides": [], "seed": seed, "steps": 10,
            "train_seconds": secs, "acc_kcb": acc, "acc_all": acc, "fid": 30.0, "n": 96,
            "meets_target": acc >= speedrun.TARGET, "commit": "abc", "date": "2026-12-08",
            "machine": "test CPU"}


def test_a_record_needs_every_one_of_three_seeds_and_counts_the_slowest(tmp_path):
    rows = [row("fast", 0, 0.95, 100), row("fast", 1, 0.92, 130), row("fast", 2, 0.99, 110),
            row("one miss", 0, 0.95, 90), row("one miss", 1, 0.85, 90), row("one miss", 2, 0.97, 90),
            row("two seeds", 0, 0.95, 80), row("two seeds", 1, 0.95, 80)]
    s = speedrun.summarize(rows[:3])
    assert s["all_meet"] and s["slowest_s"] == 130
    assert not speedrun.summarize(rows[3:6])["all_meet"]
    assert not speedrun.summarize(rows[6:])["all_meet"]  # too few seeds for a record
    runs, page = tmp_path / "runs.jsonl", tmp_path / "page.md"
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start, end = speedrun.markers("runs")
    page.write_text(f"intro\n{start}\nold\n{end}\nafter\n")
    speedrun.render(page, {"runs": runs})
    text = page.read_text()
    lines = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| yes |" in lines["fast"] and "| no |" in lines["one miss"]
    assert "pilot (2 seed)" in lines["two seeds"]
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
