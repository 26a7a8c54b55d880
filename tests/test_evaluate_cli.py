"""The real CLI: ``python -m reference_impl evaluate`` and ``report``, as subprocesses."""
import json
import math
import subprocess
import sys

import pytest
import torch
from torchvision.utils import save_image

from reference_impl.evaluation.report import plot_run
from reference_impl.evaluation.validation import real_images, validation_prompts

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cached_probe(probe):
    return probe  # trained (or loaded) once, so the subprocesses load it from the cache


def cli(*args):
    return subprocess.run([sys.executable, "-m", "reference_impl", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


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




def run_in_process(argv, capsys):
    from reference_impl.cli import build_parser
    from reference_impl.evaluation import commands

    rc = commands.main(build_parser().parse_args(argv))
    return rc, capsys.readouterr().out


def test_bad_input_fails_with_a_clear_message(tmp_path, capsys):
    rc, out = run_in_process(["evaluate", "--images", str(tmp_path / "missing.pt")], capsys)
    assert rc == 2 and "must be a folder of images or a .pt file" in out
    torch.save({"pictures": torch.zeros(2, 3, 8, 8)}, tmp_path / "bad.pt")
    rc, out = run_in_process(["evaluate", "--images", str(tmp_path / "bad.pt")], capsys)
    assert rc == 2 and "'images'" in out


def test_checkpoint_is_sampled_on_the_validation_prompts(tmp_path, monkeypatch, capsys):
    from reference_impl.diffusion import sampling

    calls = []

    def fake_sample_checkpoint(checkpoint_dir, prompts, seed):
        calls.append((checkpoint_dir, list(prompts), seed))
        return real_images(prompts, len(prompts), 16, seed=seed)

    monkeypatch.setattr(sampling, "sample_checkpoint", fake_sample_checkpoint)
    rc, out = run_in_process(["evaluate", "--checkpoint", str(tmp_path), "--num-samples", "12",
                              "--seed", "4", "--reference", "50", "--json"], capsys)
    assert rc == 0 and calls == [(tmp_path, validation_prompts(12), 4)]
    assert json.loads(out.splitlines()[-1])["prompt_accuracy"]["all_correct"] == 1.0


def test_checkpoint_without_engine_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "reference_impl.diffusion.sampling", None)  # import fails
    rc, out = run_in_process(["evaluate", "--checkpoint", str(tmp_path)], capsys)
    assert rc == 2 and "needs the pre-training engine" in out


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
    proc = cli("report", run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {"loss.png", "grad_norm.png", "lr.png", "fid.png", "prompt_acc.png", "overview.png"}
    assert {p.split("/")[-1] for p in proc.stdout.split()} == names
    assert all((run / "figures" / n).stat().st_size > 3000 for n in names)


def test_report_rejects_a_malformed_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: .* 'step'"):
        plot_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nowhere")
