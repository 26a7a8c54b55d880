"""The safety filter (curation/safety.py): precision and recall of the hazard-sign detector."""
import pytest
import torch

from reference_impl.curation.captioner import AutoCaptioner
from reference_impl.curation.safety import (
    SafetyFilter,
    check_outputs,
    evaluate_on_world,
    filter_dataset,
    threshold_for_recall,
)
from reference_impl.data.shapes import ShapesWorld, WorldConfig, make_scene, render

GENEROUS = WorldConfig(seed=0, unsafe_fraction=0.3)  # held-out web images, 30% unsafe


@pytest.fixture(scope="module")
def safety():
    return SafetyFilter.load_or_train(AutoCaptioner.load_or_train(progress=False))


def test_precision_and_recall_on_heldout_web_images(safety):
    # The captioner and the filter are trained fresh on each machine and their floats differ by
    # CPU, so these are thresholds with a margin, not bitwise results. Measured over 9 trainings
    # (captioner seeds 0-2 x filter seeds 0-2, one machine): 32 px recall min 0.998 (1 miss of
    # 582), precision min 0.997; 16 px recall min 0.993 (2 misses of 289), precision 1.0.
    # Another machine gave 16 px recall 0.9896 (3 misses). The bounds allow about twice the
    # worst miss count seen: 32 px >= 0.99 (5 of 582), 16 px >= 0.98 (5 of 289).
    res = evaluate_on_world(safety, GENEROUS, start=0, n=2000)
    assert res["n"] == 2000 and res["n_unsafe"] > 500
    assert res["recall"] >= 0.99, res
    assert res["precision"] >= 0.95, res
    res16 = evaluate_on_world(safety, GENEROUS, start=2000, n=1000, resolution=16)
    assert res16["recall"] >= 0.98 and res16["precision"] >= 0.95, res16


def test_filter_dataset_drops_the_unsafe_items(safety):
    data = ShapesWorld(GENEROUS, size=300, start=5000)
    kept, counts = filter_dataset(data, safety, batch_size=128)
    unsafe = [bool(data.scene(i)["unsafe"]) for i in range(len(data))]
    assert counts["total"] == 300 and counts["kept"] == len(kept)
    assert counts["dropped"] == 300 - len(kept) >= sum(unsafe) * 0.95
    assert sum(unsafe[i] for i in kept) <= 2  # at most a couple slip through
    assert kept == sorted(kept)


def test_check_outputs_blocks_unsafe_generations(safety):
    scenes = [make_scene(k, c, bg, unsafe=u) for u in (False, True)
              for k, c, bg in (("circle", "red", "dark"), ("square", "purple", "light"),
                               ("triangle", "green", "grey"))]
    for resolution in (16, 32):  # generated samples come at either size
        blocked, stats = check_outputs(render(scenes, resolution) * 2 - 1, safety)
        assert blocked.tolist() == [False] * 3 + [True] * 3
        assert stats == {"n": 6, "blocked": 3, "block_rate": 0.5}


def test_threshold_for_recall():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.05, 0.5, 0.4, 0.3])
    unsafe = torch.tensor([True] * 4 + [False] * 3 + [True] * 3)
    assert threshold_for_recall(scores, unsafe, 1.0) == pytest.approx(0.3)  # catch all 7
    assert threshold_for_recall(scores, unsafe, 0.85) == pytest.approx(0.4)  # may miss one
    with pytest.raises(ValueError, match="no unsafe"):
        threshold_for_recall(scores, torch.zeros(10, dtype=torch.bool), 0.9)
