"""One model worker, a bounded queue, round-robin between connections."""
from __future__ import annotations

import queue
import threading

import pytest

from addon.protocol import wire
from server.fair_queue import FairQueue
from tests.hardening.hardening_support import (TOKEN, assert_serves, hang_image, image,
                                               raw_connect, raw_hello, replies_until,
                                               start_service, wait_progress, wait_until)
from tests.wire import fake_engine


class RecordingEngine(fake_engine.FakeEngine):
    """Remembers the order in which requests reached the model (by image height)."""

    def __init__(self) -> None:
        super().__init__(vertices=16)
        self.order: list[int] = []
        self.lock = threading.Lock()

    def reconstruct(self, request, progress=lambda f, m: None, cancelled=lambda: False):
        if request.image.shape[1] != fake_engine.HANG_WIDTH:
            with self.lock:
                self.order.append(int(request.image.shape[0]))
        return super().reconstruct(request, progress, cancelled)


def test_fair_queue_takes_turns_between_owners():
    q: FairQueue[str] = FairQueue(maxsize=10)
    for item in ("a1", "a2", "a3", "a4"):
        q.put_nowait("A", item)
    q.put_nowait("B", "b1")
    q.put_nowait("B", "b2")
    q.put_nowait("C", "c1")
    got = [q.get(timeout=1) for _ in range(7)]
    assert got == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_fair_queue_bounds_and_removal():
    q: FairQueue[int] = FairQueue(maxsize=3, max_per_owner=2)
    q.put_nowait("A", 1)
    q.put_nowait("A", 2)
    with pytest.raises(queue.Full):  # A's share is used up, though the queue has room
        q.put_nowait("A", 3)
    q.put_nowait("B", 10)
    with pytest.raises(queue.Full):  # the queue is full
        q.put_nowait("C", 20)
    assert q.remove("A", 2) and not q.remove("A", 2)
    assert q.remove_owner("B") == [10] and q.remove_owner("B") == []
    assert q.qsize() == 1 and q.owner_size("A") == 1
    assert q.get(timeout=1) == 1 and q.qsize() == 0
    with pytest.raises(ValueError):
        FairQueue(0)


def test_a_client_with_many_queued_jobs_does_not_starve_another():
    engine = RecordingEngine()
    running = start_service(engine, queue_size=16)
    try:
        with raw_connect(running.port) as greedy, raw_connect(running.port) as polite:
            raw_hello(greedy)
            raw_hello(polite)
            # Hold the worker so that everything below is queued before anything runs.
            wire.send_message(greedy, "reconstruct", 1, {}, {"image": hang_image()})
            wait_progress(greedy, 1)
            for rid in range(2, 8):  # greedy queues 6 jobs (heights 2..7) ...
                wire.send_message(greedy, "reconstruct", rid, {}, {"image": image(8, rid)})
            assert wait_until(lambda: running.queued() == 6)
            for rid in (1, 2):  # ... then polite queues 2 (heights 101, 102)
                wire.send_message(polite, "reconstruct", rid, {},
                                  {"image": image(8, 100 + rid)})
            assert wait_until(lambda: running.queued() == 8)
            wire.send_message(greedy, "cancel", 1)
            greedy_replies = replies_until(greedy, lambda r: r.id == 7)
            polite_replies = replies_until(polite, lambda r: r.id == 2)
            assert [(r.type, r.id) for r in polite_replies] == [("result", 1), ("result", 2)]
            assert [r.type for r in greedy_replies] == ["error"] + ["result"] * 6
        # FIFO would have run all of greedy's jobs first; round-robin interleaves them.
        assert engine.order == [2, 101, 3, 102, 4, 5, 6, 7]
    finally:
        running.shutdown()


def test_queued_jobs_of_a_closed_connection_leave_the_queue():
    engine = RecordingEngine()
    running = start_service(engine, queue_size=4)
    try:
        holder = raw_connect(running.port)
        raw_hello(holder)
        wire.send_message(holder, "reconstruct", 1, {}, {"image": hang_image()})
        wait_progress(holder, 1)
        with raw_connect(running.port) as leaver:
            raw_hello(leaver)
            for rid in (1, 2, 3):
                wire.send_message(leaver, "reconstruct", rid, {}, {"image": image(8, 50 + rid)})
            assert wait_until(lambda: running.queued() == 3)
        assert wait_until(lambda: running.queued() == 0)  # freed at once, not run
        holder.close()  # cancels the hanging job
        assert_serves(running.port)
        assert 51 not in engine.order and 52 not in engine.order and 53 not in engine.order
    finally:
        running.shutdown()


def test_two_clients_at_once_never_hang():
    running = start_service(queue_size=8)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(10):
                assert_serves(running.port)
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads) and not errors
    finally:
        running.shutdown()
