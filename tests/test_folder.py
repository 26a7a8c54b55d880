"""Image-caption folders through `datasets`: broken files skipped and counted, or named."""
import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from reference_impl.data.folder import (
    CorruptImageError,
    CorruptImageWarning,
    ImageCaptionFolder,
    ImageCaptionStream,
    image_caption_folder,
)

R = 16
BROKEN = ("garbage.png", "truncated.jpg", "missing.png")


def _jpeg_bytes(shape=(40, 48, 3), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_folder(root, rows, column="text"):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps({"file_name": name, column: caption}) + "\n" for name, caption in rows)
    return root


def _good_images(root):
    """Valid images of several modes and shapes, with their captions (metadata order)."""
    (root / "sub").mkdir(parents=True)
    wide = np.zeros((32, 64, 3), np.uint8)  # H=32, W=64: blue, red edges outside the centre
    wide[:, :8, 0] = wide[:, 56:, 0] = 255
    wide[:, 8:56, 2] = 255
    Image.fromarray(wide).save(root / "wide.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(root / "grey.png")
    Image.fromarray(np.full((24, 24, 4), 200, np.uint8), "RGBA").save(root / "sub" / "rgba.png")
    (root / "photo.jpg").write_bytes(_jpeg_bytes())
    return [("wide.png", "a blue square"), ("grey.png", "a grey square"),
            ("sub/rgba.png", "a light square"), ("photo.jpg", "noise")]


@pytest.fixture
def dirty(tmp_path):
    """4 good images, then garbage bytes named .png, a truncated JPEG and a missing file."""
    root = tmp_path / "dirty"
    good = _good_images(root)
    (root / "garbage.png").write_bytes(b"<html>404 Not Found</html>" * 10)
    jpeg = _jpeg_bytes(seed=1)
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    rows = good[:2] + [("garbage.png", "x")] + good[2:3] + [("truncated.jpg", "y")] + good[3:]
    return _write_folder(root, rows + [("missing.png", "z")]), [c for _, c in good]


def test_map_style_skips_counts_and_warns_once(dirty, tmp_path):
    root, captions = dirty
    with pytest.warns(CorruptImageWarning, match="skipped 3 unreadable") as record:
        ds = ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    assert len([w for w in record if w.category is CorruptImageWarning]) == 1
    message = str(record[0].message)
    assert all(name in message for name in BROKEN)
    assert len(ds) == 4 and [p.rsplit("/", 1)[-1] for p in ds.skipped] == list(BROKEN)
    items = [ds[i] for i in range(len(ds))]
    assert [it["caption"] for it in items] == captions
    assert [it["index"] for it in items] == [0, 1, 3, 5], "index is the metadata row"
    for it in items:
        assert it["image"].shape == (3, R, R) and it["image"].dtype == torch.float32
        assert it["image"].min() >= -1 and it["image"].max() <= 1


def test_resize_keeps_aspect_and_crops_the_centre_and_converts_to_rgb(dirty, tmp_path):
    root, _ = dirty
    with pytest.warns(CorruptImageWarning):
        ds = ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    wide = ds[0]["image"]  # 64x32 -> 32x16 -> centre 16x16 leaves the red edges out
    torch.testing.assert_close(wide, torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, R, R))
    grey = ds[1]["image"]
    torch.testing.assert_close(grey, torch.full((3, R, R), 128 / 255 * 2 - 1))


@pytest.mark.parametrize("broken", BROKEN)
def test_raise_names_the_broken_file(tmp_path, broken):
    root = tmp_path / "one"
    good = _good_images(root)
    if broken == "garbage.png":
        (root / broken).write_bytes(b"\x00garbage" * 50)
    elif broken == "truncated.jpg":
        (root / broken).write_bytes(_jpeg_bytes()[:600])
    _write_folder(root, good + [(broken, "broken")])
    with pytest.raises(CorruptImageError, match=broken.replace(".", r"\.")):
        ImageCaptionFolder(root, R, on_corrupt="raise", cache=tmp_path / "hf")
    with pytest.raises(CorruptImageError, match=broken.replace(".", r"\.")):
        list(ImageCaptionStream(root, R, on_corrupt="raise", cache=tmp_path / "hf"))


def test_streaming_yields_the_same_valid_items(dirty, tmp_path):
    root, _ = dirty
    with pytest.warns(CorruptImageWarning):
        ds = ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    stream = image_caption_folder(root, R, streaming=True, cache=tmp_path / "hf")
    assert isinstance(stream, torch.utils.data.IterableDataset)
    with pytest.warns(CorruptImageWarning, match="skipped 3 unreadable"):
        streamed = list(stream)
    assert len(stream.skipped) == 3
    assert [s["index"] for s in streamed] == [ds[i]["index"] for i in range(len(ds))]
    for i, s in enumerate(streamed):
        assert s["caption"] == ds[i]["caption"]
        torch.testing.assert_close(s["image"], ds[i]["image"])


def test_dataloader_workers_see_every_valid_item_once(dirty, tmp_path):
    root, _ = dirty
    with pytest.warns(CorruptImageWarning):
        ds = ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 1, 3, 5]
    assert batches[0]["image"].shape == (2, 3, R, R)
    # each worker warns about its own skips, in its own process
    stream = ImageCaptionStream(root, R, cache=tmp_path / "hf")
    batches = list(DataLoader(stream, batch_size=2, num_workers=2))
    assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 1, 3, 5]


def test_stream_ranks_partition_the_folder(dirty, tmp_path):
    root, _ = dirty
    seen = []
    for rank in range(2):  # rank 0 reads rows 0, 2, 4, 6: all three broken files
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            seen.append([s["index"] for s in ImageCaptionStream(root, R, rank=rank, world_size=2,
                                                             cache=tmp_path / "hf")])
        assert len([w for w in record if w.category is CorruptImageWarning]) == (rank == 0)
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == [0, 1, 3, 5]


def test_caption_column_may_be_called_caption(tmp_path):
    root = tmp_path / "cap"
    good = _good_images(root)
    _write_folder(root, good, column="caption")
    ds = ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    assert [ds[i]["caption"] for i in range(len(ds))] == [c for _, c in good]


def test_bad_folders_and_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nowhere", R)
    (tmp_path / "bare").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bare" / "a.png")
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        ImageCaptionFolder(tmp_path / "bare", R)
    root = _write_folder(tmp_path / "nocap", [("a.png", "x")], column="title")
    Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(ValueError, match="caption column"):
        ImageCaptionFolder(root, R, cache=tmp_path / "hf")
    with pytest.raises(ValueError, match="on_corrupt"):
        ImageCaptionFolder(root, R, on_corrupt="ignore")
    with pytest.raises(ValueError, match="resolution"):
        ImageCaptionStream(root, 0)
