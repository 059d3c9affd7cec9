"""backend.positions: per-call RoPE offsets as views of one device-written table, never a host-built array."""

import mlx.core as mx
import pytest
from zmlx.kernels import backend


@pytest.mark.parametrize(("start", "n"), [(0, 1), (31, 1), (123, 33), (4095, 2), (9000, 3)])
def test_positions_are_the_integers_asked_for(start, n):
    got = backend.positions(start, n)
    assert got.dtype == mx.int32 and got.shape == (n,)
    assert got.tolist() == list(range(start, start + n))


def test_table_is_reused_and_grows_by_doubling():
    backend._POSITIONS.clear()
    backend.positions(7)
    first = backend._POSITIONS["table"]
    backend.positions(4000)
    assert backend._POSITIONS["table"] is first and first.shape == (4096,)
    backend.positions(4096)  # one past the table
    assert backend._POSITIONS["table"].shape == (8192,)
    assert backend.positions(8191).item() == 8191


@pytest.mark.parametrize(("start", "n"), [(-1, 1), (0, 0)])
def test_bad_positions_are_refused(start, n):
    with pytest.raises(ValueError, match="positions"):
        backend.positions(start, n)
