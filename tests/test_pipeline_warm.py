"""The evaluation probe trained on the idle core (reference_impl/pipeline/warm.py): the second
process writes the same probe, bit for bit, as training it here; nothing starts without a
second core or when the cache holds it; an interrupted build leaves nothing half-made."""
import torch

from reference_impl.evaluation.probe import ProbeConfig, probe_path, train_probe
from reference_impl.pipeline import warm

TINY = ProbeConfig(num_train=256, num_heldout=32, epochs=1, batch_size=64, width=8, seed=3)


def test_second_process_trains_the_same_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("REFERENCE_IMPL_CACHE", str(tmp_path / "cache"))  # the child inherits it
    assert warm.start(1, tmp_path, TINY) is None  # one core: nothing to overlap
    job = warm.start(2, tmp_path, TINY)
    assert job is not None
    assert warm.wait(job, tmp_path) >= 0.0
    assert job.returncode == 0, (tmp_path / warm.LOG).read_text()
    assert warm.wait(job, tmp_path) is None  # already waited for: nothing left to wait on
    assert warm.wait(None, tmp_path) is None
    blob = torch.load(probe_path(TINY), weights_only=True)["state_dict"]
    here = train_probe(TINY, progress=False).state_dict()  # one thread, as a rank trains it
    assert blob.keys() == here.keys()
    assert all(torch.equal(blob[k], here[k]) for k in here)
    assert warm.start(2, tmp_path, TINY) is None  # cached now


def test_stopped_build_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REFERENCE_IMPL_CACHE", str(tmp_path / "cache"))
    job = warm.start(2, tmp_path, ProbeConfig(seed=4))  # a full-size build, stopped at once
    warm.stop(job)
    assert job.returncode is not None
    path = probe_path(ProbeConfig(seed=4))
    assert not path.exists() and not list(path.parent.glob("*.tmp*"))
