# SPDX-License-Identifier: GPL-3.0-or-later
"""One client connection of the service, with its own writer thread.

Replies are encoded by whoever produces them (the model worker, the connection's reader) and put
on the connection's outbox; a writer thread per connection sends them. So a client that stops
reading can never block the model worker: its outbox grows by at most one result per job (progress
messages are dropped once the outbox is backed up), and when the socket takes no data for the
write timeout the connection is closed, which cancels its jobs.
"""
from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Any, Mapping

from addon.protocol import wire

log = logging.getLogger("server.service")

# Sends go out in slices so the socket timeout bounds the time without progress, not the time
# a large result takes on a slow link (sendall's timeout covers the whole call).
SEND_SLICE = 1 << 20


class Connection:
    """One client socket. `send` is safe from any thread and returns False once the connection
    is closed; the socket's own timeout is the write timeout (set by the service)."""

    def __init__(self, sock: socket.socket, address: Any, *, max_queued_progress: int = 64
                 ) -> None:
        self.sock = sock
        self.address = address
        self.jobs: dict[int | str, Any] = {}
        self.uploads: dict[int | str, Any] = {}  # clips whose files are still arriving
        # Uploads that ended (cancelled, refused): their data still in flight is dropped quietly.
        self.ended_uploads: collections.deque[int | str] = collections.deque(maxlen=64)
        self.closed = threading.Event()
        self.max_queued_progress = max_queued_progress
        self.dropped_progress = 0
        self._outbox: collections.deque[tuple[str, list[Any]]] = collections.deque()
        self._changed = threading.Condition(threading.Lock())
        self._writing = False
        self._writer: threading.Thread | None = None

    def start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop,
                                            name=f"send-{self.address}", daemon=True)
            self._writer.start()

    # -- sending -----------------------------------------------------------------------------

    def send(self, type: str, id: int | str, fields: Mapping[str, Any] | None = None,
             arrays: Mapping[str, Any] | None = None) -> bool:
        """Queue one message (encoding errors raise here, in the caller's thread)."""
        parts = wire.encode_parts(type, id, fields, arrays)
        with self._changed:
            if self.closed.is_set():
                return False
            if type == "progress" and len(self._outbox) >= self.max_queued_progress:
                # The peer is not keeping up: progress is advisory, results are not.
                self.dropped_progress += 1
                return True
            self._outbox.append((type, parts))
            self._changed.notify_all()
        return True

    def error(self, id: int | str | None, code: str, message: str) -> bool:
        # Id 0 marks an error that cannot be tied to a request (clients number requests from 1).
        return self.send("error", 0 if id is None else id, {"code": code, "message": message})

    def pending(self) -> int:
        """Messages queued or being written."""
        with self._changed:
            return self._pending()

    def wait_pending_below(self, limit: int, timeout: float) -> bool:
        """Wait until fewer than `limit` messages are queued or being written; False on
        timeout or close."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed.is_set() or self._pending() < limit, timeout)
            return not self.closed.is_set() and self._pending() < limit

    def _pending(self) -> int:
        return len(self._outbox) + (1 if self._writing else 0)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far has been written; False on timeout/close."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.closed.is_set() or (not self._outbox and not self._writing),
                timeout)
            return not self._outbox and not self._writing and not self.closed.is_set()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self.closed.is_set() or bool(self._outbox))
                if self.closed.is_set():
                    self._outbox.clear()
                    return
                kind, parts = self._outbox.popleft()
                self._writing = True
            try:
                self._write_parts(parts)
            except OSError as exc:  # includes the write timeout (socket.timeout)
                log.info("connection %s lost while sending %s: %s", self.address, kind,
                         str(exc) or type(exc).__name__)
                self.close()
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _write_parts(self, parts: list[Any]) -> None:
        for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), SEND_SLICE):
                self.sock.sendall(view[start:start + SEND_SLICE])

    # -- closing -----------------------------------------------------------------------------

    def hang_up(self, drain_seconds: float = 0.5, drain_bytes: int = 4 << 20,
                flush_seconds: float = 5.0) -> None:
        """Close after our last replies are out: first let the writer send what is queued,
        then stop writing and swallow what the peer still sends (briefly) before closing,
        because closing a socket with unread input makes the kernel send a reset that can
        destroy the replies the peer has not read yet."""
        if self.closed.is_set():
            return
        if self._writer is not None:
            self.flush(flush_seconds)
        if self.closed.is_set():
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(drain_seconds)
            deadline = time.monotonic() + drain_seconds
            while drain_bytes > 0 and time.monotonic() < deadline:
                chunk = self.sock.recv(min(drain_bytes, 1 << 16))
                if not chunk:
                    break
                drain_bytes -= len(chunk)
        except (OSError, ValueError):
            pass
        self.close()

    def close(self) -> None:
        with self._changed:
            if self.closed.is_set():
                return
            self.closed.set()
            self._changed.notify_all()
        for job in list(self.jobs.values()):
            job.cancelled.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass
        self.sock.close()
