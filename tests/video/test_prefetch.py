"""server/video/prefetch.py: frames read ahead on a thread come out in order, never more than
`depth` ahead, with the reader's error at its place, and an early stop closes the source."""
from __future__ import annotations

import threading

import pytest

from server.video.prefetch import prefetch


def test_items_come_in_order_and_the_reader_stays_within_depth() -> None:
    produced: list[int] = []

    def source():
        for k in range(50):
            produced.append(k)
            yield k

    out = []
    for item in prefetch(source(), depth=3):
        # the one in our hands, at most 3 queued, at most 1 the reader holds while it waits
        assert len(produced) <= item + 1 + 3 + 1
        out.append(item)
    assert out == list(range(50))


def test_an_error_in_the_reader_comes_out_after_the_items_before_it() -> None:
    def source():
        yield 1
        yield 2
        raise ValueError("frame 3 is broken")

    got = []
    with pytest.raises(ValueError, match="frame 3 is broken"):
        for item in prefetch(source(), depth=4):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_closes_the_source_and_ends_the_reader() -> None:
    closed = threading.Event()

    def source():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    before = {t.ident for t in threading.enumerate()}
    frames = prefetch(source(), depth=2)
    assert [next(frames) for _ in range(3)] == [0, 1, 2]
    frames.close()
    assert closed.wait(10)
    assert not [t for t in threading.enumerate() if t.name == "clip-frames" and t.ident not in before]


def test_depth_zero_reads_in_the_caller_s_thread() -> None:
    names = []

    def source():
        names.append(threading.current_thread().name)
        yield 1

    assert list(prefetch(source(), depth=0)) == [1] and names == [threading.current_thread().name]
