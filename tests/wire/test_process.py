"""A real `python -m server serve` subprocess (test-double engine) driven by addon/protocol/client.py."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from addon.protocol import wire
from addon.protocol.client import (Client, ConnectionLost, JobRunner, RemoteError, ServerProcess,
                          ServerStartError)
from tests.conftest import ROOT
from tests.wire import fake_engine

ENGINE_ARGS = ["--engine", "tests.wire.fake_engine:make_engine"]
PYTHON = sys.executable


def make_server(**env) -> ServerProcess:
    return ServerProcess(PYTHON, root=ROOT, device="cpu", extra_args=ENGINE_ARGS, env=env,
                         ready_timeout=60)


@pytest.fixture
def server():
    process = make_server()
    process.start()
    yield process
    process.stop(timeout=5)


def image(width=8, height=6) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def next_event(events: queue.Queue, kinds=("result", "error", "died"), timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        if event.kind in kinds:
            return event


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    """True once the process has exited (a zombie counts: its code has stopped running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


def test_ready_line_is_the_only_stdout_and_logs_go_to_stderr():
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_TOKEN="tok")
    process = subprocess.Popen([PYTHON, "-m", "server", "serve", *ENGINE_ARGS],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = process.stdout.readline().decode()
        assert line.startswith("SAM3D_READY ")
        info = json.loads(line[len("SAM3D_READY "):])
        assert info["protocol"] == wire.PROTOCOL_VERSION and info["model"] == "fake/test-double"
        assert info["device"] == "cpu" and info["pid"] == process.pid
        with Client("127.0.0.1", info["port"], "tok") as client:
            client.reconstruct(image=image())
            client.shutdown()
        assert process.wait(20) == 0
        assert process.stdout.read() == b""
        assert b"shutting down" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_serve_refuses_bad_setups_with_exit_code_2():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SAM3D_BODY_TOKEN", None)
    run = lambda *args, **kw: subprocess.run([PYTHON, "-m", "server", *args], env=kw.get(
        "env", env), capture_output=True, timeout=60)
    no_token = run("serve", *ENGINE_ARGS)
    assert no_token.returncode == 2 and b"SAM3D_BODY_TOKEN" in no_token.stderr
    remote = run("serve", "--host", "0.0.0.0", *ENGINE_ARGS,
                 env=dict(env, SAM3D_BODY_TOKEN="t"))
    assert remote.returncode == 2 and b"--allow-remote" in remote.stderr
    assert run("serve", "--device", "tpu").returncode == 2
    assert run("serve", "--checkpoint", "a", "--repo", "b").returncode == 2
    assert run("bogus").returncode == 2


def test_load_failure_is_reported_with_the_log_tail():
    process = make_server(SAM3D_FAKE_LOAD_ERROR="1")
    with pytest.raises(ServerStartError) as info:
        process.start()
    assert "exited with code 1" in info.value.message
    assert "no checkpoint (as asked by the test)" in info.value.log_tail
    assert "checkpoint_missing" in info.value.log_tail


def test_subprocess_refuses_wrong_tokens_and_keeps_serving(server):
    for token in ("", "nope", server.token + "x"):
        with pytest.raises(RemoteError) as info:
            Client("127.0.0.1", server.port, token, timeout=10).connect()
        assert info.value.code == "auth"
    with server.client() as client:
        assert client.info["model"] == "fake/test-double"
        assert int(client.reconstruct(image=image())["image_sum"]) == int(image().sum())
    assert server.alive()


def test_garbage_and_disconnect_mid_job_against_the_subprocess(server):
    import socket

    for garbage in (b"\x00" * 64, b"S3DB" + b"\xff" * 40):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(garbage)
    client = server.client()
    rid = client.next_id()
    client._send("reconstruct", rid, {}, {"image": image(fake_engine.HANG_WIDTH, 3)})
    assert wire.recv_message(client._sock, timeout=10).type == "progress"
    client.close()  # vanish mid-job; the hanging job must be dropped for the next to finish
    with server.client(timeout=30) as again:
        assert int(again.reconstruct(image=image(), timeout=30)["image_sum"]) == \
            int(image().sum())


def test_job_runner_results_progress_cancel_and_rig():
    runner = JobRunner(make_server())
    try:
        job = runner.submit_reconstruct(image=image(), mode="body")
        kinds = []
        while True:
            event = runner.events.get(timeout=60)
            assert event.job_id == job.id
            kinds.append(event.kind)
            if event.kind in ("result", "error", "died"):
                break
        assert event.kind == "result", event
        assert int(event.data["image_sum"]) == int(image().sum())
        assert kinds[0] == "progress" and "progress" in kinds[1:-1]
        assert job.done.wait(10)

        hang = runner.submit_reconstruct(image=image(fake_engine.HANG_WIDTH, 3))
        while runner.events.get(timeout=30).message != "fake: waiting to be cancelled":
            pass
        hang.cancel()
        event = next_event(runner.events)
        assert event.kind == "error" and event.code == "cancelled" and event.job_id == hang.id

        # A cancel right after submitting (before or while the request is sent) still lands.
        for _ in range(3):
            early = runner.submit_reconstruct(image=image(fake_engine.HANG_WIDTH, 3))
            early.cancel()
            event = next_event(runner.events)
            assert event.job_id == early.id and event.code == "cancelled", event

        rig_job = runner.submit_rig()
        event = next_event(runner.events)
        assert event.kind == "result" and event.job_id == rig_job.id
        assert event.data["joint_names"][0] == "joint_000"
    finally:
        runner.stop()
    assert not runner.server.alive()


def test_kill_9_is_seen_with_the_log_tail_and_the_next_request_restarts():
    runner = JobRunner(make_server())
    try:
        first = runner.submit_reconstruct(image=image())
        assert next_event(runner.events).kind == "result"
        old_pid = runner.server.process.pid
        job = runner.submit_reconstruct(image=image(fake_engine.HANG_WIDTH, 3))
        while runner.events.get(timeout=30).kind != "progress" or not job._request_id:
            pass
        os.kill(old_pid, signal.SIGKILL)
        event = next_event(runner.events)
        assert event.kind == "died" and event.job_id == job.id
        assert event.code == "server_died" and "-9" in event.message
        assert "listening on 127.0.0.1" in event.log_tail  # the dead server's own output
        # the next request starts a new server
        again = runner.submit_reconstruct(image=image())
        event = next_event(runner.events)
        assert event.kind == "result" and event.job_id == again.id
        assert runner.server.process.pid != old_pid and runner.server.alive()
        assert first.done.is_set()
    finally:
        runner.stop()


def test_stop_is_polite_first():
    process = make_server()
    process.start()
    assert process.stop(timeout=10) == 0  # exited by itself after the shutdown message
    assert "shutting down" in process.log_tail()
    assert not process.alive()


def test_closing_stdin_stops_a_parent_watched_server():
    process = make_server()
    process.start()
    try:
        process.process.stdin.close()
        assert process.process.wait(20) == 0
        assert "stdin closed" in process.log_tail() or "exiting" in process.log_tail()
    finally:
        process.stop()


def test_server_exits_when_its_parent_dies():
    # An intermediate process spawns the server the way the add-on does, reports the pid, then
    # dies without stopping it: the server must notice and exit on its own.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from addon.protocol.client import ServerProcess
        server = ServerProcess({PYTHON!r}, root={str(ROOT)!r}, device="cpu",
                               extra_args={ENGINE_ARGS!r}, ready_timeout=60)
        server.start()
        print(server.process.pid, flush=True)
        os._exit(0)
    """)
    parent = subprocess.run([PYTHON, "-c", script], capture_output=True, timeout=60)
    assert parent.returncode == 0, parent.stderr.decode()
    pid = int(parent.stdout.decode().split()[-1])
    try:
        assert wait_gone(pid), "the orphaned server is still running"
    finally:
        if not wait_gone(pid, 0):
            os.kill(pid, signal.SIGKILL)


def test_runner_needs_exactly_one_target():
    with pytest.raises(ValueError):
        JobRunner()
    with pytest.raises(ValueError):
        JobRunner(make_server(), address=("127.0.0.1", 1, "t"))


def test_runner_reports_connection_errors_for_an_external_address():
    runner = JobRunner(address=("127.0.0.1", 1, "t"), connect_timeout=2)
    runner.submit_reconstruct(image=image())
    event = next_event(runner.events)
    assert event.kind == "error" and event.code == "connection"
    assert "cannot connect" in event.message


def test_client_reports_a_dead_server_as_connection_lost(server):
    client = server.client()
    server.process.kill()
    server.process.wait(10)
    with pytest.raises(ConnectionLost):
        client.reconstruct(image=image(), timeout=10)
        client.reconstruct(image=image(), timeout=10)
