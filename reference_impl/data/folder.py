"""Your own data: any folder of images with captions, through Hugging Face ``datasets``.

The folder follows the ``imagefolder`` convention of ``datasets``: images anywhere below it and
a ``metadata.jsonl`` whose lines name a file and its caption::

    {"file_name": "cats/0001.jpg", "text": "a grey cat asleep on a sofa"}

(a ``caption`` column is accepted instead of ``text``; images not named in the metadata are
ignored). ``load_dataset("imagefolder", data_dir=..., split="train")`` reads it offline.

Web data is dirty: a scraped folder holds truncated downloads, HTML error pages saved as
``.jpg`` and metadata lines whose file never arrived. One such file must not crash a training
run at step 90,000, so we decode images ourselves (the image column is cast with
``decode=False``: ``datasets`` hands us the path, not a lazily decoded PIL image whose error
would surface deep inside a DataLoader worker):

- map-style (``ImageCaptionFolder``): every image is decoded once at construction (cheaply:
  JPEGs decode at reduced scale through ``PIL.Image.draft``); broken files are dropped, so
  ``len()`` is honest and no epoch meets a broken file.
- streaming (``ImageCaptionStream``, for folders too large to check up front): broken files
  are skipped as they are met.

Either way the skipped files are counted and reported in ONE warning (count and first names),
or, with ``on_corrupt="raise"``, the first one raises ``CorruptImageError`` naming the file.
Items follow the ShapesWorld convention: image (3, R, R) in [-1, 1], caption, index (the row
of the file in the metadata).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..paths import cache_dir

CAPTION_COLUMNS = ("text", "caption")
ON_CORRUPT = ("skip", "raise")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SHOW_NAMES = 5  # how many skipped file names the warning lists
# What PIL raises on a missing, unidentifiable, truncated or malformed file.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class CorruptImageError(ValueError):
    """An image that cannot be read; the message names the file and PIL's reason."""


class CorruptImageWarning(UserWarning):
    """Some images were skipped because they could not be read."""


def image_transform(resolution: int) -> v2.Compose:
    """PIL RGB image of any size -> (3, R, R) float in [-1, 1].

    Resize the shorter side to R (antialiased), then crop the centre square: the aspect ratio
    is kept, nothing is stretched, and the subject - usually centred - survives.
    """
    return v2.Compose([v2.ToImage(), v2.Resize(resolution, antialias=True),
                       v2.CenterCrop(resolution), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])


def decode_image(cell: dict, resolution: int | None = None) -> Image.Image:
    """Open and fully decode one image cell {"path", "bytes"} of ``datasets`` as RGB.

    ``Image.open`` only reads the header; ``load()`` decodes the pixels, which is where a
    truncated file fails. ``draft`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (never below
    ``resolution``), which makes checking a folder of large photos cheap.
    Raises CorruptImageError naming the file.
    """
    name = cell.get("path") or "<bytes>"
    try:
        src = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]
        with Image.open(src) as img:
            if resolution is not None:
                img.draft("RGB", (resolution, resolution))
            img.load()
            return img.convert("RGB")  # greyscale, palette, RGBA, CMYK -> RGB
    except DECODE_ERRORS as e:
        raise CorruptImageError(f"cannot read image {name}: {type(e).__name__}: {e}") from e


def load_folder_table(folder, streaming: bool = False, cache: str | Path | None = None):
    """The folder as a ``datasets`` table with undecoded images: (dataset, caption column).

    Returns a ``datasets.Dataset`` (``streaming=False``; its Arrow table is cached under
    ``cache``, by default the project cache) or a ``datasets.IterableDataset``.
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not any((folder / m).is_file() for m in METADATA_FILES):
        raise FileNotFoundError(f"{folder} has no metadata.jsonl; each line should be "
                                '{"file_name": "relative/path.png", "text": "its caption"}')
    # Streaming writes only lock files, but they too belong in the project cache, not in ~.
    ds = load_dataset("imagefolder", data_dir=str(folder), split="train", streaming=streaming,
                      cache_dir=str(cache or cache_dir("hf_datasets")))
    column = next((c for c in CAPTION_COLUMNS if c in ds.features), None)
    if column is None:
        raise ValueError(f"metadata of {folder} has no caption column {CAPTION_COLUMNS}; "
                         f"its columns are {list(ds.features)}")
    return ds.cast_column("image", ImageFeature(decode=False)), column


def _check_arguments(resolution: int, on_corrupt: str) -> None:
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")


def warn_skipped(names: list[str], folder) -> None:
    """One warning for all skipped files: the count and the first few names."""
    if names:
        shown = ", ".join(names[:SHOW_NAMES]) + (", ..." if len(names) > SHOW_NAMES else "")
        warnings.warn(f"skipped {len(names)} unreadable image(s) in {folder}: {shown}",
                      CorruptImageWarning, stacklevel=3)


class ImageCaptionFolder(Dataset):
    """Map-style: the readable images of ``folder``, checked once at construction.

    Item: dict(image (3, R, R) float in [-1, 1], caption str, index int = metadata row).
    ``skipped`` lists the files that were dropped. Works with DataLoader workers (the
    ``datasets`` table is memory-mapped and pickles cheaply).
    """

    def __init__(self, folder, resolution: int = 32, on_corrupt: str = "skip",
                 cache: str | Path | None = None):
        _check_arguments(resolution, on_corrupt)
        table, self.caption_column = load_folder_table(folder, streaming=False, cache=cache)
        valid, self.skipped = [], []
        cells = tqdm(table["image"], desc="checking images", disable=None, leave=False)
        for row, cell in enumerate(cells):
            try:
                decode_image(cell, resolution)
                valid.append(row)
            except CorruptImageError:
                if on_corrupt == "raise":
                    raise
                self.skipped.append(cell.get("path") or f"row {row}")
        warn_skipped(self.skipped, folder)
        if not valid:
            raise ValueError(f"no readable image in {folder} ({len(self.skipped)} skipped)")
        self.table, self.rows = table.select(valid), valid
        self.folder, self.resolution = str(folder), resolution
        self.transform = image_transform(resolution)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.table[int(i)]
        # Checked at construction: failing here means the file changed since; say which.
        image = decode_image(row["image"], self.resolution)
        return {"image": self.transform(image), "caption": row[self.caption_column],
                "index": self.rows[int(i)]}


class ImageCaptionStream(IterableDataset):
    """Streaming: decode as we go, skip broken files, never hold the folder in memory.

    Each pass yields the readable images of ``folder`` in metadata order, split between
    DataLoader workers and (optionally) data-parallel ranks: reader k of n keeps rows
    i with i % n == k, so the readers partition the folder and the row ``index`` stays the
    metadata row. (``datasets.distributed.split_dataset_by_node`` does the same per rank; we
    step by hand to keep the index.) Skipped files are warned about at the end of each pass,
    once per worker; ``skipped`` holds them for the last pass run in this process.
    """

    def __init__(self, folder, resolution: int = 32, on_corrupt: str = "skip", rank: int = 0,
                 world_size: int = 1, cache: str | Path | None = None):
        _check_arguments(resolution, on_corrupt)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.table, self.caption_column = load_folder_table(folder, streaming=True, cache=cache)
        self.folder, self.resolution, self.on_corrupt = str(folder), resolution, on_corrupt
        self.rank, self.world_size = rank, world_size
        self.transform = image_transform(resolution)
        self.skipped: list[str] = []

    def _rows(self):
        """(row index, image cell, caption) for every metadata row, nothing decoded.

        ``.iter(batch_size)`` reads the whole table in every reader; ``for row in table``
        would let ``datasets`` split it by file shards inside a worker, on top of our split.
        """
        row = 0
        for batch in self.table.iter(batch_size=256):
            for cell, caption in zip(batch["image"], batch[self.caption_column]):
                yield row, cell, caption
                row += 1

    def __iter__(self):
        worker = get_worker_info()
        workers, wid = (worker.num_workers, worker.id) if worker else (1, 0)
        n, k = self.world_size * workers, self.rank * workers + wid
        skipped = []
        for row, cell, caption in self._rows():
            if row % n != k:
                continue
            try:
                image = decode_image(cell, self.resolution)
            except CorruptImageError:
                if self.on_corrupt == "raise":
                    raise
                skipped.append(cell.get("path") or f"row {row}")
                continue
            yield {"image": self.transform(image), "caption": caption, "index": row}
        self.skipped = skipped
        warn_skipped(skipped, self.folder)


def image_caption_folder(folder, resolution: int = 32, streaming: bool = False,
                         on_corrupt: str = "skip",
                         **kwargs) -> ImageCaptionFolder | ImageCaptionStream:
    """The folder as a map-style dataset, or with ``streaming=True`` an IterableDataset."""
    cls = ImageCaptionStream if streaming else ImageCaptionFolder
    return cls(folder, resolution=resolution, on_corrupt=on_corrupt, **kwargs)
