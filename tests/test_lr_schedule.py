"""training/lr_schedule.py: warmup-stable-decay has the shape its papers describe."""
import pytest
import torch

from reference_impl.training.lr_schedule import make_lr_schedule


def lrs(name, warmup, total, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_lr_schedule(opt, name, warmup, total, **kw)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_wsd_warms_up_holds_the_peak_then_anneals_linearly_to_zero():
    got = lrs("wsd", 10, 100, decay_fraction=0.3)
    # by hand (MiniCPM eq. for WSD, linear decay): warm-up 0..10, stable 10..70, decay 70..100
    want = [2.0 * s / 10 if s < 10 else 2.0 if s < 70 else 2.0 * (100 - s) / 30
            for s in range(100)]
    assert got == pytest.approx(want, abs=1e-9)


def test_other_names_are_diffusers_schedules():
    assert lrs("linear", 5, 50) == pytest.approx(
        [2.0 * s / 5 if s < 5 else 2.0 * (50 - s) / 45 for s in range(50)], abs=1e-9)


def test_wsd_that_cannot_fit_its_run_fails_clearly():
    with pytest.raises(ValueError, match="exceed the run's 20 steps"):
        lrs("wsd", 15, 20, decay_fraction=0.5)
