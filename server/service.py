# SPDX-License-Identifier: GPL-3.0-or-later
"""The socket server: one resident engine, many authenticated connections.

Each connection has a reader thread that parses frames (`addon.wire`), checks the hello/token
handshake and turns requests into jobs. A single model worker thread runs the jobs from a
bounded queue, so the engine (and the GPU) is only ever used from one thread. Replies from the
worker and the reader share a per-connection send lock. A connection that goes away cancels its
jobs; bad frames get an `error` reply and never stop the server.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from addon import wire
from server.errors import BAD_INPUT, CANCELLED, INTERNAL

log = logging.getLogger("server.service")

READY_PREFIX = "SAM3D_READY "
TOKEN_ENV = "SAM3D_BODY_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

# Error codes of the protocol itself (engine failures use server.errors codes).
AUTH = "auth"
VERSION = "version"
BUSY = "busy"
DUPLICATE_ID = "duplicate_id"


@dataclass
class Job:
    connection: "Connection"
    id: int | str
    kind: str  # "rig" | "reconstruct"
    request: Any = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done
    lock: threading.Lock = field(default_factory=threading.Lock)


class Connection:
    """One client socket; `send` is safe from any thread and reports a broken peer as False."""

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address
        self.jobs: dict[int | str, Job] = {}
        self.closed = threading.Event()
        self._send_lock = threading.Lock()

    def send(self, type: str, id: int | str, fields: Mapping[str, Any] | None = None,
             arrays: Mapping[str, Any] | None = None) -> bool:
        parts = wire.encode_parts(type, id, fields, arrays)
        with self._send_lock:
            if self.closed.is_set():
                return False
            try:
                for part in parts:
                    self.sock.sendall(part)
                return True
            except OSError as exc:
                log.info("connection %s lost while sending %s: %s", self.address, type, exc)
                self.close()
                return False

    def error(self, id: int | str | None, code: str, message: str) -> bool:
        # Id 0 marks an error that cannot be tied to a request (clients number requests from 1).
        return self.send("error", 0 if id is None else id, {"code": code, "message": message})

    def hang_up(self, drain_seconds: float = 0.5, drain_bytes: int = 4 << 20) -> None:
        """Close after a protocol error without losing our last reply: closing a socket with
        unread input makes the kernel send a reset, which can destroy the error message the
        peer has not read yet. So stop writing, swallow what the peer still sends (briefly),
        then close."""
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
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for job in list(self.jobs.values()):
            job.cancelled.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class InferenceService:
    """Serve ``engine`` on ``host:port`` (port 0 picks a free one) until `shutdown`."""

    def __init__(self, engine: Any, request_type: Callable[..., Any], token: str, *,
                 host: str = "127.0.0.1", port: int = 0, queue_size: int = 8,
                 max_connections: int = 32, handshake_timeout: float = 10.0,
                 limits: wire.Limits = wire.Limits()) -> None:
        if not token:
            raise ValueError("the service needs a non-empty token")
        self.engine = engine
        self.request_type = request_type
        self._token = token.encode("utf-8")
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._stopped = threading.Event()
        self._connections: set[Connection] = set()
        self._conn_lock = threading.Lock()
        self._rig_arrays: dict[str, np.ndarray] | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        self._listener.settimeout(0.2)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._accept_loop, name="accept", daemon=True),
            threading.Thread(target=self._worker_loop, name="model-worker", daemon=True),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "InferenceService":
        for thread in self._threads:
            thread.start()
        log.info("listening on %s:%d", self.host, self.port)
        return self

    def info(self) -> dict[str, Any]:
        engine_info = dict(getattr(self.engine, "info", {}) or {})
        return {**engine_info, "protocol": wire.PROTOCOL_VERSION, "port": self.port,
                "pid": os.getpid()}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shut down; True when it was."""
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        log.info("shutting down")
        self._stopped.set()
        with self._conn_lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        try:
            self._listener.close()
        except OSError:
            pass

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # -- connections -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopped.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            # Replies are several small writes (progress, header, arrays): no Nagle delays.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(sock, address)
            with self._conn_lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    self._connections.add(connection)
            if full:
                connection.error(None, BUSY, f"too many connections (limit "
                                             f"{self.max_connections})")
                connection.close()
                continue
            threading.Thread(target=self._serve_connection, args=(connection,),
                             name=f"conn-{address}", daemon=True).start()

    def _serve_connection(self, connection: Connection) -> None:
        try:
            if self._handshake(connection):
                connection.sock.settimeout(None)
                self._read_requests(connection)
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection %s failed", connection.address)
        finally:
            connection.hang_up()
            with self._conn_lock:
                self._connections.discard(connection)

    def _handshake(self, connection: Connection) -> bool:
        connection.sock.settimeout(self.handshake_timeout)
        try:
            message = wire.read_message(connection.sock, wire.HANDSHAKE_LIMITS)
        except socket.timeout:
            connection.error(None, AUTH, "no hello within "
                                         f"{self.handshake_timeout:g} s; closing")
            return False
        except wire.ConnectionClosed:
            return False
        except wire.WireError as exc:
            connection.error(exc.request_id, AUTH,
                             f"the first message must be a hello with the token ({exc})")
            return False
        except OSError:
            return False
        if message.type != "hello":
            connection.error(message.id, AUTH, "the first message must be a hello with the token")
            return False
        if message.fields["version"] != wire.PROTOCOL_VERSION:
            connection.error(message.id, VERSION,
                             f"protocol version {message.fields['version']} is not supported; "
                             f"this server speaks {wire.PROTOCOL_VERSION} (update the add-on or "
                             "the server)")
            return False
        token = message.fields.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"),
                                                                 self._token):
            log.warning("refused a connection from %s: %s token", connection.address,
                        "missing" if token is None else "wrong")
            connection.error(message.id, AUTH, "missing or wrong token")
            return False
        return connection.send("hello", message.id,
                               {"version": wire.PROTOCOL_VERSION, "info": self.info()})

    def _read_requests(self, connection: Connection) -> None:
        while not self._stopped.is_set() and not connection.closed.is_set():
            try:
                message = wire.read_message(connection.sock, self.limits)
            except wire.ConnectionClosed:
                return
            except wire.BadSchema as exc:  # frame consumed: the stream is still in sync
                connection.error(exc.request_id, exc.code, str(exc))
                continue
            except wire.WireError as exc:  # framing lost: say why, then hang up
                connection.error(exc.request_id, exc.code, f"{exc}; closing the connection")
                return
            except OSError:
                return
            self._dispatch(connection, message)

    def _dispatch(self, connection: Connection, message: wire.Message) -> None:
        kind = message.type
        if kind == "hello":
            connection.send("hello", message.id,
                            {"version": wire.PROTOCOL_VERSION, "info": self.info()})
        elif kind == "load":
            connection.send("load", message.id, {"info": self.info()})
        elif kind == "cancel":
            self._cancel(connection, message.id)
        elif kind == "shutdown":
            connection.send("shutdown", message.id)
            self.shutdown()
        elif kind in ("rig", "reconstruct"):
            self._submit(connection, message)
        else:  # progress/result/error only flow from the server
            connection.error(message.id, BAD_INPUT, f"a client cannot send '{kind}'")

    def _submit(self, connection: Connection, message: wire.Message) -> None:
        if message.id in connection.jobs:
            connection.error(message.id, DUPLICATE_ID,
                             f"request id {message.id!r} is already in progress")
            return
        job = Job(connection, message.id, message.type)
        if message.type == "reconstruct":
            try:
                job.request = build_request(self.request_type, message.fields, message.arrays)
            except Exception as exc:
                code, text = _describe(exc)
                connection.error(message.id, code, text)
                return
        connection.jobs[job.id] = job
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            connection.jobs.pop(job.id, None)
            connection.error(message.id, BUSY, "the server is busy (too many queued requests); "
                                               "try again when the current ones finish")

    def _cancel(self, connection: Connection, request_id: int | str) -> None:
        job = connection.jobs.get(request_id)
        if job is None:
            log.info("cancel of %r: no such request in progress", request_id)
            return
        with job.lock:
            job.cancelled.set()
            if job.state != "queued":
                return  # the worker answers when the engine notices
            job.state = "done"
        connection.jobs.pop(request_id, None)
        connection.error(request_id, CANCELLED, "cancelled before it started")

    # -- the model worker --------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            with job.lock:
                if job.state != "queued":
                    continue
                job.state = "running"
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            except Exception:
                log.exception("job %r failed unexpectedly", job.id)
            finally:
                with job.lock:
                    job.state = "done"
                job.connection.jobs.pop(job.id, None)

    def _run(self, job: Job) -> None:
        connection = job.connection
        started = time.perf_counter()
        try:
            if job.kind == "rig":
                connection.send("rig", job.id, arrays=self._rig())
                return

            def progress(fraction: float, text: str = "") -> None:
                fraction = min(max(float(fraction), 0.0), 1.0)
                if not connection.send("progress", job.id,
                                       {"fraction": fraction, "message": str(text)}):
                    job.cancelled.set()

            result = self.engine.reconstruct(job.request, progress=progress,
                                             cancelled=job.cancelled.is_set)
            if job.cancelled.is_set():
                connection.error(job.id, CANCELLED, "cancelled")
                return
            arrays = _result_arrays(result)
            seconds = time.perf_counter() - started
            connection.send("result", job.id, {"info": {"seconds": round(seconds, 4)}}, arrays)
            log.info("request %r done in %.3f s", job.id, seconds)
        except Exception as exc:
            if job.cancelled.is_set():
                connection.error(job.id, CANCELLED, "cancelled")
                return
            code, text = _describe(exc)
            if code == INTERNAL:
                log.exception("request %r failed", job.id)
            else:
                log.info("request %r failed: %s: %s", job.id, code, text)
            connection.error(job.id, code, text)

    def _rig(self) -> dict[str, np.ndarray]:
        if self._rig_arrays is None:
            self._rig_arrays = _result_arrays(self.engine.rig_data())
        return self._rig_arrays


def build_request(request_type: Callable[..., Any], fields: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> Any:
    """A reconstruct message's fields and arrays -> the engine's ReconstructRequest.

    Encoded images (bytes or a path on the server's disk) are decoded here, in the connection's
    thread, so the model worker only runs the model."""
    exif_focal = fields.get("exif_focal_35mm")
    if "image" in arrays:
        image = np.ascontiguousarray(arrays["image"])
    else:
        from server import imageio

        source = bytes(arrays["image_bytes"]) if "image_bytes" in arrays else fields["image_path"]
        image, image_info = imageio.load_image(source)
        if exif_focal is None:
            exif_focal = image_info.get("exif_focal_35mm")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise wire.BadSchema("the image is empty")
    boxes = arrays.get("boxes")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float32)
        if not np.all(np.isfinite(boxes)):
            raise wire.BadSchema("boxes must be finite numbers")
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            raise wire.BadSchema("each box must be x1,y1,x2,y2 with x2 > x1 and y2 > y1")
    masks = None
    if "masks" in arrays:
        stack = arrays["masks"]
        if stack.shape[1:] != (height, width):
            raise wire.BadSchema(f"masks are {stack.shape[2]}x{stack.shape[1]} but the image is "
                                 f"{width}x{height}")
        masks = [np.ascontiguousarray(m, dtype=np.uint8) for m in stack]
    intrinsics = fields.get("intrinsics")
    return request_type(
        image=image,
        boxes=boxes,
        masks=masks,
        mode=fields.get("mode", "full"),
        intrinsics=tuple(float(v) for v in intrinsics) if intrinsics else None,
        prompts=[(float(x), float(y), int(label)) for x, y, label in fields.get("prompts", [])],
        exif_focal_35mm=exif_focal,
    )


def _result_arrays(mapping: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Engine output -> sendable arrays (lists of names become str arrays)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in mapping.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"engine output {name!r} is not a plain numeric or string array")
        arrays[name] = array
    return arrays


def _describe(exc: BaseException) -> tuple[str, str]:
    """(code, message) for an exception: ServerError-like ones keep their code."""
    code = getattr(exc, "code", None)
    if isinstance(exc, wire.WireError):
        return BAD_INPUT, str(exc)
    if isinstance(code, str) and code:
        return code, str(getattr(exc, "message", exc))
    if isinstance(exc, MemoryError):
        return "out_of_memory", "the server ran out of memory"
    return INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# Process-level helpers used by `python -m server serve`


def redirect_stdout_to_stderr() -> Any:
    """Keep the real stdout for the ready line only; everything else (including prints from C
    extensions) goes to stderr. Returns a text stream on the original stdout."""
    sys.stdout.flush()
    ready_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(ready_fd, "w", encoding="utf-8")


def announce_ready(stream: Any, info: Mapping[str, Any]) -> None:
    """Write the single machine-readable ready line and close that stream."""
    stream.write(READY_PREFIX + json.dumps(dict(info), separators=(",", ":"), default=str) + "\n")
    stream.flush()
    stream.close()


def watch_parent(on_gone: Callable[[], None], use_stdin: bool = True,
                 poll_seconds: float = 0.5) -> None:
    """Call ``on_gone`` once when the spawning process goes away: our parent pid changes
    (we were re-parented) or, with ``use_stdin``, the stdin pipe the parent holds reaches EOF."""
    parent = os.getppid()
    fired = threading.Event()
    lock = threading.Lock()

    def fire(reason: str) -> None:
        with lock:
            if fired.is_set():
                return
            fired.set()
        log.info("%s; exiting", reason)
        on_gone()

    def poll() -> None:
        while not fired.wait(poll_seconds):
            if os.getppid() != parent:
                fire(f"parent process {parent} is gone")

    def stdin_eof() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader makes
        # the interpreter abort at exit ("could not acquire lock ... at interpreter shutdown").
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        fire("stdin closed")

    threading.Thread(target=poll, name="parent-poll", daemon=True).start()
    try:
        fd = sys.stdin.fileno() if use_stdin and sys.stdin is not None else -1
    except (OSError, ValueError):  # no real stdin (closed, or replaced by an object)
        fd = -1
    if fd >= 0:
        threading.Thread(target=stdin_eof, name="parent-stdin", daemon=True).start()
