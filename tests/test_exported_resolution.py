"""The exported model records the resolution it was last trained at (models/exported.py), and
``sample`` / ``evaluate --checkpoint`` draw at it unless ``--resolution`` says otherwise.

The curriculum here goes 16 px -> 32 px: the UNet is built with sample_size 16, so before this
was recorded the CLI drew 16 px images from a model that finished at 32 px.
"""
import pytest
from PIL import Image

from reference_impl.cli import main as cli
from reference_impl.config import load_config
from reference_impl.diffusion.sampling import sample_checkpoint
from reference_impl.models.exported import load_final
from reference_impl.training.trainer import Trainer


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    run = tmp_path_factory.mktemp("res")
    cfg = load_config("ci", [f"output_dir={run}",
                             "train.curriculum=[{steps: 1, resolution: 16}, {steps: 1, resolution: 32}]"])
    t = Trainer(cfg, progress=False)
    assert t.raw_unet.config.sample_size == 16  # built for the first stage
    t.fit()
    return run / "final"


def test_export_records_the_last_trained_resolution(final):
    for ema in (True, False):
        unet, *_ = load_final(final, ema=ema)
        assert unet.config.sample_size == 32
    assert sample_checkpoint(final, ["one red circle"], steps=2).shape == (1, 3, 32, 32)
    assert sample_checkpoint(final, ["one red circle"], steps=2, resolution=16).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(("extra", "size"), [([], 32), (["--resolution", "16"], 16)])
def test_sample_command_uses_it(final, tmp_path, extra, size):
    out = tmp_path / "s.png"
    assert cli(["sample", "--checkpoint", str(final), "--prompt", "one red circle", "--num", "1",
                "--steps", "2", "--out", str(out), *extra]) == 0
    assert Image.open(out).size == (size, size)  # one image: the grid is the image itself


def test_evaluate_passes_the_override(final, monkeypatch, capsys):
    from reference_impl.diffusion import sampling
    from reference_impl.evaluation.validation import real_images

    calls = []

    def spy(checkpoint_dir, prompts, seed, **kw):
        calls.append(kw)
        return real_images(prompts, len(prompts), kw.get("resolution", 32), seed=seed)

    monkeypatch.setattr(sampling, "sample_checkpoint", spy)
    for extra in ([], ["--resolution", "24"]):
        assert cli(["evaluate", "--checkpoint", str(final), "--num-samples", "4",
                    "--reference", "0", *extra]) == 0
    assert calls == [{}, {"resolution": 24}]  # default: sample_checkpoint's own (the recorded)
