"""ZeRO memory model against the numbers published in arXiv:1910.02054 (GB = 1e9 bytes)."""
import pytest

from reference_impl.distributed.zero import (
    GB,
    bytes_per_parameter,
    communication_elements,
    format_table,
    max_model_table,
    max_parameters,
    memory_table,
    model_state_bytes,
)


def test_figure_1_example():
    # Figure 1: Psi = 7.5B, N_d = 64, K = 12 -> 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device.
    gb = [model_state_bytes(7.5e9, stage, 64) / GB for stage in range(4)]
    assert gb == pytest.approx([120.0, 31.40625, 16.640625, 1.875], rel=1e-12)
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]


@pytest.mark.parametrize(
    "psi, n, expected",
    [  # Table 1 (per-device model-state memory, GB), columns P_os, P_os+g, P_os+g+p
        (7.5e9, 1, (120, 120, 120)),
        (7.5e9, 4, (52.5, 41.3, 30)),
        (7.5e9, 1024, (30.1, 15.1, 0.12)),
        (128e9, 4, (896, 704, 512)),
        (1e12, 1024, (4011.7, 2013.7, 15.6)),
    ],
)
def test_table_1_rows(psi, n, expected):
    got = [model_state_bytes(psi, stage, n) / GB for stage in (1, 2, 3)]
    # the paper rounds to one decimal (two for values below 1)
    assert got == pytest.approx(expected, abs=0.051)


def test_stage_formulas_and_monotonicity():
    psi, n, k = 1e9, 8, 12
    assert model_state_bytes(psi, 0, n) == (2 + 2 + k) * psi
    assert model_state_bytes(psi, 1, n) == 2 * psi + 2 * psi + k * psi / n
    assert model_state_bytes(psi, 2, n) == 2 * psi + (2 + k) * psi / n
    assert model_state_bytes(psi, 3, n) == (2 + 2 + k) * psi / n
    # one GPU: sharding over one device saves nothing
    assert {bytes_per_parameter(s, 1) for s in range(4)} == {16.0}
    # each stage saves more; a different K (e.g. SGD with momentum) is honoured
    per = [bytes_per_parameter(s, 16) for s in range(4)]
    assert per == sorted(per, reverse=True)
    assert bytes_per_parameter(0, 4, k=4) == 8


def test_largest_model_that_fits():
    # 80 GB, 8 GPUs: plain DDP holds 80e9 / 16 = 5B parameters; stage 3 holds 8x that.
    assert max_parameters(80e9, 0, 8) == 5_000_000_000
    assert max_parameters(80e9, 3, 8) == 40_000_000_000
    for stage in range(4):
        p = max_parameters(80e9, stage, 64, reserved_bytes=10e9)
        assert model_state_bytes(p, stage, 64) <= 70e9 < model_state_bytes(p + 1, stage, 64)
    rows = max_model_table(80e9, [1, 8, 64])
    assert rows[1]["stage3"] == max_parameters(80e9, 3, 8)
    assert [rows[2][f"stage{s}"] for s in range(4)] == sorted(
        rows[2][f"stage{s}"] for s in range(4)
    )


def test_communication_volume_section_7():
    assert communication_elements(1e9, 0) == communication_elements(1e9, 2) == 2e9
    assert communication_elements(1e9, 3) == 3e9  # 1.5x plain data parallelism


def test_tables_print():
    rows = memory_table(7.5e9, [1, 64])
    assert rows[1]["stage0"] == pytest.approx(120.0)
    text = format_table(rows)
    assert "31.41" in text and "1.88" in text and text.count("\n") == 3
    assert "40.00" in format_table(max_model_table(80e9, [8]), "B params", 1e9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bytes_per_parameter(4, 8), "stage"),
        (lambda: bytes_per_parameter(1, 0), "n_gpus"),
        (lambda: bytes_per_parameter(1, 8, k=-1), "K"),
        (lambda: model_state_bytes(-1, 1, 8), "n_params"),
        (lambda: max_parameters(0, 1, 8), "gpu_bytes"),
        (lambda: max_parameters(80e9, 1, 8, reserved_bytes=90e9), "reserved_bytes"),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
