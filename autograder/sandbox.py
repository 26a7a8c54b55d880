"""The sandbox a student's kernel runs in: bubblewrap, no network, limits.

Only the student's own working copy is writable and visible; the interpreter, the venv and
the public ``reference_impl`` package are mounted read-only. ``solutions/``, the gradebook,
the output folder and other students' folders are simply not mounted, so ``open`` on them
fails with FileNotFoundError. ``--unshare-net`` leaves only a loopback that is down, so any
connection fails. CPU time and address space are capped with ``prlimit`` (inherited by the
kernel); wall-clock time is enforced by the driver (per cell) and the batch (per student).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create namespaces here."""


@dataclass
class Limits:
    """Resource limits for one student's kernel."""

    cpu_seconds: int = 300  # RLIMIT_CPU: the kernel gets SIGKILL past it
    memory_mb: int = 8192  # RLIMIT_AS: torch maps a lot of address space, keep this generous
    cell_timeout: int = 60  # per cell, wall clock (also in nbgrader_config.py)
    wall_seconds: int = 900  # per student, wall clock


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _readonly_mounts() -> list[str]:
    """Paths the kernel needs to run Python with the course's packages, all read-only."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    try:  # the editable install of reference_impl points into the repo: mount just that
        import reference_impl
        paths.add(Path(reference_impl.__file__).resolve().parent)
    except ImportError:
        pass
    return [str(p) for p in sorted(paths)]


ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "passwd", "group",
       "nsswitch.conf", "alternatives")


def bwrap_command(workdir: Path, command: list[str], limits: Limits,
                  env: dict[str, str] | None = None) -> list[str]:
    """``prlimit ... bwrap ... command``: run ``command`` jailed in ``workdir`` (same path inside)."""
    exe = bwrap_path()
    if exe is None:
        raise SandboxUnavailable("bwrap not found (apt-get install bubblewrap)")
    workdir = Path(workdir).resolve()
    args = ["prlimit", f"--cpu={limits.cpu_seconds}",
            f"--as={limits.memory_mb * 1024 * 1024}", "--", exe,
            "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for p in _readonly_mounts():
        args += ["--ro-bind", p, p]
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    home = workdir / "home"
    base_env = {"HOME": str(home), "PATH": f"{Path(sys.prefix)}/bin:/usr/bin:/bin",
                "MPLCONFIGDIR": str(home / ".mpl"),
                "IPYTHONDIR": str(home / ".ipython"), "PYTHONNOUSERSITE": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "LANG": "C.UTF-8"}
    base_env.update(env or {})
    for k, v in base_env.items():
        args += ["--setenv", k, v]
    return args + ["--"] + command


def check_sandbox() -> None:
    """Raise SandboxUnavailable unless a trivial jailed command runs here."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            cmd = bwrap_command(Path(tmp), [sys.executable, "-c", "print('ok')"], Limits())
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"bwrap failed to start: {e}") from e
    if out.returncode != 0 or out.stdout.strip() != "ok":
        raise SandboxUnavailable(f"bwrap cannot run here: {out.stderr.strip()[:500]}")
