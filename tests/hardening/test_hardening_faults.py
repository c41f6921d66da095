"""Faults against real `python -m server serve` subprocesses (test-double engine): kill -9,
disconnect mid-result, slow, stuck and silent clients, half frames, the parent quitting, two
add-on instances."""
from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time

import pytest

from addon.protocol import wire
from addon.protocol.client import Client, JobRunner
from tests.hardening import stubborn_engine
from tests.hardening.hardening_support import (hang_image, image, make_server, raw_connect,
                                               raw_hello, wait_progress)

# Results of about 7 MB each: a few of them overflow the loopback socket buffers.
BIG = {"SAM3D_FAKE_VERTICES": "150000"}


@pytest.fixture(scope="module")
def patient_server():
    """Large results and a long write timeout: only the writer-thread design keeps the model
    worker free of a stuck client here."""
    process = make_server("--io-timeout", "60", **BIG)
    process.start()
    yield process
    process.stop(timeout=5)


@pytest.fixture(scope="module")
def strict_server():
    process = make_server("--io-timeout", "1", "--handshake-timeout", "1", "--idle-timeout",
                          "2", **BIG)
    process.start()
    yield process
    process.stop(timeout=5)


def connect(server, timeout: float = 10.0) -> socket.socket:
    sock = raw_connect(server.port, timeout)
    raw_hello(sock, server.token)
    return sock


def serves(server) -> None:
    """A fresh client gets a correct result from ``server``."""
    with Client("127.0.0.1", server.port, server.token, timeout=20) as client:
        result = client.reconstruct(image=image(seed=5), timeout=20)
    assert int(result["image_sum"]) == int(image(seed=5).sum())


def drain_until_closed(sock: socket.socket, timeout: float = 30.0) -> int:
    """Read everything until the server closes; fails (socket.timeout) if it never does."""
    sock.settimeout(timeout)
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


class Throttled:
    """A socket reader that takes at most 64 KiB per call, slowly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_into(self, view) -> int:
        time.sleep(0.0005)
        return self.sock.recv_into(view[:1 << 16])


# -- clients that misbehave ----------------------------------------------------------------------

def test_disconnect_mid_result_drops_the_job_and_keeps_serving(patient_server):
    for _ in range(3):
        sock = connect(patient_server)
        wire.send_message(sock, "reconstruct", 1, {}, {"image": image()})
        got = 0
        while got < (1 << 20):  # a part of the ~7 MB result frame, then vanish
            got += len(sock.recv(1 << 16))
        sock.close()
    serves(patient_server)


def test_a_slow_reader_gets_its_whole_result_while_others_are_served(patient_server):
    with connect(patient_server) as slow:
        wire.send_message(slow, "reconstruct", 1, {}, {"image": image(seed=2)})
        serves(patient_server)  # while the slow client has not read anything yet
        slow.settimeout(30)
        while (message := wire.read_message(Throttled(slow))).type == "progress":
            pass
        assert message.type == "result"
        assert int(message.arrays["image_sum"]) == int(image(seed=2).sum())
        assert message.arrays["pred_vertices"].shape == (1, 150000, 3)


def test_a_client_that_stops_reading_never_blocks_the_worker(patient_server):
    stuck = connect(patient_server)
    try:
        for rid in range(1, 7):  # ~40 MB of results that nobody reads
            wire.send_message(stuck, "reconstruct", rid, {}, {"image": image()})
        # Replies have started to flow, so the stuck jobs are ahead of ours in the queue; a
        # worker that wrote to sockets itself would now be blocked for good.
        assert stuck.recv(1, socket.MSG_PEEK)
        time.sleep(0.5)
        for _ in range(2):
            serves(patient_server)
    finally:
        stuck.close()
    serves(patient_server)


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(strict_server):
    stuck = connect(strict_server)
    with stuck:
        for rid in range(1, 7):
            wire.send_message(stuck, "reconstruct", rid, {}, {"image": image()})
        serves(strict_server)
        time.sleep(1.5)  # let the server's writer give up (its timeout is 1 s)
        received = drain_until_closed(stuck)
    assert received < 6 * 7_000_000  # cut off, not everything was delivered
    serves(strict_server)


@pytest.mark.parametrize("after_hello", [True, False])
def test_a_half_frame_is_dropped_after_the_read_timeout(strict_server, after_hello):
    sock = connect(strict_server) if after_hello else raw_connect(strict_server.port)
    with sock:
        frame = wire.encode_message("load", 2)
        sock.sendall(frame[:len(frame) // 2])  # and then nothing
        serves(strict_server)
        reply = wire.recv_message(sock, timeout=20)
        assert reply.type == "error"
        if after_hello:
            assert reply.fields["code"] == "truncated" and "timed out" in reply.fields["message"]
        else:
            assert reply.fields["code"] == "auth" and "incomplete hello" in \
                reply.fields["message"]
        assert drain_until_closed(sock) == 0


def test_a_client_that_connects_and_sends_nothing_is_dropped(strict_server):
    with raw_connect(strict_server.port) as sock:
        reply = wire.recv_message(sock, timeout=20)
        assert reply.fields["code"] == "auth" and "no hello" in reply.fields["message"]
        assert drain_until_closed(sock) == 0


def test_an_idle_authenticated_client_is_dropped_but_a_busy_one_is_not(strict_server):
    idle = connect(strict_server)
    busy = connect(strict_server)
    with idle, busy:
        wire.send_message(busy, "reconstruct", 1, {}, {"image": hang_image()})
        wait_progress(busy, 1)
        reply = wire.recv_message(idle, timeout=20)
        assert reply.type == "error" and reply.fields["code"] == "idle"
        assert drain_until_closed(idle) == 0
        # The busy connection has a job, so it stays open past the idle timeout.
        wire.send_message(busy, "cancel", 1)
        while (reply := wire.recv_message(busy, timeout=20)).type == "progress":
            pass
        assert reply.fields["code"] == "cancelled"


# -- the server process going away ---------------------------------------------------------------

def next_final(events: queue.Queue, timeout: float = 30.0):
    while (event := events.get(timeout=timeout)).kind == "progress":
        pass
    return event


def test_kill_9_with_two_jobs_in_flight_reports_both_and_restarts():
    runner = JobRunner(make_server())
    try:
        jobs = [runner.submit_reconstruct(image=hang_image()) for _ in range(2)]
        deadline = time.monotonic() + 30
        while not all(job._request_id for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.02)
        first_pid = runner.server.process.pid
        time.sleep(0.2)  # both requests reach the server (one runs, one is queued)
        os.kill(first_pid, signal.SIGKILL)
        events = [next_final(runner.events), next_final(runner.events)]
        assert sorted(e.job_id for e in events) == sorted(j.id for j in jobs)
        assert all(e.kind == "died" and e.code == "server_died" for e in events), events
        again = runner.submit_reconstruct(image=image())
        event = next_final(runner.events)
        assert event.kind == "result" and event.job_id == again.id
        assert runner.server.process.pid != first_pid
    finally:
        runner.stop()


def test_the_server_exits_when_the_parent_quits_even_with_a_job_that_ignores_cancel():
    process = make_server("--engine", "tests.hardening.stubborn_engine:make_engine")
    process.start()
    try:
        client = process.client()
        rid = client.send_reconstruct(image=image(stubborn_engine.STUBBORN_WIDTH, 3))
        assert wire.recv_message(client._sock, timeout=20).id == rid  # its first progress
        process.process.stdin.close()  # what Blender quitting looks like to the server
        code = process.wait_exit(20)
        assert code == 0, process.log_tail()
        assert "model worker did not stop" in process.log_tail()
        client.close()
    finally:
        process.stop(timeout=5)


def test_two_addon_instances_each_with_its_own_server_or_a_shared_one():
    runners = [JobRunner(make_server()), JobRunner(make_server())]
    results: list = []

    def run(runner: JobRunner) -> None:
        runner.submit_reconstruct(image=image())
        results.append(next_final(runner.events, 60))

    try:
        threads = [threading.Thread(target=run, args=(r,)) for r in runners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert [e.kind for e in results] == ["result", "result"]
        assert runners[0].server.port != runners[1].server.port
        # A second instance pointed at the first one's server shares it.
        server = runners[0].server
        shared = JobRunner(address=("127.0.0.1", server.port, server.token))
        hang = runners[0].submit_reconstruct(image=hang_image())
        shared.submit_reconstruct(image=image(seed=9))
        assert runners[0].events.get(timeout=30).kind == "progress"
        hang.cancel()  # the shared server runs one job at a time: it is queued, not refused
        event = next_final(shared.events)
        assert event.kind == "result" and int(event.data["image_sum"]) == \
            int(image(seed=9).sum())
        assert next_final(runners[0].events).code == "cancelled"
    finally:
        for runner in runners:
            runner.stop()
