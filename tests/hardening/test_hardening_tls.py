"""Optional TLS: a round trip with a CA file and with a pinned certificate, refusals that never
hang, and the serve command's TLS/remote flags."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading

import pytest

from addon.protocol import tls
from addon.protocol import wire
from addon.protocol.client import Client, ConnectionLost, JobRunner
from server import service as service_mod
from tests.hardening.hardening_support import (ENGINE_ARGS, PYTHON, ROOT, TOKEN, image,
                                               make_self_signed, start_service)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_service(certificate):
    cert, key = certificate
    running = start_service(ssl_context=tls.server_context(cert, key))
    yield running
    running.shutdown()


def test_round_trip_verified_against_a_ca_file(tls_service, certificate):
    settings = tls.TlsSettings(ca_file=str(certificate[0]))
    with Client("127.0.0.1", tls_service.port, TOKEN, timeout=10, tls=settings) as client:
        assert client.info["tls"] is True
        result = client.reconstruct(image=image(), timeout=10)
        assert int(result["image_sum"]) == int(image().sum())
        assert client.rig(timeout=10)["joint_names"].shape == (127,)


def test_round_trip_with_a_pinned_certificate(tls_service, certificate):
    pin = tls.pem_fingerprint(certificate[0])
    colons = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()
    runner = JobRunner(address=("127.0.0.1", tls_service.port, TOKEN),
                       tls=tls.TlsSettings(pin_sha256=colons))
    job = runner.submit_reconstruct(image=image(seed=3))
    assert job.done.wait(20)
    events = []
    while not runner.events.empty():
        events.append(runner.events.get())
    assert events[-1].kind == "result", events[-1]
    assert int(events[-1].data["image_sum"]) == int(image(seed=3).sum())


def test_a_wrong_pin_is_refused_before_the_token_is_sent(tls_service):
    settings = tls.TlsSettings(pin_sha256="00" * 32)
    client = Client("127.0.0.1", tls_service.port, TOKEN, timeout=10, tls=settings)
    with pytest.raises(ConnectionLost, match="not the pinned one"):
        client.connect()


def test_an_unknown_ca_is_refused(tls_service, tmp_path):
    other_cert, _ = make_self_signed(tmp_path, common_name="someone-else")
    client = Client("127.0.0.1", tls_service.port, TOKEN, timeout=10,
                    tls=tls.TlsSettings(ca_file=str(other_cert)))
    with pytest.raises(ConnectionLost, match="secure connection"):
        client.connect()


def test_plain_peers_of_a_tls_server_fail_fast_and_the_server_keeps_serving(tls_service,
                                                                          certificate):
    with pytest.raises(ConnectionLost):  # a plain frame is not a TLS ClientHello
        Client("127.0.0.1", tls_service.port, TOKEN, timeout=10).connect()
    with socket.create_connection(("127.0.0.1", tls_service.port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(b"\x16\x03\x01" + os.urandom(64))  # a broken handshake
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):  # the server hangs up (a timeout here fails the test)
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except OSError as exc:  # already closed by the server: shutdown() says ENOTCONN
            assert exc.errno == errno.ENOTCONN, exc
    settings = tls.TlsSettings(ca_file=str(certificate[0]))
    with Client("127.0.0.1", tls_service.port, TOKEN, timeout=10, tls=settings) as client:
        assert client.load()["protocol"] == wire.PROTOCOL_VERSION


def test_a_silent_tls_peer_is_dropped_after_the_handshake_timeout(certificate):
    running = start_service(ssl_context=tls.server_context(*certificate), handshake_timeout=0.3)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            assert sock.recv(1) == b""  # closed by the server, not by our 10 s timeout
    finally:
        running.shutdown()


def test_settings_are_checked():
    with pytest.raises(tls.TlsError, match="CA file or a pinned"):
        tls.TlsSettings()
    with pytest.raises(tls.TlsError, match="64 hex digits"):
        tls.TlsSettings(pin_sha256="abc")
    with pytest.raises(tls.TlsError, match="cannot load"):
        tls.server_context("/nonexistent/cert.pem", "/nonexistent/key.pem")


def test_serve_with_tls_flags_and_remote_rules(certificate):
    cert, key = certificate
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_TOKEN="short")

    def serve(*args, **extra):
        return subprocess.run([PYTHON, "-m", "server", "serve", *ENGINE_ARGS, *args],
                              env={**env, **extra}, capture_output=True, timeout=60)

    half = serve("--tls-cert", str(cert))
    assert half.returncode == 2 and b"go together" in half.stderr
    short_token = serve("--host", "0.0.0.0", "--allow-remote")
    assert short_token.returncode == 2 and b"16 characters" in short_token.stderr
    bad_key = serve("--tls-cert", str(cert), "--tls-key", str(cert))
    assert bad_key.returncode == 2 and b"cannot load the TLS certificate" in bad_key.stderr
    assert service_mod.is_loopback("127.0.0.2") and service_mod.is_loopback("::1")
    assert not service_mod.is_loopback("0.0.0.0") and not service_mod.is_loopback("example.org")


def test_serve_subprocess_over_tls(certificate):
    cert, key = certificate
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_TOKEN=TOKEN)
    process = subprocess.Popen([PYTHON, "-m", "server", "serve", *ENGINE_ARGS, "--tls-cert",
                                str(cert), "--tls-key", str(key)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        line = process.stdout.readline().decode()
        assert line.startswith("SAM3D_READY ")
        port = int(line.split('"port":')[1].split(",")[0])
        settings = tls.TlsSettings(ca_file=str(cert))
        with Client("127.0.0.1", port, TOKEN, timeout=10, tls=settings) as client:
            assert int(client.reconstruct(image=image())["image_sum"]) == int(image().sum())
            client.shutdown()
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_tls_full_duplex_sending_and_receiving_at_once(certificate):
    # One thread keeps sending requests while another reads the (large) results of the earlier
    # ones: both directions of one TLS session are busy at the same time on both ends.
    from tests.wire import fake_engine

    running = start_service(fake_engine.FakeEngine(vertices=30000),
                            ssl_context=tls.server_context(*certificate), queue_size=32)
    settings = tls.TlsSettings(ca_file=str(certificate[0]))
    try:
        with Client("127.0.0.1", running.port, TOKEN, timeout=20, tls=settings) as client:
            pictures = [image(256, 192, seed=i) for i in range(12)]
            ids: list[int] = []
            sender = threading.Thread(target=lambda: ids.extend(
                client.send_reconstruct(image=p) for p in pictures))
            sender.start()
            sums = {}
            while len(sums) < len(pictures):
                message = wire.recv_message(client._sock, timeout=20)
                if message.type == "result":
                    sums[message.id] = int(message.arrays["image_sum"])
                else:
                    assert message.type == "progress", message
            sender.join(20)
            assert [sums[i] for i in ids] == [int(p.sum()) for p in pictures]
    finally:
        running.shutdown()
