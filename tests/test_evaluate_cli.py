"""The real CLI: ``python -m reference_impl evaluate`` and ``report``, as subprocesses."""
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from torchvision.utils import save_image

from reference_impl.evaluation.probe import get_probe
from reference_impl.evaluation.report import plot_run
from reference_impl.evaluation.validation import real_images, validation_prompts

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cached_probe():
    return get_probe(progress=False)  # trained (or loaded) once, so the subprocesses load it


def cli(*args):
    return subprocess.run([sys.executable, "-m", "reference_impl", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def last_json(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_a_pt_file(tmp_path):
    prompts = validation_prompts(24)
    images = real_images(prompts, 24, 32, seed=7)  # real images of the prompts
    torch.save({"images": images, "captions": prompts}, tmp_path / "samples.pt")
    out = last_json(cli("evaluate", "--images", tmp_path / "samples.pt", "--reference", 200, "--json"))
    assert out["num_images"] == 24 and out["prompt_accuracy"]["all_correct"] == 1.0
    assert out["domain_fid"]["name"] == "domain-FID (probe features)"
    assert (out["domain_fid"]["n1"], out["domain_fid"]["n2"]) == (24, 200)


def test_evaluate_a_png_folder_with_metadata(tmp_path):
    prompts = validation_prompts(12)
    images = real_images(prompts, 12, 16, seed=3)
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for i, (img, text) in enumerate(zip(images, prompts)):
            save_image((img + 1) / 2, tmp_path / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": text}) + "\n")
    out = last_json(cli("evaluate", "--images", tmp_path, "--reference", 100, "--json"))
    assert out["num_images"] == 12 and out["resolution"] == 16
    assert out["prompt_accuracy"]["all_correct"] == 1.0  # PNG quantisation does not fool it
    assert out["brightness"]["frac_dark"] > 0.2


def test_bad_input_fails_with_a_clear_message(tmp_path):
    proc = cli("evaluate", "--images", tmp_path / "missing.pt")
    assert proc.returncode == 2 and "error:" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("reference_impl.diffusion.sampling") is not None,
                    reason="the pre-training engine is present")
def test_checkpoint_without_engine_says_so(tmp_path):
    proc = cli("evaluate", "--checkpoint", tmp_path)
    assert proc.returncode == 2 and "needs the pre-training engine" in proc.stdout


def test_report_writes_figures(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(0, 200, 10):
            row = {"step": step, "loss": 1 / (1 + step / 50), "grad_norm": 2.0, "lr": 1e-4}
            row["loss_ema"] = row["loss"] * 1.01
            if step % 50 == 0:
                row.update({"val/fid": 50 * math.exp(-step / 80), "val/prompt_acc": step / 200})
            f.write(json.dumps(row) + "\n")
    names = {p.name for p in plot_run(run)}
    assert names == {"loss.png", "grad_norm.png", "lr.png", "fid.png", "prompt_acc.png",
                     "overview.png"}
    assert all((run / "figures" / n).stat().st_size > 3000 for n in names)

    (run / "figures" / "fid.png").unlink()
    proc = cli("report", run)
    assert proc.returncode == 0 and (run / "figures" / "fid.png").is_file()
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    assert cli("report", run).returncode == 2
