"""ShapesWorld: determinism, resolution independence, ground truth, knobs, DataLoader."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from reference_impl.data import captions as cap
from reference_impl.data.shapes import (
    LAYOUTS,
    ShapesWorld,
    WorldConfig,
    make_scene,
    render,
    sample_scene,
)
from reference_impl.data.vocab import BACKGROUND_LEVEL, COLOURS, KINDS, RGB


def clean_world(**kw):
    return WorldConfig(hq_fraction=1.0, unsafe_fraction=0.0, brand_fraction=0.0, **kw)


def test_same_seed_same_scene_and_pixels():
    w = WorldConfig(seed=3)
    a, b = sample_scene(w, 17), sample_scene(w, 17)
    assert a["caption"] == b["caption"] and a["kind"] == b["kind"]
    assert np.allclose(a["centres"], b["centres"])
    ds = ShapesWorld(w, 64, 32)
    assert torch.equal(ds[17]["image"], ShapesWorld(w, 64, 32)[17]["image"])
    assert sample_scene(WorldConfig(seed=4), 17)["centres"] != a["centres"]


def test_batched_and_single_fetch_agree():
    ds = ShapesWorld(WorldConfig(seed=1), 16, 32)
    batch = ds.__getitems__([3, 5, 9])
    for i, item in zip([3, 5, 9], batch):
        assert torch.allclose(item["image"], ds[i]["image"], atol=1e-6)


def test_resolution_independence():
    """The 16 px render is close to the 32 px render of the same scenes, downsampled."""
    w = clean_world(seed=5)
    scenes = [sample_scene(w, i) for i in range(64)]
    hi, lo = render(scenes, 32), render(scenes, 16)
    down = F.avg_pool2d(hi, 2)
    err = (down - lo).abs()
    assert err.mean() < 0.01, err.mean()
    assert err.amax(dim=(1, 2, 3)).max() < 0.35  # only edge pixels may differ noticeably


def test_pixel_at_shape_centre_is_its_colour_and_background_level():
    w = clean_world(seed=7)
    scenes = [sample_scene(w, i) for i in range(48)]
    images = render(scenes, 64)
    for s, img in zip(scenes, images):
        for (cx, cy) in s["centres"]:
            px = img[:, int(cy * 64), int(cx * 64)]
            assert torch.allclose(px, torch.tensor(RGB[COLOURS[s["colour"]]]), atol=0.02), s
        corner = img[:, 2, 2]  # no shape reaches the top-left corner in clean scenes
        assert torch.allclose(corner, torch.full((3,), s["level"]), atol=0.02)
        lo, hi = BACKGROUND_LEVEL[s["background"]]
        assert lo <= s["level"] <= hi


def test_unsafe_symbol_present_iff_flagged():
    w = WorldConfig(seed=9, unsafe_fraction=0.5, hq_fraction=1.0)
    scenes = [sample_scene(w, i) for i in range(80)]
    images = render(scenes, 32)
    # the hazard sign is pure magenta (1, 0, 1) at its centre (0.84, 0.16)
    magenta = torch.tensor([1.0, 0.0, 1.0])
    for s, img in zip(scenes, images):
        px = img[:, int(0.16 * 32), int(0.84 * 32)]
        assert torch.allclose(px, magenta, atol=0.05) == bool(s["unsafe"])
    flags = [s["unsafe"] for s in scenes]
    assert 0 < sum(flags) < len(flags)


def test_brand_style_has_outline_and_pastel_fill():
    s = make_scene("circle", "red", "light", brand=True)
    img = render([s], 64)[0]
    centre = img[:, 32, 32]
    assert centre[1] > 0.3  # pastel: white mixed in
    edge_y = int((0.5 - s["radius"][0] + 0.02) * 64)  # just inside the rim: the navy stroke
    assert img[:, edge_y, 32].max() < 0.4


@pytest.mark.parametrize("probs", [[0.9, 0.1, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
def test_class_proportions(probs):
    n = 4000
    w = WorldConfig(seed=11, class_probs=probs)
    kinds = np.bincount([sample_scene(w, i)["kind"] for i in range(n)], minlength=4) / n
    tol = 4 * np.sqrt(np.array(probs) * (1 - np.array(probs)) / n) + 1e-9
    assert (np.abs(kinds - probs) <= tol).all(), (kinds, probs)


def test_caption_mix_and_other_knobs():
    n = 3000
    w = WorldConfig(seed=2, caption_mix=[0.2, 0.3, 0.5], hq_fraction=0.25, unsafe_fraction=0.1,
                    brand_fraction=0.3, brightness_probs=[0.8, 0.1, 0.1])
    scenes = [sample_scene(w, i) for i in range(n)]
    frac = lambda f: np.mean([f(s) for s in scenes])
    for q, p in zip(cap.QUALITIES, [0.2, 0.3, 0.5]):
        assert abs(np.mean([s["caption_quality"] == q for s in scenes]) - p) < 0.04
    assert abs(frac(lambda s: s["unsafe"]) - 0.1) < 0.03
    assert abs(frac(lambda s: s["style"] == 1) - 0.3) < 0.04
    assert abs(frac(lambda s: s["background"] == 0) - 0.8) < 0.04
    assert abs(frac(lambda s: s["blur"] == 0 and s["noise"] == 0 and s["offset"] == 0) - 0.25) < 0.04


def test_three_caption_qualities():
    s = sample_scene(WorldConfig(seed=0), 0)
    filename, alt, rich = s["captions"]
    assert filename.endswith(".jpg") and "_" in filename
    assert cap.parse_caption(filename) == {}
    assert len(cap.parse_caption(alt)) <= 1
    assert cap.parse_caption(rich)["kind"] == s["kind"]


def test_rich_caption_round_trip():
    w = WorldConfig(seed=1, unsafe_fraction=0.3, brand_fraction=0.3)
    for i in range(300):
        s = sample_scene(w, i)
        parsed = cap.parse_caption(s["captions"][2])
        expect = {k: int(s[k]) for k in ("kind", "colour", "size", "count", "background")}
        for k, v in expect.items():
            assert parsed[k] == v, (s["captions"][2], k)
        assert parsed.get("style", 0) == s["style"] and parsed.get("unsafe", 0) == int(s["unsafe"])


def test_aesthetic_score_orders_clean_above_degraded():
    w = WorldConfig(seed=4, hq_fraction=0.5)
    scenes = [sample_scene(w, i) for i in range(500)]
    clean = [s["aesthetic"] for s in scenes if s["blur"] == s["noise"] == s["offset"] == 0]
    dirty = [s["aesthetic"] for s in scenes if s["blur"] > 0 and s["noise"] > 0]
    assert np.mean(clean) > np.mean(dirty) + 2
    assert all(0 <= s["aesthetic"] <= 10 for s in scenes)
    noisy = WorldConfig(seed=4, aesthetic_label_noise=1.0)
    d = [sample_scene(noisy, i)["aesthetic_label"] - sample_scene(noisy, i)["aesthetic"] for i in range(400)]
    assert 0.85 < np.std(d) < 1.15


def test_dataset_items_and_dataloader_workers():
    ds = ShapesWorld(WorldConfig(seed=0), 40, 16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 5 and batches[0]["image"].shape == (8, 3, 16, 16)
    assert torch.equal(batches[1]["image"][0], ds[8]["image"])
    assert batches[0]["caption"][0] == item["caption"]
    with pytest.raises(IndexError):
        ds[40]


def test_make_scene_matches_prompt():
    s = make_scene("triangle", "blue", "dark", count=2, size="small")
    assert s["caption"] == cap.prompt("triangle", "blue", "dark", count=2, size="small")
    assert s["caption"] == "two small blue triangles on a dark background"
    assert len(s["centres"]) == len(LAYOUTS[2]) and KINDS[s["kind"]] == "triangle"
