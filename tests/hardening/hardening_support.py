"""Shared helpers of the hardening tests: an in-process service, raw sockets, certificates."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from addon.protocol import wire
from addon.protocol.client import Client, ServerProcess
from server import service as service_mod
from tests.conftest import ROOT
from tests.wire import fake_engine

TOKEN = "hardening-token-0123456789"
ENGINE_ARGS = ["--engine", "tests.wire.fake_engine:make_engine"]
PYTHON = sys.executable


def start_service(engine: Any = None, **kwargs: Any) -> service_mod.InferenceService:
    kwargs.setdefault("handshake_timeout", 5.0)
    return service_mod.InferenceService(engine or fake_engine.FakeEngine(vertices=32),
                                        fake_engine.ReconstructRequest, TOKEN, **kwargs).start()


def make_server(*extra_args: str, **env: str) -> ServerProcess:
    return ServerProcess(PYTHON, root=ROOT, device="cpu", extra_args=[*ENGINE_ARGS, *extra_args],
                         env=env, ready_timeout=60)


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def raw_hello(sock: socket.socket, token: str = TOKEN) -> wire.Message:
    wire.send_message(sock, "hello", 1, {"version": wire.PROTOCOL_VERSION, "token": token})
    reply = wire.recv_message(sock, timeout=10)
    assert reply.type == "hello", reply
    return reply


def image(width: int = 8, height: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def hang_image() -> np.ndarray:
    """The fake engine waits on this one until it is cancelled."""
    return image(fake_engine.HANG_WIDTH, 3)


def wait_progress(sock: socket.socket, rid: int | str) -> None:
    while True:
        reply = wire.recv_message(sock, timeout=10)
        if reply.type == "progress" and reply.id == rid:
            return
        assert reply.type == "progress", reply


def replies_until(sock: socket.socket, done: Callable[[wire.Message], bool],
                  timeout: float = 20.0) -> list[wire.Message]:
    """Read replies (progress skipped) until ``done(reply)``; returns the non-progress ones."""
    seen = []
    while True:
        reply = wire.recv_message(sock, timeout=timeout)
        if reply.type == "progress":
            continue
        seen.append(reply)
        if done(reply):
            return seen


def assert_serves(port: int, timeout: float = 20.0) -> None:
    """A fresh client gets a correct result: the server is alive and its worker is free."""
    with Client("127.0.0.1", port, TOKEN, timeout=timeout) as client:
        result = client.reconstruct(image=image(seed=7), timeout=timeout)
    assert int(result["image_sum"]) == int(image(seed=7).sum())


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def make_self_signed(folder: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """(cert.pem, key.pem) for ``localhost``/127.0.0.1: with the `cryptography` package when
    installed, else with the `openssl` command line tool."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        _self_signed_cryptography(cert, key, common_name)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            import pytest

            pytest.skip("neither the cryptography package nor the openssl tool is available")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", f"/CN={common_name}",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
    return cert, key


def _self_signed_cryptography(cert_path: Path, key_path: Path, common_name: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
