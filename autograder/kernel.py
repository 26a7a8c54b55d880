"""Run a notebook's cells one by one in a jailed kernel, from a trusted driver outside it.

The driver (this process) holds the notebook and records outputs; only the IPython kernel
runs inside the jail. They talk over ZeroMQ ``ipc`` sockets (Unix socket files in the jail's
``.ipc``), which need no network, so the kernel can run with ``--unshare-net``. This run is
for the student's feedback only: the kernel can forge any message it sends, so nothing here
decides a point (the hidden checks run in harness.py and are compared in checks.py).

The socket files are in the jail's folder, which the student's code may rewrite: it can put a
symbolic link where a socket was (or replace ``.ipc`` itself), and a client that connects or
reconnects *by path*, as root, would follow it to any Unix socket of the host or of another
jail. So the driver opens ``.ipc`` (O_NOFOLLOW) before the kernel starts, then each socket the
kernel made (O_PATH | O_NOFOLLOW, checked to be a socket) and connects through
``/proc/self/fd/N``: a connection, and every reconnection, reaches that socket inode and nothing
else. The kernel runs with ``python -P`` (its folder is not put first on ``sys.path``, so a
student's ``ipykernel_launcher.py`` does not replace it), and nothing in the jail is removed by
path afterwards (the driver removes the whole folder without following links).
"""
from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import nbformat
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .sandbox import IPC, UID_BASE, Cgroup, Limits, jail_command

# Import the heavy libraries at kernel start (under startup_timeout), not in the first cell's
# timer: on a busy machine importing torch alone can outlast a cell's timeout.
PRELOAD = ("--IPKernelApp.exec_lines=import importlib.util as _u; "
           "[__import__(_m) for _m in ('numpy', 'torch') if _u.find_spec(_m)]; del _u")


class JailedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel command is wrapped in the jail (sandbox.jail_command)."""

    def __init__(self, workdir: Path, limits: Limits, sandbox: bool, extra_env=None, slot=0,
                 cgroup: Cgroup | None = None, **kw):
        super().__init__(kernel_name="python3", transport="ipc",
                         ip=str(Path(workdir) / IPC / "kernel"),
                         connection_file=str(Path(workdir) / IPC / "kernel.json"), **kw)
        self._workdir, self._limits, self._sandbox = Path(workdir), limits, sandbox
        self._extra_env, self._slot, self._cgroup = extra_env or {}, slot, cgroup
        self.client_factory = JailedKernelClient
        # Opened before any student code runs: the folder the kernel's sockets will be in.
        self._ipc_fd = os.open(Path(workdir) / IPC, os.O_RDONLY | os.O_DIRECTORY |
                               os.O_NOFOLLOW | os.O_CLOEXEC)
        self._socket_fds: dict[int, int] = {}
        self.socket_wait = 120.0  # seconds for the kernel to make a socket (its startup time)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments) + [PRELOAD]
        if cmd[1:2] == ["-m"]:  # python -P -m ipykernel_launcher: not the student's module
            cmd.insert(1, "-P")
        if not self._sandbox:
            return cmd
        if os.geteuid() == 0:  # the kernel runs as the jail's uid: it must read its key file
            os.chown(self.connection_file, UID_BASE + self._slot, UID_BASE + self._slot,
                     follow_symlinks=False)
        return jail_command(self._workdir, cmd, self._limits, slot=self._slot,
                            env=self._extra_env, cgroup=self._cgroup)

    def _make_url(self, channel: str) -> str:
        """``ipc:///proc/self/fd/N``: the kernel's own socket, never a path the jail can
        redirect (used by this manager's control socket and by its clients)."""
        return f"ipc:///proc/self/fd/{self._socket_fd(getattr(self, f'{channel}_port'))}"

    def _socket_fd(self, port: int) -> int:
        """An O_PATH descriptor of the socket ``kernel-<port>`` in the ``.ipc`` folder opened at
        the start, once the kernel has made it; a link (O_PATH | O_NOFOLLOW opens the link
        itself) or any other file there, or a socket of another uid, is refused."""
        if port in self._socket_fds:
            return self._socket_fds[port]
        name = f"{Path(self.ip).name}-{port}"
        deadline = time.monotonic() + self.socket_wait
        while True:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._ipc_fd)
            except FileNotFoundError:
                fd = None
            except OSError as e:
                raise RuntimeError(f"the kernel's socket {name} is not a socket of the jail") from e
            if fd is not None:
                st = os.fstat(fd)
                own = not self._sandbox or os.geteuid() != 0 or st.st_uid == UID_BASE + self._slot
                if not stat.S_ISSOCK(st.st_mode) or not own:
                    os.close(fd)
                    raise RuntimeError(f"the kernel's socket {name} is not a socket of the jail")
                self._socket_fds[port] = fd
                return fd
            proc = getattr(self.provisioner, "process", None)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("the kernel exited before it made its sockets")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel made no socket {name} in {self.socket_wait:g} s")
            time.sleep(0.05)

    def cleanup_connection_file(self) -> None:
        """Nothing is removed by path in the jail's folder (a link there would be followed):
        the driver removes the whole folder afterwards, without following links."""

    def cleanup_ipc_files(self) -> None:
        """See cleanup_connection_file."""

    def close_descriptors(self) -> None:
        for fd in [self._ipc_fd, *self._socket_fds.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._socket_fds.clear()

    @property
    def kernel_spec(self):
        spec = super().kernel_spec
        if spec is not None:
            # bwrap does not forward SIGINT to its child: interrupt over the control channel.
            spec.interrupt_mode = "message"
        return spec


class JailedKernelClient(AsyncKernelClient):
    """A kernel client whose channels connect through its manager's socket descriptors."""

    def _make_url(self, channel: str) -> str:
        return self.parent._make_url(channel)


class CappedClient(NotebookClient):
    """A NotebookClient that keeps at most ``MAX_OUTPUT`` characters of output per cell.

    A cell printing in a loop until its timeout would otherwise fill the driver's memory.
    Errors always pass: they decide the score.
    """

    MAX_OUTPUT = 1_000_000

    def output(self, outs, msg, display_id, cell_index):
        used = getattr(self, "_used", {})
        self._used = used
        if msg["msg_type"] != "error":
            used[cell_index] = used.get(cell_index, 0) + len(str(msg.get("content", "")))
            if used[cell_index] > self.MAX_OUTPUT:
                if used.get(("noted", cell_index)) is None:
                    used[("noted", cell_index)] = True
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stdout", text="\n[further output dropped by the autograder]\n"))
                return None
        return super().output(outs, msg, display_id, cell_index)


def run_cells(nb, workdir: Path, limits: Limits, sandbox: bool = True,
              extra_env: dict | None = None, slot: int = 0,
              cgroup: Cgroup | None = None) -> list[dict]:
    """Execute every code cell of ``nb`` in place; return one status record per cell.

    Status: "ok", "error" (with ename/evalue), "timeout", "not-run" (the kernel died or was
    killed before it), "skipped" (markdown). A cell past ``cell_timeout`` is interrupted
    (KeyboardInterrupt in the kernel); a kernel that ignores the interrupt is killed by a
    watchdog after twice the timeout, and the remaining cells are not run.
    """
    (Path(workdir) / IPC).mkdir(parents=True, exist_ok=True)
    km = JailedKernelManager(workdir, limits, sandbox, extra_env, slot=slot, cgroup=cgroup)
    client = CappedClient(nb, km=km, timeout=limits.cell_timeout, interrupt_on_timeout=True,
                            allow_errors=True, record_timing=False, startup_timeout=120,
                            iopub_timeout=5, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(workdir)}})
    status: list[dict] = [{"status": "skipped"} if c.cell_type != "code" else
                          {"status": "not-run"} for c in nb.cells]
    try:
        _run(client, km, nb, limits, status)
    finally:
        km.close_descriptors()
    return status


def _run(client, km, nb, limits: Limits, status: list[dict]) -> None:
    start = time.monotonic()
    # cleanup_kc: nbclient shuts down a kernel it was handed only when asked; without it the
    # kernel outlived the run (until the cgroup was destroyed, or the driver exited).
    with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cleanup_kc=True):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if time.monotonic() - start > limits.wall_seconds:
                status[i] = {"status": "not-run", "reason": "wall-clock limit of the student"}
                break
            t0 = time.monotonic()
            watchdog = threading.Timer(2 * limits.cell_timeout + 10, _kill, (km,))
            watchdog.start()
            try:
                # Instructor cells stay out of IPython's history (In, _ih, Out).
                client.execute_cell(cell, i, store_history=_owned(cell) is False)
            except DeadKernelError:
                killed = not watchdog.is_alive()
                status[i] = {"status": "timeout" if killed else "error", "ename": "DeadKernelError",
                             "evalue": "the kernel died while running this cell"}
                if killed:
                    status[i]["reason"] = "kernel ignored the interrupt after a timeout: killed"
                break
            finally:
                watchdog.cancel()
            errors = [o for o in cell.outputs if o.get("output_type") == "error"]
            timed_out = bool(errors) and errors[-1].get("ename") == "KeyboardInterrupt" and \
                time.monotonic() - t0 >= limits.cell_timeout
            rec = {"status": "timeout" if timed_out else "error" if errors else "ok",
                   "seconds": round(time.monotonic() - t0, 2)}
            if errors:
                rec.update(ename=errors[-1].get("ename", ""), evalue=errors[-1].get("evalue", ""))
            status[i] = rec


def _owned(cell) -> bool:
    return cell.metadata.get("autograder", {}).get("origin") in ("source", "canary")


def _kill(km: JailedKernelManager) -> None:
    """Watchdog: SIGKILL the jailed kernel (bwrap's --die-with-parent takes the rest down)."""
    proc = getattr(km.provisioner, "process", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
