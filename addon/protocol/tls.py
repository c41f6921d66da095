# SPDX-License-Identifier: GPL-3.0-or-later
"""Optional TLS for a server reached over the network (standard library `ssl` only).

A server on loopback needs no TLS. For remote mode the server is started with
``--tls-cert/--tls-key`` and the client either verifies the certificate against a CA file
(a self-signed certificate can be its own CA file) or pins the SHA-256 fingerprint of the
server's certificate (DER bytes), which needs no CA and no host name match.

This module is imported inside Blender (no bpy here) and by the server.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

# One TLS record's worth of plaintext: a send this small does not block once the socket has
# reported room for writing.
_RECORD = 16 << 10


class TlsError(Exception):
    """TLS could not be set up or the server's certificate is not the expected one."""


def normalise_fingerprint(text: str) -> str:
    """``AB:CD:..`` or ``abcd..`` (64 hex digits, SHA-256) -> lower-case hex without colons."""
    digits = text.replace(":", "").replace(" ", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise TlsError(f"a certificate pin must be a SHA-256 fingerprint (64 hex digits, colons "
                       f"allowed), got {text!r:.100}")
    return digits


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER bytes, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 fingerprint of the (first) certificate in a PEM file."""
    try:
        text = open(path, encoding="ascii").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TlsError(f"cannot read the certificate {os.fspath(path)!r}: {exc}") from exc
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise TlsError(f"{os.fspath(path)!r} holds no PEM certificate")
    return der_fingerprint(ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)]))


def server_context(cert_file: str | os.PathLike, key_file: str | os.PathLike) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``--tls-cert/--tls-key`` (PEM files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS certificate {os.fspath(cert_file)!r} / key "
                       f"{os.fspath(key_file)!r}: {exc}") from exc
    return context


@dataclass(frozen=True)
class TlsSettings:
    """How a client checks the server: ``ca_file`` (verify the chain and host name against it),
    ``pin_sha256`` (accept exactly that certificate) or both. ``server_name`` overrides the
    host name checked against the certificate (default: the host connected to)."""

    ca_file: str | None = None
    pin_sha256: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.ca_file and not self.pin_sha256:
            raise TlsError("TLS needs a CA file or a pinned certificate fingerprint")
        if self.pin_sha256:
            object.__setattr__(self, "pin_sha256", normalise_fingerprint(self.pin_sha256))

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"cannot load the CA file {self.ca_file!r}: {exc}") from exc
        else:
            # Pin only: the fingerprint check after the handshake replaces chain and name checks.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def wrap(self, sock: socket.socket, host: str) -> "SerialisedSocket":
        """Handshake over a connected socket and check the pin; closes ``sock`` on failure.
        The result may be read by one thread while another sends (`SerialisedSocket`)."""
        try:
            wrapped = self.context().wrap_socket(sock, server_hostname=self.server_name or host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            sock.close()
            raise TlsError(f"TLS handshake with {host} failed: {exc}") from exc
        if self.pin_sha256:
            der = wrapped.getpeercert(binary_form=True) or b""
            seen = der_fingerprint(der)
            if not hmac.compare_digest(seen, self.pin_sha256):
                wrapped.close()
                raise TlsError(f"the server's certificate (SHA-256 {seen}) is not the pinned one "
                               f"({self.pin_sha256}); refusing to send the token")
        return SerialisedSocket(wrapped)


class SerialisedSocket:
    """A TLS socket that one reader thread and one writer thread may share.

    OpenSSL forbids using one connection from two threads at the same time, so every TLS call
    here holds a lock. Waiting (for data to read, for room to write) happens outside the lock,
    so a reader blocked on a silent peer never holds up a writer, and the other way round. The
    socket's timeout applies to each wait. Other attributes pass through to the TLS socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _wait(self, for_write: bool) -> None:
        timeout = self._sock.gettimeout()
        if not for_write:
            with self._lock:
                if self._sock.pending():  # already decrypted bytes: no need to wait
                    return
        fd = self._sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the connection is closed")
        ready: bool
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
            ready = bool(poller.poll(None if timeout is None else timeout * 1000))
        else:  # Windows
            wanted: list[Any] = [self._sock]
            readable, writable, _ = select.select([] if for_write else wanted,
                                                  wanted if for_write else [], [], timeout)
            ready = bool(readable or writable)
        if not ready:
            raise socket.timeout("timed out")

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._wait(for_write=False)
        with self._lock:
            return self._sock.recv_into(buffer, nbytes)

    def recv(self, size: int) -> bytes:
        self._wait(for_write=False)
        with self._lock:
            return self._sock.recv(size)

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _RECORD):
            self._wait(for_write=True)
            with self._lock:
                self._sock.sendall(view[start:start + _RECORD])
