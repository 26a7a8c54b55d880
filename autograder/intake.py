"""Take a student's folder in as plain files only: no links followed, limits on size and count.

Runs on the trusted side with the grader's rights, so it never follows a symlink (a link to
``solutions/`` or to a peer's folder is skipped, not read), keeps only regular files and
folders (fifos, sockets, devices skipped), caps sizes, counts and depth, and skips the names
the grader reserves in a jail (``.home``, ``.ipc``). Everything skipped is noted.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .sandbox import HOME, IPC

MAX_FILE = 20 * 2**20  # bytes per file
MAX_TOTAL = 50 * 2**20  # bytes per submission
MAX_FILES = 300
MAX_DEPTH = 8
RESERVED = {HOME, IPC}


def copy_plain(src: Path, dest: Path) -> list[str]:
    """Copy ``src`` into ``dest`` (created); return the notes about what was skipped."""
    notes: list[str] = []
    state = {"files": 0, "bytes": 0}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(src)
    except OSError:
        return ["submission folder unreadable"]
    if not stat.S_ISDIR(st.st_mode):
        return ["submission folder is not a plain folder (a link?): nothing taken"]
    _copy_dir(Path(src), Path(dest), 0, notes, state, top=True)
    return notes


def _copy_dir(src: Path, dest: Path, depth: int, notes: list[str], state: dict, top=False):
    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        notes.append(f"skipped {_rel(src)}: not a plain folder")
        return
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    for name in names:
        s, d = src / name, dest / name
        if top and name in RESERVED:
            notes.append(f"skipped {name}: a name the grader reserves")
            continue
        try:
            st = os.lstat(s)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            notes.append(f"skipped {_rel(s)}: a symbolic link (only plain files are taken)")
        elif stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                notes.append(f"skipped {_rel(s)}: folders nested too deep")
                continue
            d.mkdir(exist_ok=True)
            _copy_dir(s, d, depth + 1, notes, state)
        elif not stat.S_ISREG(st.st_mode):
            notes.append(f"skipped {_rel(s)}: not a regular file")
        elif state["files"] >= MAX_FILES:
            notes.append(f"skipped {_rel(s)}: more than {MAX_FILES} files")
        elif st.st_size > MAX_FILE or state["bytes"] + st.st_size > MAX_TOTAL:
            notes.append(f"skipped {_rel(s)}: over the size limit")
        else:
            _copy_file(s, d, notes)
            state["files"] += 1
            state["bytes"] += st.st_size


def _copy_file(s: Path, d: Path, notes: list[str]) -> None:
    try:
        fd = os.open(s, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        notes.append(f"skipped {_rel(s)}: unreadable")
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            notes.append(f"skipped {_rel(s)}: not a regular file")
            return
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        notes.append(f"skipped {_rel(s)}: over the size limit")
        return
    with open(d, "wb") as out:
        out.write(data)


def _rel(p: Path) -> str:
    """The last two parts of a path, printable characters only (names are the student's)."""
    parts = Path(p).parts
    name = "/".join(parts[-2:]) if len(parts) > 1 else str(p)
    return re.sub(r"[^\w.@+/ -]", "?", name)[:80]
