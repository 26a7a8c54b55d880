"""Measures (metrics.py) and the validation hook (validation.py)."""
import json
from collections import Counter

import pytest
import torch

from reference_impl.data.captions import parse_caption
from reference_impl.data.shapes import make_scene, render
from reference_impl.data.vocab import BACKGROUNDS, COLOURS, KINDS
from reference_impl.evaluation.metrics import (
    brightness_stats,
    class_proportions,
    diversity,
    evaluate_images,
    prompt_accuracy,
    sharpness_contrast,
)
from reference_impl.evaluation.validation import Validator, validation_prompts


def ground_truth(prompts, resolution):
    """The clean render of each prompt, (B, 3, R, R) in [-1, 1]."""
    scenes = []
    for p in prompts:
        a = parse_caption(p)
        scenes.append(make_scene(KINDS[a["kind"]], COLOURS[a["colour"]],
                                 BACKGROUNDS[a["background"]], count=a["count"]))
    return render(scenes, resolution) * 2 - 1


def test_validation_prompts_are_balanced_and_cover_every_combination():
    prompts = validation_prompts(72)
    parsed = [parse_caption(p) for p in prompts]
    assert len({(a["kind"], a["colour"], a["background"]) for a in parsed}) == 72
    first12 = parsed[:12]
    assert Counter(a["kind"] for a in first12) == {k: 3 for k in range(4)}
    assert Counter(a["background"] for a in first12) == {b: 4 for b in range(3)}
    assert Counter(a["colour"] for a in first12) == {c: 2 for c in range(6)}


def test_prompt_accuracy_counts_only_what_the_caption_names():
    preds = {"kind": torch.tensor([0, 1]), "colour": torch.tensor([0, 0]),
             "count": torch.tensor([0, 2]), "size": torch.tensor([1, 1]),
             "background": torch.tensor([0, 2]), "style": torch.tensor([0, 0]),
             "unsafe": torch.tensor([0, 1])}
    acc = prompt_accuracy(preds, ["one large red circle on a dark background", "a square"])
    # caption 2 names kind (right) and count 1 (wrong: the probe saw three)
    assert acc["kind"] == 1.0 and acc["count"] == 0.5 and acc["colour"] == 1.0
    assert "unsafe" not in acc and acc["all_correct"] == 0.5 and acc["n"] == 2


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_prompt_accuracy_is_perfect_on_ground_truth_renders(probe, resolution):
    prompts = validation_prompts(72)
    acc = prompt_accuracy(probe.predict(ground_truth(prompts, resolution)), prompts)
    assert acc["all_correct"] == 1.0, acc


def test_prompt_accuracy_is_about_chance_on_noise(probe):
    prompts = validation_prompts(72)
    noise = torch.rand(72, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    acc = prompt_accuracy(probe.predict(noise), prompts)
    for attr, n in (("kind", 4), ("colour", 6), ("background", 3)):
        assert abs(acc[attr] - 1 / n) < 0.15, (attr, acc[attr])
    assert acc["all_correct"] < 0.05


def test_class_proportions_and_total_variation():
    out = class_proportions(torch.tensor([0] * 9 + [1]), target=[0.5, 0.5, 0, 0])
    assert out["shares"]["circle"] == 0.9 and out["shares"]["square"] == 0.1
    assert out["total_variation"] == pytest.approx(0.4)
    assert class_proportions(torch.arange(4))["total_variation"] == pytest.approx(0.0)


def test_brightness_stats_on_constant_images():
    levels = torch.tensor([0.1, 0.5, 0.5, 0.9])  # on [0, 1]
    images = (levels.view(4, 1, 1, 1) * 2 - 1).expand(4, 3, 8, 8)
    b = brightness_stats(images)
    assert b["mean"] == pytest.approx(0.5, abs=1e-6)
    assert b["frac_dark"] == 0.25 and b["frac_bright"] == 0.25
    assert sum(b["histogram"]) == pytest.approx(1.0) and b["histogram"][5] == 0.5


def test_diversity_and_sharpness(probe):
    prompts = validation_prompts(24)
    images = ground_truth(prompts, 32)
    assert diversity(probe.features(images[:1].expand(5, -1, -1, -1))) < 1e-4
    assert diversity(probe.features(images)) > 1.0
    from reference_impl.evaluation.fid import corrupt

    sharp, blurred = sharpness_contrast(images), sharpness_contrast(corrupt(images, "blur", 1.5))
    assert blurred["sharpness"] < 0.5 * sharp["sharpness"]


def test_evaluate_images_returns_every_measure_as_json(probe):
    prompts = validation_prompts(36)
    images = ground_truth(prompts, 32)
    out = evaluate_images(images, prompts, probe, reference_images=ground_truth(prompts, 32),
                          aesthetic_scorer=lambda x: torch.ones(len(x)))
    out = json.loads(json.dumps(out, allow_nan=False))
    for key in ("prompt_accuracy", "class_proportions", "brightness", "reference_brightness",
                "unsafe_rate", "diversity", "sharpness", "contrast", "domain_fid", "aesthetic_mean"):
        assert key in out, key
    assert out["prompt_accuracy"]["all_correct"] == 1.0 and out["unsafe_rate"] == 0.0
    assert out["domain_fid"]["value"] < 1e-6 and out["domain_fid"]["n1"] == 36
    assert out["class_proportions"]["total_variation"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="captions"):
        evaluate_images(images, prompts[:3], probe)


def test_validator_is_deterministic(probe):
    a, b = Validator(probe, 16, num_prompts=24, seed=5), Validator(probe, 16, num_prompts=24, seed=5)
    assert a.prompts == b.prompts == validation_prompts(24)
    assert torch.equal(a.reference_images, b.reference_images)
    assert torch.equal(a.reference_features, b.reference_features)


def test_validator_run_measures_and_saves_a_grid(probe, tmp_path):
    val = Validator(probe, 32, num_prompts=24, seed=1, num_reference=240)
    seeds = []

    def perfect(prompts, seed):
        seeds.append(seed)
        return ground_truth(prompts, 32)

    first = val.run(perfect, step=100, out_dir=tmp_path)
    second = val.run(perfect, step=200)
    assert seeds == [1, 1], "the same seed every call"
    assert first["prompt_acc"] == 1.0 and first["step"] == 100
    assert first["fid_n"] == 24 and first["fid_n_reference"] == 240
    assert first["fid"] == second["fid"]
    assert (tmp_path / "val_0000100.png").stat().st_size > 1000

    noise = val.run(lambda p, s: torch.rand(len(p), 3, 32, 32) * 2 - 1, step=0)
    assert noise["fid"] > 10 * first["fid"] and noise["prompt_acc"] < 0.1
    one = Validator(probe, 32, num_prompts=1, num_reference=20).run(perfect, step=0)
    assert one["fid"] is None and one["prompt_acc"] == 1.0
    with pytest.raises(ValueError, match="sample_fn must return"):
        val.run(lambda p, s: torch.zeros(3, 3, 32, 32), step=0)


def test_kind_colour_background_accuracy_ignores_count_and_size():
    from reference_impl.evaluation.metrics import prompt_accuracy

    caps = ["two small red circles on a dark background", "one large blue square on a light background"]
    # right kind/colour/background, wrong count and size for the first; wrong colour for the second
    pred = {"kind": torch.tensor([0, 1]), "colour": torch.tensor([0, 0]), "background": torch.tensor([0, 2]),
            "count": torch.tensor([0, 0]), "size": torch.tensor([1, 1]),
            "style": torch.tensor([0, 0]), "unsafe": torch.tensor([0, 0])}
    acc = prompt_accuracy(pred, caps)
    assert acc["kind_colour_background"] == 0.5
    assert acc["all_correct"] == 0.0
