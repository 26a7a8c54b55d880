"""Where things are written: the on-disk cache (probe weights, caption embeddings) and runs.

``REFERENCE_IMPL_CACHE`` overrides the cache folder (default: ``.cache`` at the root of the
checkout, or in the working directory for an installed package), so tests can point it at a temporary folder and CI can keep it between steps.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

# In a checkout (the course repository), the cache is the repository's .cache wherever the
# command runs from: a lecture executed inside lectures/ must find the probe and the
# experiments' full-scale results that `make` commands cached at the root.
_REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = _REPO / ".cache" if (_REPO / "pyproject.toml").exists() else Path(".cache")


def cache_dir(*parts: str) -> Path:
    """A folder inside the cache (absolute), created if missing."""
    root = Path(os.environ.get("REFERENCE_IMPL_CACHE", DEFAULT_CACHE)).resolve()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(obj) -> str:
    """12 hex digits naming a cached artefact by what made it (a JSON-able config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def build_lock(path: Path):
    """Hold an exclusive lock named after ``path`` while it is checked for and built.

    Two processes that need the same cached artefact at once (pytest-xdist workers, an
    experiment's worker processes) would otherwise both train it; with the lock the second
    waits, then finds the file and loads it.
    """
    import fcntl

    lock = Path(path).with_suffix(Path(path).suffix + ".lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
