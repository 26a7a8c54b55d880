"""``Trainer.fit(on_step=...)``: the per-step hook experiments record through.

The hook sees every optimizer step once, in order, after the EMA update and with the step's log
record; a run with a hook that only reads trains bit for bit as the same run without one.
"""
import torch

from reference_impl.config import load_config
from reference_impl.training.trainer import Trainer


def _cfg(path):
    return load_config("ci", [f"output_dir={path}"])  # 8 steps: 4 at 16 px, then 4 at 32 px


def test_the_hook_sees_every_step_once_and_changes_nothing(tmp_path):
    plain = Trainer(_cfg(tmp_path / "plain"), progress=False)
    plain.fit()

    seen = []

    def record(trainer, rec):  # reads what a recording hook reads, changes nothing
        assert rec["step"] == trainer.step
        assert trainer.ema.optimization_step == rec["step"]  # the EMA has folded this step in
        snapshot = {k: v.detach().clone() for k, v in trainer.raw_unet.state_dict().items()}
        seen.append((rec["step"], rec["resolution"], len(snapshot)))
        if trainer.history and trainer.history[-1]["step"] == rec["step"]:
            assert trainer.history[-1] is rec  # a logged step: the log keeps this very record

    hooked = Trainer(_cfg(tmp_path / "hooked"), progress=False)
    hooked.fit(stop_after=3, on_step=record)  # in two pieces, as the experiments train
    hooked.fit(on_step=record)

    assert [s for s, *_ in seen] == list(range(1, 9))
    assert [r for _, r, *_ in seen] == [16] * 4 + [32] * 4
    for (name, p), q in zip(plain.raw_unet.named_parameters(), hooked.raw_unet.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(plain.ema.shadow.parameters(), hooked.ema.shadow.parameters()):
        assert torch.equal(p, q)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in hooked.history]
