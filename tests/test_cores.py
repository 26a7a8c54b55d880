"""distributed/cores.py: lending the idle ranks' cores to the one process still working."""
import pytest
import torch

from reference_impl.distributed import cores


def test_threads_are_raised_in_the_block_and_restored_after():
    saved = torch.get_num_threads()
    want = min(2, cores.available_cores())
    with cores.threads(2):
        assert torch.get_num_threads() == (want if want > 1 else saved)
    assert torch.get_num_threads() == saved
    with pytest.raises(RuntimeError), cores.threads(2):  # restored on an error too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == saved


def test_zero_leaves_the_count_one_pins_it_and_more_than_the_cores_is_capped():
    saved = torch.get_num_threads()
    with cores.threads(0):
        assert torch.get_num_threads() == saved
    torch.set_num_threads(2)  # torch's default on 2 cores (the suite pins 1)
    try:
        with cores.threads(1):  # the pipeline in one process: one thread, whatever the default
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    with cores.threads(10_000):
        assert torch.get_num_threads() <= max(saved, cores.available_cores())
    assert torch.get_num_threads() == saved


def test_the_pipeline_gives_rank_0_one_thread_per_process():
    from reference_impl.config import load_config
    from reference_impl.pipeline import launch

    cfg = load_config("laptop", ["parallel.pipeline_processes=2"])
    assert launch.sampling_threads(cfg) == 2
    assert launch.per_rank(cfg, 2).parallel.sampling_threads == 2
    one = load_config("laptop", ["parallel.pipeline_processes=2", "parallel.sampling_threads=1"])
    assert launch.per_rank(one, 2).parallel.sampling_threads == 1
    assert launch.sampling_threads(load_config("ci")) == 1  # ci: one process, one thread
