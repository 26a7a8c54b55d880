"""Run a notebook's cells one by one in a jailed kernel, from a trusted driver outside it.

The driver (this process) holds the notebook and records outputs; only the IPython kernel
runs inside the jail. They talk over ZeroMQ ``ipc`` sockets (Unix socket files in the jail's
``.ipc``), which need no network, so the kernel can run with ``--unshare-net``. This run is
for the student's feedback only: the kernel can forge any message it sends, so nothing here
decides a point (the hidden checks run in harness.py and are compared in checks.py).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import nbformat
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

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments) + [PRELOAD]
        if not self._sandbox:
            return cmd
        if os.geteuid() == 0:  # the kernel runs as the jail's uid: it must read its key file
            os.chown(self.connection_file, UID_BASE + self._slot, UID_BASE + self._slot)
        return jail_command(self._workdir, cmd, self._limits, slot=self._slot,
                            env=self._extra_env, cgroup=self._cgroup)

    @property
    def kernel_spec(self):
        spec = super().kernel_spec
        if spec is not None:
            # bwrap does not forward SIGINT to its child: interrupt over the control channel.
            spec.interrupt_mode = "message"
        return spec


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
                            iopub_timeout=5, resources={"metadata": {"path": str(workdir)}})
    status: list[dict] = [{"status": "skipped"} if c.cell_type != "code" else
                          {"status": "not-run"} for c in nb.cells]
    start = time.monotonic()
    with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
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
    return status


def _owned(cell) -> bool:
    return cell.metadata.get("autograder", {}).get("origin") in ("source", "canary")


def _kill(km: JailedKernelManager) -> None:
    """Watchdog: SIGKILL the jailed kernel (bwrap's --die-with-parent takes the rest down)."""
    proc = getattr(km.provisioner, "process", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
