"""scikit-learn digits as a captioned dataset: shapes, range, captions, split, determinism."""
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from reference_impl.data.digits import Digits, digit_caption, load_digit_images, split_indices


@pytest.mark.parametrize("resolution", [16, 32])
def test_items_are_rgb_images_in_minus_one_one_with_label(resolution):
    ds = Digits(resolution=resolution)
    item = ds[0]
    assert set(item) == {"image", "caption", "index", "digit"}
    img = item["image"]
    assert img.shape == (3, resolution, resolution) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1 and img.max() - img.min() > 1, "uses the range"
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]), "grey replicated to RGB"
    assert item["digit"] == load_digits().target[item["index"]]


def test_native_resolution_equals_sklearn_and_resize_matches_torchvision():
    raw = torch.from_numpy(load_digits().images).float()
    images8, labels = load_digit_images(8)
    torch.testing.assert_close(images8[:, 0], raw / 16 * 2 - 1)
    assert labels.tolist() == load_digits().target.tolist()
    images32, _ = load_digit_images(32)
    oracle = TF.resize(raw[:50, None] / 16, [32, 32], antialias=True).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(images32[:50], oracle, atol=1e-5, rtol=0)


def test_captions_name_the_digit_and_follow_the_template():
    ds = Digits(resolution=16)
    for i in range(20):
        item = ds[i]
        assert item["caption"] == f"a handwritten digit {digit_caption(item['digit'], '{name}')}"
    assert digit_caption(7) == "a handwritten digit seven"
    item = Digits(resolution=16, template="digit {digit} ({name})")[0]
    name = digit_caption(item["digit"], "{name}")
    assert item["caption"] == f"digit {item['digit']} ({name})"


def test_split_is_a_deterministic_partition():
    train, held = Digits(16, "train", seed=0), Digits(16, "held_out", seed=0)
    rows = set(train.rows.tolist()), set(held.rows.tolist())
    assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == 1797
    assert len(held) == round(1797 * 0.2)
    assert torch.equal(Digits(16, "held_out", seed=0).rows, held.rows), "same seed, same split"
    assert not torch.equal(split_indices(1797, 0.2, seed=1)["held_out"], held.rows)
    again = Digits(16, "train", seed=0)
    assert torch.equal(again[5]["image"], train[5]["image"])
    assert again[5]["index"] == train[5]["index"]
    assert set(train.labels.tolist()) == set(held.labels.tolist()) == set(range(10))


def test_dataloader_batches():
    batch = next(iter(DataLoader(Digits(16), batch_size=8)))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["digit"].shape == (8,)
    assert len(batch["caption"]) == 8


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split"):
        Digits(16, split="test")
    with pytest.raises(ValueError, match="template"):
        Digits(16, template="a digit")
    with pytest.raises(ValueError, match="resolution"):
        Digits(4)
    with pytest.raises(ValueError, match="held_out_fraction"):
        Digits(16, held_out_fraction=1.0)
    with pytest.raises(IndexError):
        Digits(16, "held_out")[10_000]
