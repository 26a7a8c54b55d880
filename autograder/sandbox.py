"""The sandbox student code runs in: bubblewrap, an unprivileged user, whole-student limits.

One *jail* is one sandboxed process tree (the feedback kernel, or the hidden-check harness):

* ``bwrap --unshare-all`` (no network: a private namespace with only its own loopback; own PID namespace, so the whole
  tree dies with it), read-only ``/usr``, the Python installation, the venv and the public
  ``reference_impl`` package; read-write only the jail's own folder. ``solutions/``, the rest of
  the repository, the gradebook, ``OUT/``, other students and the other jail are not mounted.
* What an assignment asks the student to write is not offered: every module of the course's
  declarations' ``withhold`` lists (scan.py; e.g. ``reference_impl/training/ema.py``, diffusers'
  ``training_utils.py``) has ``withheld.py`` bound over it - importing it raises ImportError -
  and an empty, read-only tmpfs over its ``__pycache__`` (no compiled copy to unmarshal).
* HOME, IPYTHONDIR and MPLCONFIGDIR are under ``.home/``, a folder the grader creates empty in
  the jail (a student's own ``home``/``.home`` is never used: no startup files run); the
  environment is cleared; ``/tmp`` is a fresh tmpfs.
* As root, bwrap mounts and then ``setpriv`` drops to an unprivileged uid (61000 + slot, one
  per parallel job; no capabilities, no_new_privs), so RLIMIT_NPROC counts only that student's
  tasks (root ignores RLIMIT_NPROC). Not root: bwrap makes a user namespace, same uid.
* Memory and process count for the *whole* tree: a cgroup (v2 if delegated, else v1 memory +
  pids), else only ``prlimit`` (RLIMIT_AS per process, RLIMIT_NPROC per uid) - ``describe()``
  says which, and the CSV's ``sandbox`` column records it.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(__file__).resolve().parent / "harness.py"
WITHHELD_STUB = Path(__file__).resolve().parent / "withheld.py"
HARNESS_IN_JAIL = "/opt/autograder/harness.py"
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOME, IPC = ".home", ".ipc"  # grader-made folders in each jail root (never the student's)
FILE_LIMIT = 200 * 2**20  # RLIMIT_FSIZE: bytes per file a jail may write
UID_BASE = 61000  # students run as 61000 + slot (no passwd entry needed)


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create namespaces here."""


@dataclass
class Limits:
    """Resource limits for one student (each jail gets them afresh)."""

    cpu_seconds: int = 300  # RLIMIT_CPU per process: SIGKILL past it
    memory_mb: int = 4096  # the whole jail (cgroup); without a cgroup: RLIMIT_AS per process
    address_space_mb: int = 8192  # RLIMIT_AS per process (torch maps much more than it uses)
    processes: int = 64  # tasks (threads count) of the whole jail: pids cgroup and RLIMIT_NPROC
    cell_timeout: int = 60  # per cell, wall clock (also in nbgrader_config.py)
    wall_seconds: int = 900  # per student, wall clock


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _readonly_mounts() -> list[str]:
    """Paths the jail needs to run Python with the course's packages, all read-only."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    # The editable install of reference_impl points into the repo: mount just that package
    # (found without importing it: importing it would load torch in the grader).
    spec = importlib.util.find_spec("reference_impl")
    if spec is not None and spec.origin:
        paths.add(Path(spec.origin).resolve().parent)
    return [str(p) for p in sorted(paths)]


def withheld_mounts(modules: list[str] | None = None) -> list[str]:
    """bwrap arguments that take ``modules`` (default: every module any assignment of the
    course withholds) out of the jail: the stub over each file, a tmpfs over its __pycache__."""
    from . import scan  # here, not at the top: ``enter`` runs this file without site-packages

    if modules is None:
        modules = scan.course_declaration()["withhold"]
    visible = [Path(p) for p in _readonly_mounts()] + [Path("/usr")]
    args, caches = [], set()
    for m in modules:
        f = scan.module_file(m)
        f = f.resolve() if f is not None else None
        if f is None or not any(f.is_relative_to(v) for v in visible):
            continue  # not installed, or not mounted: the jail cannot see it anyway
        args += ["--ro-bind", str(WITHHELD_STUB), str(f)]
        cache = f.parent / "__pycache__"
        try:  # made now if missing, so that no compiled copy can appear in it later
            cache.mkdir(exist_ok=True)
        except OSError:
            pass
        if cache.is_dir():
            caches.add(str(cache))
    for cache in sorted(caches):
        args += ["--tmpfs", cache]
    return args


ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "passwd", "group",
       "nsswitch.conf", "alternatives")


# ---- cgroups ------------------------------------------------------------------------------

def _own_cgroup(controller: str | None) -> Path | None:
    """This process's cgroup folder for a v1 controller (or v2 when ``None``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if (controller is None and ctrls == "") or controller in ctrls.split(","):
            if controller is None:
                base = CGROUP_ROOT / "unified" if (CGROUP_ROOT / "unified").is_dir() else CGROUP_ROOT
            else:
                base = CGROUP_ROOT / controller
            d = base / path.lstrip("/")
            return d if d.is_dir() else None
    return None


class Cgroup:
    """One jail's cgroup(s): memory and process limits for its whole tree, then kill + remove."""

    def __init__(self, dirs: list[Path], kind: str):
        self.dirs, self.kind = dirs, kind

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup | None:
        mem = limits.memory_mb * 2**20
        v2 = _own_cgroup(None)
        if v2 is not None and {"memory", "pids"} <= set(
                _read(v2 / "cgroup.subtree_control").split()):
            d = v2 / name
            try:
                d.mkdir()
                (d / "memory.max").write_text(str(mem))
                (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
                (d / "pids.max").write_text(str(limits.processes))
                return cls([d], "cgroup v2")
            except OSError:
                _rmdir(d)
        m, p = _own_cgroup("memory"), _own_cgroup("pids")
        if m is not None and p is not None:
            dm, dp = m / name, p / name
            try:
                dm.mkdir()
                dp.mkdir()
                (dm / "memory.limit_in_bytes").write_text(str(mem))
                if (dm / "memory.memsw.limit_in_bytes").exists():
                    (dm / "memory.memsw.limit_in_bytes").write_text(str(mem))
                (dp / "pids.max").write_text(str(limits.processes))
                return cls([dm, dp], "cgroup v1")
            except OSError:
                _rmdir(dm)
                _rmdir(dp)
        return None

    def events(self) -> dict[str, int]:
        """{'oom_kill': n, 'pids_max': n}: how often the jail hit its limits."""
        out = {"oom_kill": 0, "pids_max": 0}
        for d in self.dirs:
            for fname in ("memory.events", "memory.oom_control", "pids.events"):
                for line in _read(d / fname).splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and v.strip().isdigit():
                        out["oom_kill"] = max(out["oom_kill"], int(v))
                    if k == "max" and v.strip().isdigit():
                        out["pids_max"] = max(out["pids_max"], int(v))
        return out

    def destroy(self) -> None:
        """SIGKILL every task left in the jail, then remove the cgroup folders."""
        for _ in range(50):
            pids = {int(x) for d in self.dirs for x in _read(d / "cgroup.procs").split()}
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for d in self.dirs:
            _rmdir(d)


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _rmdir(d: Path) -> None:
    for _ in range(20):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def describe(limits: Limits | None = None) -> str:
    """What a jail gets on this machine, for the CSV and the README (one line)."""
    limits = limits or Limits()
    cg = Cgroup.create(f"autograder-probe-{secrets.token_hex(4)}", limits)
    if cg is not None:
        cg.destroy()
        whole = f"{cg.kind}: {limits.memory_mb} MB, {limits.processes} tasks for the whole jail"
    else:
        whole = (f"no cgroup (prlimit only: {limits.memory_mb} MB address space per process, "
                 f"{limits.processes} tasks per uid)")
    user = "uid 61000+slot" if os.geteuid() == 0 else f"uid {os.getuid()} (not root: no uid switch)"
    return f"bwrap, {user}, {whole}"


# ---- the jail command -------------------------------------------------------------------

def jail_command(root: Path, command: list[str], limits: Limits, slot: int = 0,
                 env: dict[str, str] | None = None, cgroup: Cgroup | None = None,
                 withhold: list[str] | None = None) -> list[str]:
    """``python -m autograder.sandbox enter ... prlimit ... setpriv ... bwrap ... command``.

    ``root`` (same path inside) is the jail's only writable, visible folder. The first stage
    (still root) puts itself into ``cgroup``; prlimit and setpriv then exec into bwrap, so the
    whole tree is in the cgroup, limited and unprivileged. ``withhold``: the modules not offered
    (default: every module the course's assignments withhold, see ``withheld_mounts``).
    """
    exe = bwrap_path()
    if exe is None:
        raise SandboxUnavailable("bwrap not found (apt-get install bubblewrap)")
    root = Path(root).resolve()
    mem_as = (limits.memory_mb if cgroup is None else limits.address_space_mb) * 2**20
    args = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "enter"]
    args += [str(d / "cgroup.procs") for d in (cgroup.dirs if cgroup else [])] + ["--"]
    args += ["prlimit", f"--cpu={limits.cpu_seconds}", f"--as={mem_as}", "--core=0",
             f"--fsize={FILE_LIMIT}",
             f"--nproc={limits.processes}", "--", exe]
    if os.geteuid() == 0:  # bwrap mounts as root; the command runs as an unprivileged uid
        uid = UID_BASE + slot
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                 "--unshare-cgroup-try"]
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] + command
    else:  # already unprivileged: bwrap needs a user namespace
        args += ["--unshare-all"]
    args += ["--die-with-parent", "--new-session", "--clearenv", "--proc", "/proc",
             "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind", "/usr", "/usr", "--perms", "0755", "--dir", "/etc"]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    mounts = _readonly_mounts()
    parents = sorted({str(a) for m in mounts + [str(root), HARNESS_IN_JAIL]
                      for a in Path(m).parents if str(a) not in ("/", "/usr", "/tmp")})
    for d in parents:  # bwrap would make missing parents 0700: the jail's uid must pass
        if not d.startswith("/usr/"):
            args += ["--perms", "0755", "--dir", d]
    for p in mounts:
        args += ["--ro-bind", p, p]
    args += withheld_mounts(withhold)
    args += ["--ro-bind", str(HARNESS), HARNESS_IN_JAIL]
    args += ["--bind", str(root), str(root), "--chdir", str(root)]
    home = f"{root}/{HOME}"
    base_env = {"HOME": home, "PATH": f"{Path(sys.prefix)}/bin:/usr/bin:/bin",
                "MPLCONFIGDIR": f"{home}/.mpl",
                "IPYTHONDIR": f"{home}/.ipython", "PYTHONNOUSERSITE": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
                "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    base_env.update(env or {})
    for k, v in base_env.items():
        args += ["--setenv", k, v]
    return args + ["--"] + command


def own_for_jail(path: Path, slot: int) -> None:
    """Give the jail's uid the folder it may write (no-op unless we are root)."""
    for d in (HOME, IPC):
        (Path(path) / d).mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return
    uid = UID_BASE + slot
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(name, uid, uid)


def check_sandbox() -> None:
    """Raise SandboxUnavailable unless a trivial jailed command runs here."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        own_for_jail(Path(tmp), 0)
        try:
            cmd = jail_command(Path(tmp), [sys.executable, "-c", "print('ok')"], Limits())
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"bwrap failed to start: {e}") from e
    if out.returncode != 0 or out.stdout.strip() != "ok":
        raise SandboxUnavailable(f"bwrap cannot run here: {out.stderr.strip()[:500]}")


def _enter(argv: list[str]) -> None:
    """``enter CGROUP_PROCS... -- COMMAND``: join the cgroups, then exec the command."""
    k = argv.index("--")
    for procs in argv[:k]:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    os.execvp(argv[k + 1], argv[k + 1:])


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "enter":
    _enter(sys.argv[2:])
