"""Run a notebook's cells one by one in a jailed kernel, from a trusted driver outside it.

The driver (this process) holds the notebook and records outputs; only the IPython kernel
runs inside bubblewrap. They talk over ZeroMQ ``ipc`` sockets (Unix socket files in the
student's work folder), which need no network, so the kernel can run with ``--unshare-net``.
Student code therefore cannot rewrite the recorded results: it never sees the driver.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .sandbox import Limits, bwrap_command


class JailedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel command is wrapped in ``prlimit ... bwrap``."""

    def __init__(self, workdir: Path, limits: Limits, sandbox: bool, extra_env=None, **kw):
        super().__init__(kernel_name="python3", transport="ipc",
                         ip=str(Path(workdir) / ".ipc" / "kernel"),
                         connection_file=str(Path(workdir) / ".ipc" / "kernel.json"), **kw)
        self._workdir, self._limits, self._sandbox = Path(workdir), limits, sandbox
        self._extra_env = extra_env or {}

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if not self._sandbox:
            return cmd
        return bwrap_command(self._workdir, cmd, self._limits, self._extra_env)

    @property
    def kernel_spec(self):
        spec = super().kernel_spec
        if spec is not None:
            # bwrap does not forward SIGINT to its child: interrupt over the control channel.
            spec.interrupt_mode = "message"
        return spec


def run_cells(nb, workdir: Path, limits: Limits, sandbox: bool = True,
              extra_env: dict | None = None) -> list[dict]:
    """Execute every code cell of ``nb`` in place; return one status record per cell.

    Status: "ok", "error" (with ename/evalue), "timeout", "not-run" (kernel died or was
    killed before it), "skipped" (markdown). A timeout interrupts the kernel; if the kernel
    does not answer a probe afterwards it is killed and the remaining cells are not run.
    """
    (Path(workdir) / ".ipc").mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "home").mkdir(parents=True, exist_ok=True)
    km = JailedKernelManager(workdir, limits, sandbox, extra_env)
    timeout_reply = {"ename": "TimeoutError",
                     "evalue": f"cell exceeded the {limits.cell_timeout} s limit and was interrupted",
                     "traceback": []}
    client = NotebookClient(nb, km=km, timeout=limits.cell_timeout, interrupt_on_timeout=True,
                            error_on_timeout=timeout_reply, allow_errors=True,
                            record_timing=False, startup_timeout=120, iopub_timeout=5,
                            resources={"metadata": {"path": str(workdir)}})
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
            try:
                client.execute_cell(cell, i)
            except DeadKernelError:
                status[i] = {"status": "error", "ename": "DeadKernelError",
                             "evalue": "the kernel died while running this cell"}
                break
            errors = [o for o in cell.outputs if o.get("output_type") == "error"]
            timed_out = any(o.get("ename") == "TimeoutError" and o.get("evalue") ==
                            timeout_reply["evalue"] for o in errors)
            if not timed_out and time.monotonic() - t0 >= limits.cell_timeout:
                timed_out = bool(errors)  # interrupted: KeyboardInterrupt from the kernel
            rec = {"status": "timeout" if timed_out else "error" if errors else "ok",
                   "seconds": round(time.monotonic() - t0, 2)}
            if errors:
                rec.update(ename=errors[-1].get("ename", ""), evalue=errors[-1].get("evalue", ""))
            status[i] = rec
            if timed_out and not _responsive(client):
                status[i]["reason"] = "kernel unresponsive after the timeout: killed"
                break
    return status


def _responsive(client: NotebookClient, wait: float = 10.0) -> bool:
    """After a timeout: does the kernel answer a trivial request (the interrupt worked)?"""
    from nbformat.v4 import new_code_cell

    probe = new_code_cell("pass")
    saved = client.timeout
    client.timeout, client.interrupt_on_timeout = int(wait), False
    try:
        client.execute_cell(probe, -1, store_history=False)
        return True
    except Exception:  # noqa: BLE001 - any failure means the kernel is wedged
        return False
    finally:
        client.timeout, client.interrupt_on_timeout = saved, True
