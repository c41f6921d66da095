# SPDX-License-Identifier: GPL-3.0-or-later
"""The socket server: one resident engine, many authenticated connections.

Each connection has a reader thread that parses frames (`addon.protocol.wire`), checks the hello/token
handshake and turns requests into jobs, and a writer thread that sends its replies
(server/connection.py), so a client that stops reading never blocks anyone else. A single model
worker thread runs the jobs from a bounded queue that takes turns between connections
(server/fair_queue.py), so the engine (and the GPU) is only ever used from one thread and one
client with many jobs cannot starve another. Every read has a timeout: a peer that sends half a
frame, or nothing at all, is dropped. A connection that goes away cancels its jobs; bad frames
get an `error` reply and never stop the server; an engine that runs out of memory gets an
`out_of_memory` reply and its cached memory freed (server/oom.py).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import queue
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, cast

import numpy as np

from addon.protocol import tls
from addon.protocol import wire
from server import oom
from server.clip_upload import MAX_UPLOAD_BYTES
from server.connection import Connection
from server.errors import BAD_INPUT, CANCELLED, INTERNAL, OUT_OF_MEMORY, ServerError
from server.fair_queue import FairQueue

log = logging.getLogger("server.service")

READY_PREFIX = "SAM3D_READY "
TOKEN_ENV = "SAM3D_BODY_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

# Same as server.imageio.DEFAULT_MAX_PIXELS (not imported: that pulls in Pillow): raw pixel
# arrays get the limit encoded images get.
MAX_PIXELS = 100_000_000
# A clip job waits while more of its row parts than this are unsent (~0.4 MB each).
MAX_QUEUED_ROW_PARTS = 8
MAX_UPLOADS_PER_CONNECTION = 2

# Error codes of the protocol itself (engine failures use server.errors codes).
AUTH = "auth"
VERSION = "version"
BUSY = "busy"
DUPLICATE_ID = "duplicate_id"
IDLE = "idle"


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)  # identity, not field equality: queued jobs are found by identity
class Job:
    connection: "Connection"
    id: int | str
    kind: str  # "rig" | "reconstruct" | "clip"
    request: Any = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done
    lock: threading.Lock = field(default_factory=threading.Lock)
    upload: Any = None  # the ClipUpload of an uploaded clip (server/clip_upload.py)
    fields: dict[str, Any] = field(default_factory=dict)  # a clip's message, kept for its upload
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def discard_upload(self) -> None:
        if self.upload is not None:
            self.upload.discard()


class InferenceService:
    """Serve ``engine`` on ``host:port`` (port 0 picks a free one) until `shutdown`.

    Timeouts: ``handshake_timeout`` for the hello (and the TLS handshake); ``io_timeout`` is the
    longest a frame may stall half-way and the longest a reply may wait for the peer to take
    it (both close the connection); ``idle_timeout`` closes a connection that sent nothing and
    has no job running for that long (None: never). ``ssl_context``: TLS for every connection.
    ``allow_image_path``: accept requests naming a file on the server's disk (loopback only,
    by default: a remote peer must not probe the server's files)."""

    def __init__(self, engine: Any, request_type: Callable[..., Any], token: str, *,
                 host: str = "127.0.0.1", port: int = 0, queue_size: int = 8,
                 max_connections: int = 32, handshake_timeout: float = 10.0,
                 limits: wire.Limits = wire.Limits(), io_timeout: float = 30.0,
                 idle_timeout: float | None = 3600.0, max_queued_per_connection: int | None = None,
                 ssl_context: ssl.SSLContext | None = None, allow_image_path: bool | None = None,
                 max_pixels: int = MAX_PIXELS, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        if not token:
            raise ValueError("the service needs a non-empty token")
        for name, value in (("handshake_timeout", handshake_timeout), ("io_timeout", io_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.engine = engine
        self.request_type = request_type
        self._token = token.encode("utf-8")
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.io_timeout = io_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.allow_image_path = is_loopback(host) if allow_image_path is None else allow_image_path
        self.max_pixels = max_pixels
        self.max_upload_bytes = max_upload_bytes
        self._jobs: FairQueue[Job] = FairQueue(queue_size, max_queued_per_connection)
        self._stopped = threading.Event()
        self._closing = False
        self._connections: set[Connection] = set()
        self._conn_lock = threading.Lock()
        self._rig_arrays: dict[str, np.ndarray] | None = None
        self.oom_count = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        self._listener.settimeout(0.2)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._worker = threading.Thread(target=self._worker_loop, name="model-worker",
                                        daemon=True)
        self._threads = [
            threading.Thread(target=self._accept_loop, name="accept", daemon=True),
            self._worker,
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "InferenceService":
        for thread in self._threads:
            thread.start()
        log.info("listening on %s:%d%s", self.host, self.port,
                 " (TLS)" if self.ssl_context is not None else "")
        return self

    def info(self) -> dict[str, Any]:
        engine_info = dict(getattr(self.engine, "info", {}) or {})
        return {**engine_info, "protocol": wire.PROTOCOL_VERSION, "port": self.port,
                "pid": os.getpid(), "tls": self.ssl_context is not None}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shut down; True when it was."""
        return self._stopped.wait(timeout)

    def join_worker(self, timeout: float) -> bool:
        """After `shutdown`: wait for the model worker to leave its current job; True if it
        did within ``timeout`` (an engine call that ignores cancel may not)."""
        if self._worker.is_alive():
            self._worker.join(timeout)
        return not self._worker.is_alive()

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        log.info("shutting down")
        self._closing = True
        try:  # first, so nobody connects once `wait` has returned
            self._listener.close()
        except OSError:
            pass
        self._stopped.set()
        with self._conn_lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def queued(self) -> int:
        return self._jobs.qsize()

    # -- connections -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing or self._stopped.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            # Replies are several small writes (progress, header, arrays): no Nagle delays.
            # Keepalive notices a remote peer that vanished without closing.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                sock.close()
                continue
            connection = Connection(sock, address)
            with self._conn_lock:
                full = len(self._connections) >= self.max_connections
                self._connections.add(connection)
            # Everything that can block (TLS handshake, sending, reading) happens on the
            # connection's own threads, never here.
            threading.Thread(target=self._serve_connection, args=(connection, full),
                             name=f"conn-{address}", daemon=True).start()

    def _serve_connection(self, connection: Connection, refuse: bool = False) -> None:
        try:
            connection.sock.settimeout(self.handshake_timeout)
            if self.ssl_context is not None and not self._start_tls(connection):
                return
            connection.sock.settimeout(self.io_timeout)
            connection.start_writer()
            if refuse:
                connection.error(None, BUSY, f"too many connections (limit "
                                             f"{self.max_connections})")
                return
            if self._handshake(connection):
                self._read_requests(connection)
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection %s failed", connection.address)
        finally:
            connection.hang_up(flush_seconds=min(self.io_timeout, 5.0))
            self._drop_jobs(connection)
            for job in list(connection.uploads.values()):
                job.discard_upload()
            connection.uploads.clear()
            with self._conn_lock:
                self._connections.discard(connection)

    def _start_tls(self, connection: Connection) -> bool:
        assert self.ssl_context is not None
        try:
            # Serialised: the connection's reader and writer threads share one TLS session.
            wrapped = self.ssl_context.wrap_socket(connection.sock, server_side=True)
            connection.sock = cast(socket.socket, tls.SerialisedSocket(wrapped))
        except (ssl.SSLError, OSError) as exc:  # includes the handshake timeout
            log.warning("TLS handshake with %s failed: %s", connection.address, exc)
            connection.close()
            return False
        return True

    def _handshake(self, connection: Connection) -> bool:
        sock = connection.sock
        sock.settimeout(self.handshake_timeout)
        try:
            message = wire.read_message(sock, wire.HANDSHAKE_LIMITS)
        except socket.timeout:
            connection.error(None, AUTH, "no hello within "
                                         f"{self.handshake_timeout:g} s; closing")
            return False
        except wire.ConnectionClosed:
            return False
        except wire.TruncatedFrame as exc:
            connection.error(exc.request_id, AUTH, f"incomplete hello ({exc}); closing")
            return False
        except wire.WireError as exc:
            connection.error(exc.request_id, AUTH,
                             f"the first message must be a hello with the token ({exc})")
            return False
        except OSError:
            return False
        finally:
            if not connection.closed.is_set():
                sock.settimeout(self.io_timeout)
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
        # compare_digest: the comparison takes the same time wherever the first difference is.
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"),
                                                                 self._token):
            log.warning("refused a connection from %s: %s token", connection.address,
                        "missing" if token is None else "wrong")
            connection.error(message.id, AUTH, "missing or wrong token")
            return False
        return connection.send("hello", message.id,
                               {"version": wire.PROTOCOL_VERSION, "info": self.info()})

    def _read_requests(self, connection: Connection) -> None:
        last_frame = time.monotonic()
        while not self._stopped.is_set() and not connection.closed.is_set():
            try:
                message = wire.read_message(connection.sock, self.limits)
            except socket.timeout:  # nothing at a frame boundary: an idle peer, not a broken one
                idle = time.monotonic() - last_frame
                if (self.idle_timeout is not None and idle >= self.idle_timeout
                        and not connection.jobs and not connection.pending()):
                    connection.error(None, IDLE, f"closing a connection idle for {idle:.0f} s")
                    return
                continue
            except wire.ConnectionClosed:
                return
            except wire.BadSchema as exc:  # frame consumed: the stream is still in sync
                connection.error(exc.request_id, exc.code, str(exc))
                last_frame = time.monotonic()
                continue
            except wire.WireError as exc:  # framing lost or stalled: say why, then hang up
                connection.error(exc.request_id, exc.code, f"{exc}; closing the connection")
                return
            except (OSError, ValueError):  # ValueError: the socket was closed under us
                return
            last_frame = time.monotonic()
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
            connection.flush(min(self.io_timeout, 2.0))
            self.shutdown()
        elif kind in ("rig", "reconstruct", "clip"):
            self._submit(connection, message)
        elif kind == "clip_data":
            self._clip_data(connection, message)
        else:  # progress/clip_rows/result/error only flow from the server
            connection.error(message.id, BAD_INPUT, f"a client cannot send '{kind}'")

    def _submit(self, connection: Connection, message: wire.Message) -> None:
        if message.id in connection.jobs or message.id in connection.uploads:
            connection.error(message.id, DUPLICATE_ID,
                             f"request id {message.id!r} is already in progress")
            return
        job = Job(connection, message.id, message.type)
        if message.type == "reconstruct":
            if "image_path" in message.fields and not self.allow_image_path:
                connection.error(message.id, BAD_INPUT,
                                 "this server does not read files named by remote clients "
                                 "(image_path); send the image bytes instead")
                return
            try:
                job.request = build_request(self.request_type, message.fields, message.arrays,
                                            max_pixels=self.max_pixels)
            except Exception as exc:
                code, text = _describe(exc)
                connection.error(message.id, code, text)
                return
        if message.type == "clip" and "upload" in message.fields:
            self._start_upload(connection, job, message)
            return
        if message.type == "clip":
            if not self.allow_image_path:
                connection.error(message.id, BAD_INPUT, "this server does not read clips named by remote "
                                 "clients; send the clip's files (upload) instead")
                return
            try:
                job.request = clip_request(message.fields, message.arrays)
            except Exception as exc:
                code, text = _describe(exc)
                connection.error(message.id, code, text)
                return
        self._enqueue(connection, job)

    def _enqueue(self, connection: Connection, job: Job) -> None:
        connection.jobs[job.id] = job
        try:
            self._jobs.put_nowait(connection, job)
        except queue.Full:
            connection.jobs.pop(job.id, None)
            job.discard_upload()
            connection.error(job.id, BUSY, "the server is busy (too many queued requests); "
                                               "try again when the current ones finish")

    # -- uploaded clips (server/clip_upload.py) ---------------------------------------------

    def _start_upload(self, connection: Connection, job: Job, message: wire.Message) -> None:
        from .clip_upload import ClipUpload

        if len(connection.uploads) >= MAX_UPLOADS_PER_CONNECTION:
            connection.error(job.id, BUSY, f"{MAX_UPLOADS_PER_CONNECTION} clip uploads are already under "
                                           "way on this connection")
            return
        try:
            job.upload = ClipUpload(message.fields["upload"], self.max_upload_bytes)
        except Exception as exc:
            code, text = _describe(exc)
            connection.error(job.id, code, text)
            return
        job.fields, job.arrays = dict(message.fields), dict(message.arrays)
        connection.uploads[job.id] = job
        log.info("request %r: receiving a clip of %d file(s), %.1f MB", job.id, len(job.upload.names),
                 job.upload.total / 1e6)

    def _clip_data(self, connection: Connection, message: wire.Message) -> None:
        job = connection.uploads.get(message.id)
        if job is None:
            if message.id not in connection.ended_uploads:  # data in flight after a cancel is dropped
                connection.error(message.id, BAD_INPUT, "clip_data for no clip upload under way")
            return
        try:
            job.upload.write(int(message.fields["file"]), memoryview(message.arrays["data"]).cast("B"))
            if not job.upload.complete:
                return
            connection.uploads.pop(job.id, None)
            job.request = clip_request({**job.fields, "clip_path": str(job.upload.path)}, job.arrays)
        except Exception as exc:
            self._end_upload(connection, job)
            code, text = _describe(exc)
            # Name the client's clip, not our temporary copy of it.
            connection.error(job.id, code, text.replace(str(job.upload.path), str(job.fields.get("clip_path"))))
            return
        self._enqueue(connection, job)

    def _end_upload(self, connection: Connection, job: Job) -> None:
        connection.uploads.pop(job.id, None)
        connection.ended_uploads.append(job.id)
        job.discard_upload()

    def _cancel(self, connection: Connection, request_id: int | str) -> None:
        upload = connection.uploads.get(request_id)
        if upload is not None:
            self._end_upload(connection, upload)
            connection.error(request_id, CANCELLED, "cancelled while the clip was uploading")
            return
        job = connection.jobs.get(request_id)
        if job is None:
            log.info("cancel of %r: no such request in progress", request_id)
            return
        with job.lock:
            job.cancelled.set()
            if job.state != "queued":
                return  # the worker answers when the engine notices
            job.state = "done"
        self._jobs.remove(connection, job)  # free its place in the queue now
        connection.jobs.pop(request_id, None)
        job.discard_upload()
        connection.error(request_id, CANCELLED, "cancelled before it started")

    def _drop_jobs(self, connection: Connection) -> None:
        """The connection is gone: its queued jobs leave the queue without running."""
        for job in self._jobs.remove_owner(connection):
            with job.lock:
                job.cancelled.set()
                job.state = "done"
            connection.jobs.pop(job.id, None)
            job.discard_upload()

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
            out_of_memory = False
            try:
                if not job.cancelled.is_set() and not job.connection.closed.is_set():
                    out_of_memory = self._run(job)
            except Exception:
                log.exception("job %r failed unexpectedly", job.id)
            finally:
                with job.lock:
                    job.state = "done"
                job.connection.jobs.pop(job.id, None)
                job.request = None
                job.discard_upload()
            del job
            if out_of_memory:
                # Outside the except block, so the failed request's frames (and tensors)
                # are no longer referenced by a live traceback.
                oom.release_cached_memory(self.engine)

    def _run(self, job: Job) -> bool:
        """Run one job and answer it; True when it failed for lack of memory."""
        connection = job.connection
        started = time.perf_counter()
        try:
            if job.kind == "rig":
                connection.send("rig", job.id, arrays=self._rig())
                return False

            def progress(fraction: float, text: str = "") -> None:
                fraction = min(max(float(fraction), 0.0), 1.0)
                if not connection.send("progress", job.id,
                                       {"fraction": fraction, "message": str(text)}):
                    job.cancelled.set()

            fields: dict[str, Any] = {}
            if job.kind == "clip":
                from .video.clip import ClipJob

                source, request = job.request
                clip = ClipJob(self.engine, source, request, progress=progress,
                               cancelled=job.cancelled.is_set, sink=self._row_sink(job))
                result = clip.run()
                fields["rows"] = clip.n_rows
                if job.upload is not None:  # the client's name for it, not our temporary copy
                    result["source_path"] = np.array(job.fields["clip_path"])
            else:
                result = self.engine.reconstruct(job.request, progress=progress,
                                                 cancelled=job.cancelled.is_set)
            if job.cancelled.is_set():
                connection.error(job.id, CANCELLED, "cancelled")
                return False
            arrays = _result_arrays(result)
            seconds = time.perf_counter() - started
            connection.send("result", job.id, {"info": {"seconds": round(seconds, 4)}, **fields}, arrays)
            log.info("request %r done in %.3f s", job.id, seconds)
            return False
        except Exception as exc:
            if job.cancelled.is_set():
                connection.error(job.id, CANCELLED, "cancelled")
                return False
            code, text = _describe(exc)
            if code == OUT_OF_MEMORY:
                self.oom_count += 1
                log.warning("request %r ran out of memory: %s", job.id, exc)
            elif code == INTERNAL:
                log.exception("request %r failed", job.id)
            else:
                log.info("request %r failed: %s: %s", job.id, code, text)
            connection.error(job.id, code, text)
            return code == OUT_OF_MEMORY

    def _row_sink(self, job: Job) -> Callable[[int, Mapping[str, np.ndarray], int | None], None]:
        """Where a clip job's row parts go: `clip_rows` messages to the job's client. The job
        waits while more than MAX_QUEUED_ROW_PARTS are unsent, so a slow link holds the model
        worker instead of piling the clip up in memory (a stalled one is cut by the write
        timeout, which cancels the job)."""
        connection = job.connection

        def sink(start: int, arrays: Mapping[str, np.ndarray], total: int | None) -> None:
            fields: dict[str, Any] = {"start": int(start)}
            if total is not None:
                fields["total"] = int(total)
            sent = connection.send("clip_rows", job.id, fields, _result_arrays(arrays))
            while sent and not job.cancelled.is_set():
                if connection.wait_pending_below(MAX_QUEUED_ROW_PARTS, timeout=0.5):
                    return
                sent = not connection.closed.is_set()
            job.cancelled.set()
            raise ServerError(CANCELLED, "cancelled")

        return sink

    def _rig(self) -> dict[str, np.ndarray]:
        if self._rig_arrays is None:
            self._rig_arrays = _result_arrays(self.engine.rig_data())
        return self._rig_arrays


def build_request(request_type: Callable[..., Any], fields: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray], *, max_pixels: int = MAX_PIXELS) -> Any:
    """A reconstruct message's fields and arrays -> the engine's ReconstructRequest.

    Encoded images (bytes or a path on the server's disk) are decoded here, in the connection's
    thread, so the model worker only runs the model. Only Pillow decodes them
    (server/imageio.py), which checks the pixel count from the file header before decoding
    anything (decompression bombs); raw pixel arrays get the same ``max_pixels`` limit."""
    exif_focal = fields.get("exif_focal_35mm")
    if "image" in arrays:
        height, width = arrays["image"].shape[:2]
        if height * width > max_pixels:
            raise wire.BadSchema(f"the image has {width}x{height} = {width * height:,} pixels, "
                                 f"more than the limit of {max_pixels:,}; resize it first")
        image = np.ascontiguousarray(arrays["image"])
    else:
        from server import imageio

        source = bytes(arrays["image_bytes"]) if "image_bytes" in arrays else fields["image_path"]
        image, image_info = imageio.load_image(source, max_pixels=max_pixels)
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
        fit_prompts=bool(fields.get("fit_prompts", False)),
    )


def clip_request(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    """A clip message -> (FrameSource, ClipRequest); the clip is opened here so that a missing
    file or an empty frame range is refused before the job queues."""
    from .video.clip import ClipRequest
    from .video.source import open_clip

    source = open_clip(fields["clip_path"], int(fields.get("start", 0)), fields.get("stop"),
                       int(fields.get("step", 1)), fields.get("fps"))
    boxes = arrays.get("boxes")
    intrinsics = fields.get("intrinsics")
    frame_boxes = None
    if "track_box_frames" in arrays:
        numbers = np.asarray(arrays["track_box_frames"], np.int64)
        rows = np.asarray(arrays["track_boxes"], np.float32)
        frame_boxes = {int(n): rows[numbers == n] for n in np.unique(numbers)}
    return source, ClipRequest(mode=str(fields.get("mode", "body")),
                               boxes=None if boxes is None else np.asarray(boxes, np.float32),
                               frame_boxes=frame_boxes,
                               intrinsics=tuple(intrinsics) if intrinsics else None,
                               max_people=fields.get("max_people"),
                               batch_frames=fields.get("batch_frames"))


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
    if oom.is_out_of_memory(exc):
        return OUT_OF_MEMORY, oom.OOM_MESSAGE.format(device=oom.oom_device(exc))
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
