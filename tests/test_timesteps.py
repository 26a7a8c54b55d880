"""diffusion/objectives.sample_timesteps: uniform by default, logit-normal (SD3 eq. 19) on request."""
import numpy as np
import torch
from scipy import stats
from scipy.special import logit

from reference_impl.diffusion.objectives import sample_timesteps


def test_default_is_the_uniform_draw_the_trainer_always_made():
    a = sample_timesteps(500, 1000, torch.Generator().manual_seed(3))
    b = torch.randint(0, 1000, (500,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # bitwise: presets without the option train exactly as before


def test_logit_normal_matches_its_distribution():
    T, m, s = 1000, 0.3, 1.0
    t = sample_timesteps(20000, T, torch.Generator().manual_seed(0), s, m).numpy()
    assert t.min() >= 0 and t.max() <= T - 1
    # the continuous draw is floor(T * x), x ~ logit-normal(m, s): test x's CDF at bin centres
    x = (t + 0.5) / T
    ks = stats.kstest(logit(x), stats.norm(loc=m, scale=s).cdf)
    assert ks.statistic < 0.02, ks  # binning moves a point by at most 0.5/T in x
    assert abs(np.median(t) / T - 1 / (1 + np.exp(-m))) < 0.01
