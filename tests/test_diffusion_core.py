"""Diffusion core against its oracles: diffusers' SNR, the min-SNR formulas, offset noise,
the v-target, classifier-free guidance and guidance rescale."""
import pytest
import torch
from diffusers.training_utils import compute_snr

from reference_impl.diffusion.objectives import (
    drop_captions,
    min_snr_weights,
    sample_noise,
    training_target,
)
from reference_impl.diffusion.sampling import classifier_free_guidance, make_sampler
from reference_impl.diffusion.schedule import SCHEDULES, make_scheduler, snr


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_snr_equals_diffusers_compute_snr(schedule, zero_snr):
    sched = make_scheduler(schedule, prediction_type="v_prediction", zero_terminal_snr=zero_snr)
    t = torch.arange(0, 1000, 7)
    ours = snr(sched.alphas_cumprod, t)
    ref = compute_snr(sched, t)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-8)
    if zero_snr:
        assert snr(sched.alphas_cumprod, torch.tensor([999])).item() == 0.0


def test_min_snr_weights_match_the_formulas():
    s = torch.tensor([0.01, 0.5, 1.0, 4.0, 5.0, 25.0, 1e4])
    g = 5.0
    clipped = torch.minimum(s, torch.full_like(s, g))
    torch.testing.assert_close(min_snr_weights(s, g, "epsilon"), clipped / s)
    torch.testing.assert_close(min_snr_weights(s, g, "v_prediction"), clipped / (s + 1))
    torch.testing.assert_close(min_snr_weights(s, g, "sample"), clipped)
    # low noise (large SNR) is down-weighted; the eps weight is exactly 1 below gamma
    assert min_snr_weights(s, g, "epsilon")[:5].eq(1).all()
    assert min_snr_weights(s, g, "epsilon")[-1] == pytest.approx(5e-4)


def test_min_snr_matches_the_diffusers_example_recipe():
    """diffusers' train_text_to_image.py: mse_loss_weights = min(snr, g) / snr (eps),
    / (snr + 1) for v-prediction."""
    sched = make_scheduler("linear")
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(0))
    s = compute_snr(sched, t)
    base = torch.stack([s, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(min_snr_weights(snr(sched.alphas_cumprod, t), 5.0, "epsilon"), base / s)
    torch.testing.assert_close(min_snr_weights(snr(sched.alphas_cumprod, t), 5.0, "v_prediction"),
                               base / (s + 1))


def test_min_snr_guards_zero_snr():
    w = min_snr_weights(torch.tensor([0.0, 1.0]), 5.0, "epsilon")
    assert torch.isfinite(w).all() and w[0] == 1.0
    assert min_snr_weights(torch.tensor([0.0]), 5.0, "v_prediction")[0] == 0.0


def test_noise_offset_statistics():
    """Offset noise: per-image, per-channel means have variance 1/(HW) + s^2 instead of 1/(HW)."""
    g = torch.Generator().manual_seed(0)
    b, c, h, w, s = 4000, 3, 8, 8, 0.1
    plain = sample_noise((b, c, h, w), 0.0, g)
    offset = sample_noise((b, c, h, w), s, g)
    var_plain = plain.mean(dim=(2, 3)).var().item()
    var_offset = offset.mean(dim=(2, 3)).var().item()
    assert var_plain == pytest.approx(1 / (h * w), rel=0.06)
    assert var_offset == pytest.approx(1 / (h * w) + s**2, rel=0.06)
    # the offset is constant within a channel: demeaned noise is still unit Gaussian
    demeaned = offset - offset.mean(dim=(2, 3), keepdim=True)
    assert demeaned.var().item() == pytest.approx(1 - 1 / (h * w), rel=0.02)


def test_v_target_equals_diffusers_velocity():
    sched = make_scheduler("squaredcos_cap_v2", prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    torch.testing.assert_close(training_target("v_prediction", x0, eps, sched.alphas_cumprod, t),
                               sched.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-6)
    assert training_target("epsilon", x0, eps, sched.alphas_cumprod, t) is eps
    assert training_target("sample", x0, eps, sched.alphas_cumprod, t) is x0


def test_cfg_scale_one_is_exactly_conditional():
    g = torch.Generator().manual_seed(2)
    u, c = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 3.0), u + 3 * (c - u))


def test_guidance_rescale_matches_diffusers():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(3)
    u, c = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    guided = u + 5 * (c - u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 5.0, rescale=0.7),
                               rescale_noise_cfg(guided, c, guidance_rescale=0.7))


def test_caption_dropout_rate():
    caps = ["x"] * 20000
    dropped = drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    assert abs(dropped.count("") / len(caps) - 0.1) < 0.01
    assert drop_captions(caps[:5], 0.0) == caps[:5]


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_samplers_share_the_training_schedule(sampler):
    train = make_scheduler("squaredcos_cap_v2", prediction_type="v_prediction", zero_terminal_snr=True)
    s = make_sampler(train, sampler, steps=10)
    assert s.config.prediction_type == "v_prediction"
    torch.testing.assert_close(s.alphas_cumprod, train.alphas_cumprod)
    assert len(s.timesteps) == 10 and int(s.timesteps[0]) == 999  # trailing: starts at pure noise


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [4, 15])
def test_ddim_timesteps_equal_diffusers_for_each_spacing(spacing, steps):
    """Oracle: diffusers' DDIMScheduler with the same spacing visits the same timesteps."""
    from diffusers import DDIMScheduler

    train = make_scheduler("squaredcos_cap_v2")
    ours = make_sampler(train, "ddim", steps=steps, timestep_spacing=spacing)
    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing,
                        clip_sample=False, set_alpha_to_one=False)
    ref.set_timesteps(steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    if spacing in ("trailing", "linspace"):
        assert int(ours.timesteps[0]) == 999  # starts from pure noise (Lin et al. 2024, sec. 3.3)


def test_leading_four_step_ddim_starts_at_750():
    """The issue's numbers: leading 4-step DDIM starts at t = 750, cosine abar = 0.14 there."""
    train = make_scheduler("squaredcos_cap_v2")
    s = make_sampler(train, "ddim", steps=4, timestep_spacing="leading")
    assert s.timesteps.tolist() == [750, 500, 250, 0]
    assert float(train.alphas_cumprod[750]) == pytest.approx(0.143, abs=0.001)
    assert make_sampler(train, "ddim", steps=4, timestep_spacing="trailing").timesteps.tolist() \
        == [999, 749, 499, 249]


def test_spacing_is_stored_in_the_schedule_and_checked():
    assert make_scheduler().config.timestep_spacing == "leading"
    assert make_scheduler(prediction_type="v_prediction",
                          zero_terminal_snr=True).config.timestep_spacing == "trailing"
    train = make_scheduler(timestep_spacing="trailing")
    assert int(make_sampler(train, "ddim", steps=4).timesteps[0]) == 999
    with pytest.raises(ValueError, match="timestep_spacing='middle'"):
        make_scheduler(timestep_spacing="middle")
    with pytest.raises(ValueError, match="timestep_spacing='middle'"):
        make_sampler(make_scheduler(), "ddim", steps=4, timestep_spacing="middle")
    zsnr = make_scheduler(prediction_type="v_prediction", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="zero terminal SNR needs"):
        make_sampler(zsnr, "ddim", steps=4, timestep_spacing="leading")


def test_config_rejects_an_unknown_spacing():
    from reference_impl.config import ConfigError, load_config

    assert load_config("ci").diffusion.timestep_spacing is None  # leading, or trailing for zsnr
    with pytest.raises(ConfigError, match="diffusion.timestep_spacing='middle' is not allowed"):
        load_config("ci", ["diffusion.timestep_spacing=middle"])
    zsnr = ["diffusion.zero_terminal_snr=true", "diffusion.prediction_type=v_prediction"]
    with pytest.raises(ConfigError, match="never visits t = T"):
        load_config("ci", zsnr + ["diffusion.timestep_spacing=leading"])


def test_the_trainer_samples_with_the_configured_spacing(tmp_path):
    from reference_impl.config import load_config
    from reference_impl.training.trainer import Trainer

    for i, (sets, want) in enumerate([([], "leading"), (["diffusion.timestep_spacing=trailing"], "trailing"),
                       (["diffusion.zero_terminal_snr=true",
                         "diffusion.prediction_type=v_prediction"], "trailing")]):
        cfg = load_config("ci", sets + [f"output_dir={tmp_path / str(i)}"])
        trainer = Trainer(cfg, progress=False)
        assert trainer.noise_scheduler.config.timestep_spacing == want, sets
