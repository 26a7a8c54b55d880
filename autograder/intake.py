"""Take a student's folder in as plain files only: no links followed, limits on size and count.

Runs on the trusted side with the grader's rights, so it never follows a symlink (a link to
``solutions/`` or to a peer's folder is skipped, not read), keeps only regular files and
folders (fifos, sockets, devices skipped), caps sizes, counts and depth, and skips the names
the grader reserves in a jail (``.home``, ``.ipc``). Everything skipped is noted.

The walk is by descriptor: every folder and file is opened relative to its parent's descriptor
with ``O_NOFOLLOW`` (the last ``nofollow`` components of the submission path too), so a folder
swapped for a link while the copy runs is refused, not followed. A regular file with more than
one name (a *hard link*, ``st_nlink > 1``) may be another name of a file outside the
submission - the course's source notebook, a peer's work - so it is skipped and noted too.
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
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_nofollow(path: Path, nofollow: int = 1) -> int:
    """A descriptor of the folder ``path`` whose last ``nofollow`` components are each opened
    with O_NOFOLLOW relative to the one before (a link among them: OSError)."""
    parts = Path(path).parts
    if not Path(path).is_absolute():
        parts = (".", *parts)
    k = max(1, len(parts) - nofollow)
    fd = os.open(Path(*parts[:k]), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[k:]:
            nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def copy_plain(src: Path, dest: Path, nofollow: int = 1) -> list[str]:
    """Copy ``src`` into ``dest`` (created); return the notes about what was skipped.

    ``nofollow``: how many trailing components of ``src`` must not be links (the batch passes
    2: the student's folder and the assignment folder)."""
    notes: list[str] = []
    state = {"files": 0, "bytes": 0}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(src)
    except OSError:
        return ["submission folder unreadable"]
    if not stat.S_ISDIR(st.st_mode):
        return ["submission folder is not a plain folder (a link?): nothing taken"]
    try:
        fd = open_nofollow(Path(src), nofollow)
    except OSError:
        return ["submission folder is not a plain folder (a link?): nothing taken"]
    try:
        _copy_dir(fd, Path(src), Path(dest), 0, notes, state, top=True)
    finally:
        os.close(fd)
    return notes


def _copy_dir(fd: int, src: Path, dest: Path, depth: int, notes: list[str], state: dict,
              top=False):
    """Copy the folder open as ``fd`` (``src`` only names it in notes) into ``dest``."""
    try:
        names = sorted(os.listdir(fd))
    except OSError:
        notes.append(f"skipped {_rel(src)}: unreadable")
        return
    for name in names:
        s, d = src / name, dest / name
        if top and name in RESERVED:
            notes.append(f"skipped {name}: a name the grader reserves")
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            notes.append(f"skipped {_rel(s)}: a symbolic link (only plain files are taken)")
        elif stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                notes.append(f"skipped {_rel(s)}: folders nested too deep")
                continue
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                notes.append(f"skipped {_rel(s)}: not a plain folder")
                continue
            try:
                d.mkdir(exist_ok=True)
                _copy_dir(sub, s, d, depth + 1, notes, state)
            finally:
                os.close(sub)
        elif not stat.S_ISREG(st.st_mode):
            notes.append(f"skipped {_rel(s)}: not a regular file")
        elif st.st_nlink > 1:
            notes.append(f"skipped {_rel(s)}: {_HARD_LINK}")
        elif state["files"] >= MAX_FILES:
            notes.append(f"skipped {_rel(s)}: more than {MAX_FILES} files")
        elif st.st_size > MAX_FILE or state["bytes"] + st.st_size > MAX_TOTAL:
            notes.append(f"skipped {_rel(s)}: over the size limit")
        else:
            n = _copy_file(fd, name, s, d, notes)
            state["files"] += 1
            state["bytes"] += n


_HARD_LINK = "a hard link (the file has other names, maybe outside the submission)"


def _copy_file(dir_fd: int, name: str, s: Path, d: Path, notes: list[str]) -> int:
    """Copy one file opened by name in ``dir_fd``; return the bytes copied. What was checked
    by name is checked again on the open descriptor (the name may have been swapped)."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        notes.append(f"skipped {_rel(s)}: unreadable")
        return 0
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            notes.append(f"skipped {_rel(s)}: not a regular file")
            return 0
        if st.st_nlink > 1:
            notes.append(f"skipped {_rel(s)}: {_HARD_LINK}")
            return 0
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        notes.append(f"skipped {_rel(s)}: over the size limit")
        return 0
    with open(d, "wb") as out:
        out.write(data)
    return len(data)


def _rel(p: Path) -> str:
    """The last two parts of a path, printable characters only (names are the student's)."""
    parts = Path(p).parts
    name = "/".join(parts[-2:]) if len(parts) > 1 else str(p)
    return re.sub(r"[^\w.@+/ -]", "?", name)[:80]
