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
    backend._RECENT.clear()
    backend.positions(7)
    first = backend._POSITIONS["table"]
    backend.positions(4000)
    assert backend._POSITIONS["table"] is first and first.shape == (4096,)
    backend.positions(4096)  # one past the table
    assert backend._POSITIONS["table"].shape == (8192,)
    assert backend.positions(8191).item() == 8191


def test_a_steps_layers_share_one_view_and_the_memo_stays_small():
    backend._RECENT.clear()
    first = backend.positions(321)
    assert backend.positions(321) is first, "48 layers asking for one step's position get one slice"
    assert backend.positions(321, 2) is not first and backend.positions(321, 2).tolist() == [321, 322]
    for step in range(322, 322 + 3 * backend._RECENT_MAX):  # a decode moving on
        assert backend.positions(step).item() == step
        assert len(backend._RECENT) <= backend._RECENT_MAX
    assert backend.positions(321).item() == 321  # dropped from the memo, sliced again


@pytest.mark.parametrize(("start", "n"), [(-1, 1), (0, 0)])
def test_bad_positions_are_refused(start, n):
    with pytest.raises(ValueError, match="positions"):
        backend.positions(start, n)


def test_position_input_takes_an_int_or_one_device_int32():
    assert backend.position_input(123).tolist() == [123]
    pos = mx.array([77], dtype=mx.int32)
    assert backend.position_input(pos).tolist() == [77]
    assert backend.position_input(mx.array(77, dtype=mx.int32)).shape == (1,)


@pytest.mark.parametrize("bad", [mx.array([1, 2], dtype=mx.int32), mx.array([1.0]), mx.array([3], dtype=mx.int64)])
def test_position_input_refuses_other_arrays(bad):
    with pytest.raises(ValueError, match="offset array must be one int32"):
        backend.position_input(bad)
