"""The real trainer and CLI end to end on the tiny `ci` preset (seconds per run).

Resume is bit for bit on CPU; SIGKILL mid-training resumes from the last checkpoint; an
injected NaN is skipped and logged; N in a row abort with a clear message and keep the last
good checkpoint.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reference_impl.config import load_config
from reference_impl.training import checkpoint as ckpt
from reference_impl.training.health import TrainingDiverged
from reference_impl.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def cfg_for(tmp_path, *overrides):
    return load_config("ci", [f"output_dir={tmp_path}", *overrides])


def metrics(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_bit_for_bit(tmp_path):
    straight = Trainer(cfg_for(tmp_path / "a"), progress=False)
    straight.fit()
    first = Trainer(cfg_for(tmp_path / "b"), progress=False)
    first.fit(stop_after=6)  # interrupted in stage 2 (steps 4..8), checkpoint at step 6
    resumed = Trainer(cfg_for(tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 6 and resumed.stage_batches == 2
    resumed.fit()
    for (name, p), q in zip(straight.raw_unet.named_parameters(), resumed.raw_unet.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(straight.ema.shadow.parameters(), resumed.ema.shadow.parameters()):
        assert torch.equal(p, q)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]


def test_final_export_loads_in_diffusers(tmp_path):
    from diffusers import UNet2DConditionModel

    t = Trainer(cfg_for(tmp_path), progress=False)
    t.fit()
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "final" / "unet_ema")
    for p, q in zip(unet.parameters(), t.ema.shadow.parameters()):
        assert torch.equal(p, q)
    rec = metrics(tmp_path)[-1]
    for key in ("loss", "loss_ema", "grad_norm", "lr", "images_per_s", "data_wait_fraction", "mfu"):
        assert key in rec, key
    assert any(k.startswith("loss_t/") for k in rec)
    assert rec["resolution"] == 32 and metrics(tmp_path)[0]["resolution"] == 16  # the curriculum
    assert list((tmp_path / "tensorboard").glob("events.*"))


def test_injected_nan_is_skipped_and_logged(tmp_path):
    t = Trainer(cfg_for(tmp_path, "train.inject_nan_at=[2]"), progress=False)
    before = None

    def snapshot():
        return [p.detach().clone() for p in t.raw_unet.parameters()]

    t.fit(stop_after=2)
    before = snapshot()
    t.fit(stop_after=1)  # step 3 (index 2) has the NaN: weights must not move
    for p, q in zip(before, t.raw_unet.parameters()):
        assert torch.equal(p, q)
    skipped = [r for r in metrics(tmp_path) if r.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["step"] == 3
    t.fit()
    assert t.health.bad_total == 1 and (tmp_path / "final").exists()


def test_nans_in_a_row_abort_and_keep_last_good_checkpoint(tmp_path):
    t = Trainer(cfg_for(tmp_path, "train.inject_nan_at=[4, 5, 6]", "train.max_bad_steps=3"),
                progress=False)
    with pytest.raises(TrainingDiverged, match="3 non-finite"):
        t.fit()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_0000004"
    assert torch.isfinite(ckpt.load_checkpoint(latest)["unet"]["conv_in.weight"]).all()


def run_cli(*args, timeout=600, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "reference_impl", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False, **kw)


def test_cli_train_then_sample(tmp_path):
    out = run_cli("train", "--config", "ci", "--set", f"output_dir={tmp_path}", "--no-validation",
                  "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "final" / "unet_ema" / "config.json").exists()
    png = tmp_path / "s.png"
    out = run_cli("sample", "--checkpoint", str(tmp_path / "final"), "--prompt",
                  "one large red circle on a dark background", "--num", "2", "--out", str(png))
    assert out.returncode == 0, out.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 100


def test_sigkill_mid_training_resumes_from_last_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "reference_impl", "train", "--config", "ci", "--no-validation",
           "--no-progress", "--set", f"output_dir={tmp_path}", "--set", "train.checkpoint_every=1",
           "--set", "train.curriculum=[{steps: 40, resolution: 16}]"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "checkpoints").glob("step_0000003")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None, "no checkpoint was written before the kill"
    killed_at = int(latest.name.split("_")[1])
    assert killed_at < 40
    out = run_cli("train", "--config", "ci", "--no-validation", "--no-progress", "--resume",
                  "--set", f"output_dir={tmp_path}", "--set", "train.checkpoint_every=20",
                  "--set", "train.curriculum=[{steps: 40, resolution: 16}]")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout and (tmp_path / "final").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_bad_config_key_fails_before_any_work(tmp_path):
    out = run_cli("train", "--config", "ci", "--set", "train.lr_shedule=cosine",
                  "--set", f"output_dir={tmp_path}", timeout=120)
    assert out.returncode == 2
    assert "unknown key train.lr_shedule" in out.stderr and "lr_schedule" in out.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
