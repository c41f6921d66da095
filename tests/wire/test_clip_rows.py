"""addon/protocol/clip_rows.py: a clip's rows arriving in parts are joined exactly once, in row
order whatever the order of the parts, and a part that does not fit is refused by name."""
from __future__ import annotations

import re
import socket

import numpy as np
import pytest

from addon.protocol.clip_rows import RowAssembler


def _rows(start: int, stop: int) -> dict[str, np.ndarray]:
    n = stop - start
    return {"frame": np.arange(start, stop, dtype=np.int32),
            "bbox": np.arange(start * 4, stop * 4, dtype=np.float32).reshape(n, 4)}


def _skel(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.float32)[:, None, None] * np.ones((1, 127, 8), np.float32)


def test_parts_in_any_order_give_the_rows_in_order() -> None:
    rows = RowAssembler()
    rows.add(3, _rows(3, 7))
    rows.add(0, _rows(0, 3))
    rows.add(7, _rows(7, 9))
    rows.add(5, {"mhr_skel_state": _skel(5, 9)}, total=9)
    rows.add(0, {"mhr_skel_state": _skel(0, 5)}, total=9)
    out = rows.finish(9)
    assert out["frame"].tolist() == list(range(9))
    np.testing.assert_array_equal(out["bbox"], np.arange(36, dtype=np.float32).reshape(9, 4))
    np.testing.assert_array_equal(out["mhr_skel_state"][:, 0, 0], np.arange(9, dtype=np.float32))
    assert out["frame"].dtype == np.int32 and out["mhr_skel_state"].dtype == np.float32


def test_a_part_is_copied_so_the_received_buffer_can_go() -> None:
    part = _rows(0, 2)
    rows = RowAssembler()
    rows.add(0, part)
    part["bbox"][:] = -1.0
    assert rows.finish(2)["bbox"].min() >= 0.0


def test_no_parts_and_no_rows_is_an_empty_result() -> None:
    assert RowAssembler().finish(0) == {}


@pytest.mark.parametrize("parts,total,needle", [
    ([(0, _rows(0, 3)), (2, _rows(2, 4))], 4, "overlap at row 2"),
    ([(0, _rows(0, 2)), (3, _rows(3, 4))], 4, "a gap at row 2"),
    ([(0, _rows(0, 3))], 4, "cover 3 of the clip's 4 rows"),
    ([], 4, "none of the clip's 4 rows arrived"),
])
def test_rows_that_do_not_cover_the_clip_exactly_once_are_refused(parts, total, needle) -> None:
    rows = RowAssembler()
    for start, arrays in parts:
        rows.add(start, arrays)
    with pytest.raises(ValueError, match=re.escape(needle)):
        rows.finish(total)


@pytest.mark.parametrize("start,arrays,total,needle", [
    (0, {"vertices": np.zeros((2, 3))}, None, "not a row array"),
    (0, {"bbox": np.zeros((2, 5), np.float32)}, None, "expected (4,)"),
    (0, {"frame": np.zeros(2, np.int32), "bbox": np.zeros((3, 4), np.float32)}, None, "same number of rows"),
    (0, {}, None, "holds no array"),
    (-1, {"frame": np.zeros(2, np.int32)}, None, "row >= 0"),
    (0, {"frame": np.zeros(2, np.float32)}, None, "a part of float32"),
    (3, {"mhr_skel_state": _skel(3, 6)}, 5, "run past the clip's 5 rows"),
    (0, {"mhr_skel_state": _skel(0, 2)}, 7, "disagree on the row count"),
])
def test_a_part_that_does_not_fit_is_refused(start, arrays, total, needle) -> None:
    rows = RowAssembler()
    rows.add(0, {"frame": np.zeros(1, np.int32)})
    rows.add(0, {"mhr_skel_state": _skel(0, 1)}, total=5)
    with pytest.raises(ValueError, match=re.escape(needle)):
        rows.add(start, arrays, total)


def test_a_finish_with_another_row_count_than_the_parts_said_is_refused() -> None:
    rows = RowAssembler()
    rows.add(0, {"mhr_skel_state": _skel(0, 2)}, total=2)
    with pytest.raises(ValueError, match="has 3 rows but its parts said 2"):
        rows.finish(3)


def test_a_connection_waits_until_its_queue_has_room() -> None:
    """The clip job's back-pressure: `wait_pending_below` returns once the writer has sent
    enough, False while nothing drains or after the connection closed."""
    from server.connection import Connection

    ours, theirs = socket.socketpair()
    try:
        connection = Connection(ours, "test")
        for k in range(3):
            connection.send("progress", 1, {"fraction": 0.1 * k})
        assert connection.pending() == 3
        assert not connection.wait_pending_below(2, timeout=0.05)  # no writer yet
        connection.start_writer()
        assert connection.wait_pending_below(1, timeout=30.0)
        received = b""
        theirs.settimeout(30.0)
        while received.count(b"S3DB") < 3:
            received += theirs.recv(1 << 16)
        connection.close()
        assert not connection.wait_pending_below(1, timeout=0.05)
    finally:
        theirs.close()
