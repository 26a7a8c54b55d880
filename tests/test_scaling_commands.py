"""The CPU launch commands in docs/scaling.md run as written (2 gloo processes each).

Every command of a ```bash block that trains ``--config ci`` is taken from the document
verbatim (continuation lines joined) and run through a shell in a scratch folder laid out like the repository root, with the
project environment's ``bin/`` first on PATH (as after ``source .venv/bin/activate``). Each must
exit 0 and leave a final export in its ``output_dir``: DDP through ``accelerate launch``, DDP
through ``torchrun``, and FSDP through ``torchrun``.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "scaling.md"


def cpu_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #")[0].strip()
            if "--config ci" in cmd:
                commands.append(" ".join(cmd.split()))
    return commands


def test_the_document_has_the_three_cpu_launches():
    cmds = cpu_commands()
    assert len(cmds) == 3, cmds
    assert sum(c.startswith("ACCELERATE_USE_CPU=1 accelerate launch") for c in cmds) == 1
    assert sum(c.startswith("torchrun") and "parallel.strategy=fsdp" in c for c in cmds) == 1


@pytest.mark.distributed
@pytest.mark.parametrize("command", cpu_commands())
def test_cpu_launch_command_runs_as_written(command, tmp_path):
    # the commands are written for the repository root: give the scratch folder its layout
    (tmp_path / "reference_impl").symlink_to(REPO / "reference_impl")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    try:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=400, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung: {command}\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = tmp_path / re.search(r"output_dir=(\S+)", command).group(1)
    assert (out / "final" / "unet_ema" / "config.json").exists(), shlex.split(command)
    assert (out / "metrics.jsonl").exists()
