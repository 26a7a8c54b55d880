"""Experiment `collapse` at fast scale, and its parts on hand-made inputs.

No verdict is asserted: the fast scale fine-tunes the ci preset's tiny bases for a few steps per
generation, and those bases never learned to draw, so the competence gate is not met and every
row is underpowered. What holds on any machine: every share's chain starts from the same
generation 0 (the seed's base, sampled once per unit, deterministically), has one measurement
per generation, and its degradation ratio is FID(last) / FID(first) per seed; a generation's
training set holds exactly the asked share of fresh real images with their rich captions, and
the synthetic rest with the captions they were drawn for; precision and recall behave as their
definition says on point sets whose answer is known.
"""
import math
from pathlib import Path

import pytest
import torch
from experiment_cache import private_cache

from reference_impl.data.shapes import WorldConfig, render, sample_scene
from reference_impl.experiments import bases, collapse, runner

FAST = collapse.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("collapse", "fast", workers=1, progress=False)


def test_one_unit_per_share_and_seed():
    us = collapse.units(FAST, [0, 1])
    assert [(u["share"], u["seed"]) for u in us] == [(0.0, 0), (0.0, 1), (0.9, 0), (0.9, 1)]
    assert {u["arm"] for u in us} == {collapse._share(0.0), collapse._share(0.9)}
    for name, st in collapse.EXPERIMENT.scales.items():
        assert st["base"] == name and st["real_shares"] == [0.0, 0.9]  # prepare builds these bases
    full = collapse.EXPERIMENT.scales["full"]
    assert (full["resolution"], full["generations"], full["num_train"], full["num_reference"],
            full["steps"], full["batch_size"]) == (32, 4, 512, 1024, 100, 32)
    assert collapse.EXPERIMENT.default_seeds["full"] == 3 and collapse.EXPERIMENT.prepare


def test_every_share_has_its_ratio(result):
    d, n = result.details, len(result.seeds)
    last = FAST["generations"] - 1
    for r in FAST["real_shares"]:
        sh = f"{r:g}"
        ratio = result.arm(f"{collapse._share(r)}: FID ratio gen {last} / gen 0")
        fid = d["per_seed"][sh]["fid"]
        assert ratio.n == n and len(fid) == n and all(len(c) == FAST["generations"] for c in fid)
        assert ratio.per_seed == pytest.approx([c[-1] / c[0] for c in fid])
        assert set(d["per_seed"][sh]) == set(collapse.MEASURES) == set(d["curves"][sh])
    assert result.headline.name == f"real share 0: FID ratio gen {last} / gen 0"
    diff = result.arm("FID ratio: share 0 - share 0.9")
    assert diff.per_seed == pytest.approx(
        [a - b for a, b in zip(result.arm(f"real share 0: FID ratio gen {last} / gen 0").per_seed,
                               result.arm(f"real share 0.9: FID ratio gen {last} / gen 0").per_seed)])
    rec = d["per_seed"]["0"]["recall"]
    assert result.arm(f"real share 0: recall gen {last} - gen 0").per_seed == pytest.approx(
        [c[-1] - c[0] for c in rec])
    assert result.verdict in runner.VERDICTS and result.reason and result.rule


def test_rows_and_gate(result):
    labels = [r.label for r in result.rows]
    assert len(result.rows) == 3 and all(r.kind == "claim" for r in result.rows), labels
    assert result.rows[0].measured == result.headline
    assert [g["key"] for g in result.gate] == ["gen0_fid", "gen0_recall", bases.GATE_KEY]
    bases_acc = [b["acc_kcb"] for b in result.details["bases"]]
    assert len(bases_acc) == len(result.seeds)
    assert result.gate[2]["value"] == pytest.approx(sum(bases_acc) / len(bases_acc))
    assert result.gate[0]["value"] == pytest.approx(
        sum(c[0] for c in result.details["per_seed"]["0"]["fid"]) / len(result.seeds))
    # the ci bases never learned to draw: the gate is reported and not met
    assert not result.gate_met and not all(g["met"] for g in result.gate)
    assert all(r.verdict == runner.UNDERPOWERED for r in result.rows)
    assert result.rule_fixed == "2026-12-08"


def test_generation_zero_is_shared_by_every_share(result):
    per_seed = result.details["per_seed"]
    for key in collapse.MEASURES:
        first = [c[0] for c in per_seed["0"][key]]
        for sh in per_seed:
            assert [c[0] for c in per_seed[sh][key]] == first, key  # one model, one sample set
    assert result.details["gen0_agreement"] == 0.0


def test_measures_lie_in_their_ranges(result):
    for sh, m in result.details["per_seed"].items():
        for key in ("precision", "recall", "prompt_acc"):
            assert all(0 <= v <= 1 for c in m[key] for v in c), (sh, key)
        assert all(v > 0 for c in m["fid"] for v in c)
        assert all(v >= 0 for key in ("rare_kind", "rare_colour", "diversity")
                   for c in m[key] for v in c)
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a
    t = result.details["timing"]
    assert t["sample_s_per_image"] > 0 and t["train_s_per_step"] > 0


def test_lecture_02_keys(result):
    d = result.details  # what lectures/02_data.ipynb reads
    assert d["generations"] == FAST["generations"]
    for sh in ("0", "0.9"):
        for key in ("fid", "diversity", "precision", "recall", "rare_kind", "rare_colour"):
            assert len(d["curves"][sh][key]) == FAST["generations"]
            assert len(d["per_seed"][sh][key]) == len(result.seeds)


def test_figures_exist(result):
    assert [Path(f).name for f in result.figures] == ["collapse_curves.png", "collapse_samples.png"]
    for f in result.figures:
        assert Path(f).stat().st_size > 1000, f


WORLD = WorldConfig(seed=0, caption_mix=[0.0, 0.0, 1.0], unsafe_fraction=0.0,
                    brand_fraction=0.0, hq_fraction=1.0)


def test_a_generation_trains_on_the_asked_share_of_real_images():
    n, share = 20, 0.9
    num_real = round(share * n)
    synthetic = torch.rand(n - num_real, 3, 16, 16) * 2 - 1
    captions = collapse.rich_captions(WORLD, 500, n - num_real)
    data = collapse.MixedSet(WORLD, real_start=40, num_real=num_real, synthetic=synthetic,
                             captions=captions, resolution=16)
    assert len(data) == n
    items = data.__getitems__(list(range(n)))
    real = render([sample_scene(WORLD, 40 + i) for i in range(num_real)], 16, WORLD.seed) * 2 - 1
    for i in range(num_real):  # fresh real scenes with their rich captions
        assert torch.allclose(items[i]["image"], real[i])
        assert items[i]["caption"] == sample_scene(WORLD, 40 + i)["captions"][2]
    for j in range(n - num_real):  # the synthetic rest, each with the caption it was drawn for
        assert torch.equal(items[num_real + j]["image"], synthetic[j])
        assert items[num_real + j]["caption"] == captions[j]
    assert all(it["caption"] for it in items)  # conditional: every image has its caption
    # out of order, as a shuffled batch asks
    a, b = data.__getitems__([19, 3]), data[3]
    assert torch.equal(a[0]["image"], synthetic[1]) and torch.allclose(a[1]["image"], b["image"])
    with pytest.raises(IndexError):
        data[n]
    fully = collapse.MixedSet(WORLD, 0, 0, synthetic, captions, 16)  # share 0: synthetic only
    assert len(fully) == n - num_real and fully[0]["caption"] == captions[0]
    with pytest.raises(ValueError, match="captions"):
        collapse.MixedSet(WORLD, 0, 3, synthetic, captions[:1], 16)


def test_the_preset_world_is_its_last_stage():
    cfg = collapse.preset_config(collapse.EXPERIMENT.scales["full"], 0)
    world = collapse.preset_world(cfg)
    assert world.hq_fraction == 1.0 and world.caption_mix == [0.0, 0.0, 1.0]
    assert cfg.train.curriculum[-1].resolution == 32 and cfg.seed == 0
    # fresh scenes: none the base trained on, none shared by prompts, real data and reference
    assert collapse.PROMPTS >= cfg.data.num_train and collapse.REAL >= collapse.PROMPTS + \
        collapse.EXPERIMENT.scales["full"]["generations"] * collapse.BLOCK
    assert collapse.REFERENCE >= collapse.REAL + 10 * collapse.BLOCK


def test_precision_and_recall_on_known_point_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    assert collapse.precision_recall(real, real.clone()) == (1.0, 1.0)
    far = collapse.precision_recall(real, real + 100.0)
    assert far == (0.0, 0.0)
    # a collapsed generator: every sample near one real point - precise, but it covers little
    p, r = collapse.precision_recall(real, real[:1] + 0.01 * torch.randn(50, 4, generator=g))
    assert p == 1.0 and r < 0.2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="must include 0"):
        collapse.units({**FAST, "real_shares": [0.5, 0.9]}, [0])
    with pytest.raises(ValueError, match=">= 2 generations"):
        collapse.units({**FAST, "generations": 1}, [0])
