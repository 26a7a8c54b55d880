"""EMA, LR warm-up, health monitor and checkpoints, each against its oracle."""
import math
import os

import pytest
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from reference_impl.config import ConfigError, load_config
from reference_impl.training import checkpoint as ckpt
from reference_impl.training.ema import EMA
from reference_impl.training.health import HealthMonitor, TrainingDiverged


@pytest.mark.parametrize("warmup, kw", [(True, dict(inv_gamma=1.0, power=2 / 3)),
                                        (True, dict(inv_gamma=1.0, power=3 / 4)),
                                        (False, {})])
def test_ema_decay_sequence_equals_diffusers(warmup, kw):
    model = torch.nn.Linear(3, 2)
    ours = EMA(model, decay=0.999, use_warmup=warmup, update_after_step=5, min_decay=0.1, **kw)
    ref = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=warmup, update_after_step=5,
                   min_decay=0.1, **kw)
    for step in range(1, 3000, 7):
        assert ours.get_decay(step) == pytest.approx(ref.get_decay(step), abs=1e-15)


def test_ema_weights_equal_diffusers_after_training_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    ours = EMA(model, decay=0.99, use_warmup=True, power=2 / 3)
    ref = EMAModel(model.parameters(), decay=0.99, use_ema_warmup=True, power=2 / 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(50):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.update(model)
        ref.step(model.parameters())
    for p, q in zip(ours.shadow.parameters(), ref.shadow_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_ema_state_round_trip():
    model = torch.nn.Linear(2, 2)
    e = EMA(model)
    e.update(model)
    e2 = EMA(torch.nn.Linear(2, 2))
    e2.load_state_dict(e.state_dict())
    assert e2.optimization_step == 1
    assert torch.equal(e2.shadow.weight, e.shadow.weight)


def test_lr_warmup_sequence():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = get_scheduler("cosine", opt, num_warmup_steps=10, num_training_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:11] == pytest.approx([1e-3 * k / 10 for k in range(11)])
    assert lrs[55] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_constant_schedule_with_warmup_is_rejected():
    with pytest.raises(ConfigError, match="constant_with_warmup"):
        load_config("ci", ["train.lr_schedule=constant", "train.warmup_steps=10"])
    load_config("ci", ["train.lr_schedule=constant", "train.warmup_steps=0"])


def test_health_monitor_skips_nan_and_aborts_after_n():
    h = HealthMonitor(max_bad_steps=3)
    assert h.check(1.0, 0.5)["ok"]
    assert not h.check(float("nan"), 0.5)["ok"]
    assert not h.check(1.0, float("inf"))["ok"]
    assert h.check(1.0, 0.5)["ok"]  # a good step resets the count
    h.check(float("nan"), None)
    h.check(float("nan"), None)
    with pytest.raises(TrainingDiverged, match="3 non-finite"):
        h.check(float("inf"), None)


def test_health_monitor_flags_a_spike():
    h = HealthMonitor(warmup=10, spike_z=4.0)
    g = torch.Generator().manual_seed(0)
    flags = [h.check(1.0 + 0.01 * torch.randn(1, generator=g).item(), 1.0)["spike"] for _ in range(200)]
    assert sum(flags) == 0
    assert h.check(2.0, 1.0)["spike"]
    assert h.loss_ema == pytest.approx(1.0, abs=0.05)


def test_checkpoint_keep_last_and_load(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_0000002", "step_0000003"]
    assert torch.equal(ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["w"], torch.full((2,), 3.0))


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"a": torch.ones(1), "b": torch.ones(1)})
    real_save = torch.save
    calls = []

    def dying_save(obj, f, *a, **k):  # the process "dies" after writing the first file
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"a": torch.zeros(1), "b": torch.zeros(1)})
    monkeypatch.setattr(torch, "save", real_save)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_0000001"
    assert torch.equal(ckpt.load_checkpoint(latest)["a"], torch.ones(1))
    removed = ckpt.remove_partial(tmp_path)
    assert len(removed) == 1 and not any(p.exists() for p in removed)


def test_incomplete_checkpoint_is_refused(tmp_path):
    p = ckpt.save_checkpoint(tmp_path, 5, {"a": torch.ones(1)})
    os.remove(p / "COMPLETE")
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(p)
