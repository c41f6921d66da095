# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's side of the server: spawn/stop the process, talk to it, run jobs in the background.

* `ServerProcess` starts ``<python> -m server serve`` with a fresh token, waits for its ready
  line and keeps the last lines of its output (`log_tail`) for error messages.
* `Client` is one authenticated connection with blocking calls (`rig`, `reconstruct`, ...).
* `JobRunner` runs each request on a background thread and puts `JobEvent`s on a
  `queue.Queue`; Blender drains that queue from a timer on the main thread (no `bpy` here).

Standard library + numpy only: this module is imported inside Blender.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, cast

import numpy as np

from . import wire
from .clip_rows import RowAssembler
from .tls import TlsError, TlsSettings

READY_PREFIX = "SAM3D_READY "
TOKEN_ENV = "SAM3D_BODY_TOKEN"
# Bytes per clip_data message: small enough that a cancel sent between two of them is not held
# up long on a slow link (it waits for the socket), large enough that headers cost nothing.
UPLOAD_CHUNK = 1 << 20
UPLOAD_REPORT = 8 << 20  # progress every this many bytes sent

ProgressCallback = Callable[[float, str], None]


class ClientError(Exception):
    """Base of everything this module raises."""


class RemoteError(ClientError):
    """The server answered a request with an `error` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class ConnectionLost(ClientError):
    """The connection broke (server crashed, was stopped, or the network failed)."""


class ServerStartError(ClientError):
    """The server process could not be started or never became ready."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- server log ---\n{log_tail}" if log_tail else ""))
        self.message = message
        self.log_tail = log_tail


def clip_files(clip_path: str | os.PathLike) -> list[Path]:
    """The files of a clip to upload: the movie, or the images of a folder (the server reads
    them in natural order); ValueError says what is wrong."""
    from .clip_result import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    from .sequence import is_sequence_pattern, sequence_files

    path = Path(clip_path)
    if is_sequence_pattern(path) and not path.exists():
        files = sequence_files(path)  # only the sequence's frames, not the folder's other files
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"the folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path} is not a movie file ({', '.join(VIDEO_SUFFIXES)}) nor an image folder")
        files = [path]
    else:
        raise ValueError(f"clip not found: {path}")
    empty = [f.name for f in files if f.stat().st_size == 0]
    if empty:
        raise ValueError(f"empty file(s) in the clip: {', '.join(empty[:5])}")
    return files


def project_root() -> Path:
    """The directory holding ``addon/`` and ``server/`` (the extension dir or the checkout)."""
    return Path(__file__).resolve().parents[2]  # addon/protocol/client.py


class LogBuffer:
    """Thread-safe ring buffer of the last output lines."""

    def __init__(self, max_lines: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "\n".join(list(self._lines)[-lines:]) if lines > 0 else ""


# ---------------------------------------------------------------------------------------------
# One connection


class Client:
    """One authenticated connection. Calls block; `cancel` may be called from another thread
    while `reconstruct` waits. ``tls`` (`addon.tls.TlsSettings`: a CA file or a pinned
    certificate fingerprint) encrypts the connection to a remote server; the token is only
    sent once the server's certificate has passed that check."""

    def __init__(self, host: str, port: int, token: str, *, timeout: float = 10.0,
                 limits: wire.Limits = wire.Limits(), tls: TlsSettings | None = None) -> None:
        self.host, self.port, self.token = host, port, token
        self.timeout = timeout
        self.limits = limits
        self.tls = tls
        self.info: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._uploads: dict[int, list[Path]] = {}
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()

    def __enter__(self) -> "Client":
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def next_id(self) -> int:
        with self._id_lock:
            return next(self._ids)

    def connect(self) -> dict[str, Any]:
        """Open the socket and say hello; returns the server's info."""
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to the server at {self.host}:{self.port}: "
                                 f"{exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Keepalive: a remote server that vanishes without closing is noticed eventually.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.tls is not None:
            try:
                # A SerialisedSocket has every socket method this class and wire use.
                self._sock = cast(socket.socket, self.tls.wrap(self._sock, self.host))
            except TlsError as exc:
                self._sock = None
                raise ConnectionLost(f"secure connection to {self.host}:{self.port} failed: "
                                     f"{exc}") from exc
        rid = self.next_id()
        try:
            self._send("hello", rid, {"version": wire.PROTOCOL_VERSION, "token": self.token,
                                      "client": "sam3d-body-blender"})
            reply = self.wait_for(rid, "hello", timeout=self.timeout)
        except ClientError:
            self.close()
            raise
        self.info = dict(reply.fields.get("info", {}))
        return self.info

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- requests ----------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        rid = self.next_id()
        self._send("load", rid)
        return dict(self.wait_for(rid, "load", timeout=self.timeout).fields.get("info", {}))

    def rig(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """RigData arrays (``joint_names`` as a str array)."""
        return self.wait_for(self.send_rig(), "rig", timeout=timeout).arrays

    def send_rig(self, request_id: int | None = None) -> int:
        rid = self.next_id() if request_id is None else request_id
        self._send("rig", rid)
        return rid

    def reconstruct(self, *, progress: ProgressCallback | None = None,
                    timeout: float | None = None, **request: Any) -> dict[str, np.ndarray]:
        """Run one reconstruction and return the Result arrays (arguments: `send_reconstruct`).
        ``timeout`` bounds the wait for each message (progress included); None waits as long
        as the server lives."""
        rid = self.send_reconstruct(**request)
        return self.wait_for(rid, "result", progress, timeout).arrays

    def send_reconstruct(self, *, image: np.ndarray | None = None,
                         image_bytes: bytes | None = None,
                         image_path: str | os.PathLike | None = None,
                         boxes: Any = None, masks: Sequence[np.ndarray] | np.ndarray | None = None,
                         mode: str = "full", intrinsics: Sequence[float] | None = None,
                         prompts: Sequence[Sequence[float]] | None = None,
                         exif_focal_35mm: float | None = None,
                         fit_prompts: bool = False,
                         request_id: int | None = None) -> int:
        """Send a reconstruct request and return its id (then `wait_for` it).

        Give exactly one of ``image`` (RGB uint8 HxWx3), ``image_bytes`` (an encoded file) or
        ``image_path`` (a file on the server's disk); ``masks`` need one box each.
        ``fit_prompts``: after the prompted run, fit the pose so the prompted keypoints land on
        their points (server/pipeline/keypoint_fit.py)."""
        fields: dict[str, Any] = {"mode": mode}
        arrays: dict[str, Any] = {}
        if image is not None:
            arrays["image"] = np.asarray(image, dtype=np.uint8)
        if image_bytes is not None:
            arrays["image_bytes"] = np.frombuffer(image_bytes, dtype=np.uint8)
        if image_path is not None:
            fields["image_path"] = os.fspath(image_path)
        if boxes is not None:
            arrays["boxes"] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if masks is not None and len(masks):
            arrays["masks"] = np.stack([np.asarray(m, dtype=np.uint8) for m in masks])
        if intrinsics is not None:
            fields["intrinsics"] = [float(v) for v in intrinsics]
        if prompts:
            fields["prompts"] = [[float(x), float(y), int(label)] for x, y, label in prompts]
        if exif_focal_35mm is not None:
            fields["exif_focal_35mm"] = float(exif_focal_35mm)
        if fit_prompts:
            fields["fit_prompts"] = True
        rid = self.next_id() if request_id is None else request_id
        self._send("reconstruct", rid, fields, arrays)
        return rid

    def send_clip(self, *, clip_path: str | os.PathLike, mode: str = "body", start: int = 0,
                  stop: int | None = None, step: int = 1, fps: float | None = None,
                  max_people: int | None = None, boxes: Any = None,
                  intrinsics: Sequence[float] | None = None, request_id: int | None = None,
                  upload: bool = False, frame_boxes: Mapping[int, Any] | None = None,
                  batch_frames: int | None = None) -> int:
        """Send a clip request (a movie file or image folder on the server's disk); the server
        answers with per-frame progress and one clip result (addon/protocol/clip_result.py).
        With `upload` the clip is on this machine: its files are announced here and their bytes
        go with `send_clip_data` (a server on another machine). `frame_boxes`: source frame
        number -> (N, 4) boxes from another tracker."""
        fields: dict[str, Any] = {"clip_path": os.fspath(clip_path), "mode": mode, "start": int(start),
                                  "step": int(step)}
        for name, value in (("stop", stop), ("max_people", max_people), ("batch_frames", batch_frames)):
            if value is not None:
                fields[name] = int(value)
        if fps is not None:
            fields["fps"] = float(fps)
        if intrinsics is not None:
            fields["intrinsics"] = [float(v) for v in intrinsics]
        arrays: dict[str, Any] = {}
        if boxes is not None:
            arrays["boxes"] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if frame_boxes:
            per_frame = [(int(n), np.asarray(b, np.float32).reshape(-1, 4)) for n, b in sorted(frame_boxes.items())]
            arrays["track_box_frames"] = np.concatenate([np.full(len(b), n, np.int64) for n, b in per_frame])
            arrays["track_boxes"] = np.concatenate([b for _, b in per_frame])
        rid = self.next_id() if request_id is None else request_id
        if upload:
            files = clip_files(clip_path)
            fields["upload"] = {"files": [f.name for f in files], "sizes": [f.stat().st_size for f in files]}
            self._uploads[rid] = files
        self._send("clip", rid, fields, arrays)
        return rid

    def send_clip_data(self, rid: int, progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Send the files of the clip announced by `send_clip(upload=True)`, UPLOAD_CHUNK bytes
        per message, read as they go (never the whole clip in memory). `progress(sent, total)`;
        False when `cancelled()` stopped it (the server drops the partial upload on `cancel`)."""
        files = self._uploads.pop(rid)
        sizes = [f.stat().st_size for f in files]
        total, sent, reported = sum(sizes), 0, 0
        for number, (path, size) in enumerate(zip(files, sizes)):
            with open(path, "rb") as handle:
                left = size  # as announced: a file that grows meanwhile is cut, one that shrinks fails
                while left > 0:
                    if cancelled():
                        return False
                    chunk = handle.read(min(UPLOAD_CHUNK, left))
                    if not chunk:
                        raise ValueError(f"{path} became shorter while it was being sent")
                    self._send("clip_data", rid, {"file": number}, {"data": np.frombuffer(chunk, np.uint8)})
                    left -= len(chunk)
                    sent += len(chunk)
                    if progress is not None and (sent - reported >= UPLOAD_REPORT or sent == total):
                        progress(sent, total)
                        reported = sent
        return True

    def cancel(self, request_id: int) -> None:
        """Ask the server to stop a request; its reply becomes a `cancelled` error."""
        self._send("cancel", request_id)

    def shutdown(self, timeout: float | None = None) -> None:
        """Ask the server process to exit (it acknowledges first)."""
        rid = self.next_id()
        self._send("shutdown", rid)
        try:
            self.wait_for(rid, "shutdown", timeout=self.timeout if timeout is None else timeout)
        except ConnectionLost:
            pass  # it may close before we read the acknowledgement

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, type: str, rid: int, fields: Mapping[str, Any] | None = None,
              arrays: Mapping[str, Any] | None = None) -> None:
        parts = wire.encode_parts(type, rid, fields, arrays)
        with self._send_lock:
            if self._sock is None:
                raise ConnectionLost("not connected")
            try:
                for part in parts:
                    self._sock.sendall(part)
            except OSError as exc:
                raise ConnectionLost(f"sending {type} failed: {exc}") from exc

    def wait_for(self, rid: int, expected: str, progress: ProgressCallback | None = None,
                 timeout: float | None = None) -> wire.Message:
        """Read until the reply ``expected`` to request ``rid`` (progress goes to the callback);
        an `error` reply raises `RemoteError`, a broken connection `ConnectionLost`. A clip's
        `clip_rows` parts are joined into its result's arrays (addon/protocol/clip_rows.py)."""
        rows: RowAssembler | None = None
        while True:
            sock = self._sock
            if sock is None:
                raise ConnectionLost("not connected")
            try:
                message = wire.recv_message(sock, self.limits, timeout)
            except socket.timeout:
                raise ConnectionLost(f"no answer from the server within {timeout:g} s") from None
            except wire.ConnectionClosed:
                raise ConnectionLost("the server closed the connection") from None
            except wire.WireError as exc:
                raise ConnectionLost(f"bad frame from the server: {exc}") from exc
            except OSError as exc:
                raise ConnectionLost(f"connection error: {exc}") from exc
            if message.type == "error" and message.id in (rid, 0):
                raise RemoteError(message.fields["code"], message.fields["message"])
            if message.id != rid:
                continue  # a late reply to an earlier, abandoned request
            if message.type == "progress":
                if progress is not None:
                    progress(float(message.fields["fraction"]), message.fields.get("message", ""))
                continue
            if message.type == "clip_rows":
                rows = rows if rows is not None else RowAssembler()
                try:
                    rows.add(message.fields["start"], message.arrays, message.fields.get("total"))
                except ValueError as exc:
                    raise ConnectionLost(f"bad clip rows from the server: {exc}") from exc
                del message  # its payload is copied; let it go before the next part arrives
                continue
            if message.type != expected:
                raise ConnectionLost(f"expected {expected!r} from the server, got {message.type!r}")
            if rows is not None or "rows" in message.fields:
                try:
                    message.arrays.update((rows or RowAssembler()).finish(int(message.fields.get("rows", 0))))
                except ValueError as exc:
                    raise ConnectionLost(f"bad clip result from the server: {exc}") from exc
            return message


# ---------------------------------------------------------------------------------------------
# The server process


class ServerProcess:
    """``<python> -m server serve`` as a child process with its own random token."""

    def __init__(self, python: str | os.PathLike = sys.executable, *,
                 root: str | os.PathLike | None = None, checkpoint: str | None = None,
                 repo: str | None = None, mhr: str | None = None, device: str = "auto",
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, ready_timeout: float = 600.0,
                 log_lines: int = 2000) -> None:
        self.python = os.fspath(python)
        self.root = Path(root) if root is not None else project_root()
        self.host = host
        self.args = ["--host", host, "--port", "0", "--device", device, "--parent-watch"]
        for flag, value in (("--checkpoint", checkpoint), ("--repo", repo), ("--mhr", mhr)):
            if value:
                self.args += [flag, os.fspath(value)]
        self.args += list(extra_args)
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.token = ""
        self.port = 0
        self.info: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log = LogBuffer(log_lines)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        # The latest start-up stage ("loading the weights", "downloading ...: 1.2 of 3.6 GB")
        # and who hears about each new one (JobRunner: a progress event for the waiting job).
        self.stage = ""
        self.on_stage: Callable[[str], None] | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "server", "serve", *self.args]

    def start(self) -> dict[str, Any]:
        """Spawn the server and wait for its ready line; returns the ready info."""
        if self.alive():
            return self.info
        self.token = secrets.token_urlsafe(32)
        self._ready.clear()
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env[TOKEN_ENV] = self.token
        env["PYTHONUNBUFFERED"] = "1"
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, cwd=str(self.root), creationflags=flags)
        except OSError as exc:
            raise ServerStartError(f"cannot run {self.python!r}: {exc}") from exc
        self._log.append(f"$ {' '.join(self.command)}")
        self._reader = threading.Thread(target=self._read_output, args=(self.process,),
                                        name="server-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                self._reader.join(2.0)  # collect the last words
                if self._ready.is_set():
                    break
                raise ServerStartError(f"the server exited with code {self.process.returncode} "
                                       "before it was ready", self.log_tail())
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop(timeout=2.0)
                raise ServerStartError(f"the server was not ready within {self.ready_timeout:g} s",
                                       tail)
        if self.process.poll() is not None:
            raise ServerStartError(f"the server exited with code {self.process.returncode} "
                                   "right after it was ready", self.log_tail())
        return self.info

    def _read_output(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not self._ready.is_set() and line.startswith(wire.STAGE_PREFIX):
                try:
                    message = str(json.loads(line[len(wire.STAGE_PREFIX):])["message"])
                except (ValueError, KeyError, TypeError):
                    message = line[len(wire.STAGE_PREFIX):]
                self.stage = message
                callback = self.on_stage
                if callback is not None:
                    callback(message)
            if not self._ready.is_set() and line.startswith(READY_PREFIX):
                try:
                    info = json.loads(line[len(READY_PREFIX):])
                    self.port = int(info["port"])
                    self.info = info
                    self._ready.set()
                except (ValueError, KeyError, TypeError):
                    self._log.append(f"(unreadable ready line) {line}")
                    continue
            self._log.append(line)
        process.stdout.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process has ended within ``timeout``, else None."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        return self._log.tail(lines)

    def client(self, timeout: float = 10.0) -> Client:
        """A connected, authenticated `Client`."""
        if not self.alive():
            raise ConnectionLost("the server process is not running")
        client = Client(self.host, self.port, self.token, timeout=timeout)
        client.connect()
        return client

    def stop(self, timeout: float = 5.0) -> int | None:
        """Polite `shutdown` message, then terminate, then kill. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None and self._ready.is_set():
            try:
                with Client(self.host, self.port, self.token, timeout=min(timeout, 2.0)) as c:
                    c.shutdown()
            except ClientError:
                pass
            self.wait_exit(timeout)
        for action in (process.terminate, process.kill):
            if process.poll() is not None:
                break
            action()
            self.wait_exit(timeout)
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout)
        return process.poll()


# ---------------------------------------------------------------------------------------------
# Background jobs


@dataclass
class JobEvent:
    """What a job reports to the main thread. ``kind``: progress | result | error | died."""

    job_id: int
    kind: str
    fraction: float = 0.0
    message: str = ""
    code: str = ""
    data: dict[str, np.ndarray] | None = None
    log_tail: str = ""


@dataclass
class Job:
    id: int
    kind: str  # "reconstruct" | "rig"
    request: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _client: Client | None = None
    _request_id: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Ask for the job to stop; an `error` event with code ``cancelled`` follows."""
        self._cancel.set()
        with self._lock:
            client, rid = self._client, self._request_id
            if client is not None and rid is not None:
                try:
                    client.cancel(rid)
                except ClientError:
                    pass

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class JobRunner:
    """Runs requests on background threads; events go to ``self.events`` (a `queue.Queue`).

    With ``server`` (a `ServerProcess`, not necessarily started) the runner starts it on the
    first request and starts a new one when it has died. With ``address`` = (host, port,
    token) it talks to a server someone else runs."""

    def __init__(self, server: ServerProcess | None = None, *,
                 address: tuple[str, int, str] | None = None,
                 events: queue.Queue[JobEvent] | None = None,
                 connect_timeout: float = 10.0, request_timeout: float | None = None,
                 tls: TlsSettings | None = None) -> None:
        if (server is None) == (address is None):
            raise ValueError("give exactly one of server or address")
        self.server = server
        self.address = address
        self.tls = tls
        self.events: queue.Queue[JobEvent] = events if events is not None else queue.Queue()
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._server_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}

    def submit_reconstruct(self, **request: Any) -> Job:
        """Keyword arguments as `Client.reconstruct` (without progress/timeout)."""
        return self._submit("reconstruct", request)

    def submit_clip(self, **request: Any) -> Job:
        """Keyword arguments as `Client.send_clip`."""
        return self._submit("clip", request)

    def submit_rig(self) -> Job:
        return self._submit("rig", {})

    def busy(self) -> bool:
        return any(not job.done.is_set() for job in self._jobs.values())

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel running jobs and stop the server process (if this runner owns one)."""
        for job in list(self._jobs.values()):
            job.cancel()
        if self.server is not None:
            with self._server_lock:
                self.server.stop(timeout)
        for job in list(self._jobs.values()):
            job.done.wait(timeout)

    def _submit(self, kind: str, request: dict[str, Any]) -> Job:
        job = Job(next(self._ids), kind, dict(request))
        self._jobs = {i: j for i, j in self._jobs.items() if not j.done.is_set()}
        self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}",
                         daemon=True).start()
        return job

    def _connect(self, job: Job) -> Client:
        if self.address is not None:
            client = Client(*self.address, timeout=self.connect_timeout, tls=self.tls)
            client.connect()
            return client
        assert self.server is not None
        with self._server_lock:
            if not self.server.alive():
                if self.server.process is not None:
                    self.events.put(JobEvent(job.id, "progress", 0.0,
                                             "restarting the server"))
                else:
                    self.events.put(JobEvent(job.id, "progress", 0.0, "starting the server"))
                self.server.on_stage = lambda m: self.events.put(
                    JobEvent(job.id, "progress", 0.0, f"starting the server: {m}"))
                try:
                    self.server.start()
                finally:
                    self.server.on_stage = None
        return self.server.client(self.connect_timeout)

    def _run(self, job: Job) -> None:
        client: Client | None = None
        put = self.events.put
        try:
            client = self._connect(job)
            # Sending under the job's lock orders a concurrent `Job.cancel` after the request.
            with job._lock:
                if job.cancelled:
                    raise RemoteError("cancelled", "cancelled before it was sent")
                if job.kind == "rig":
                    rid = client.send_rig()
                elif job.kind == "clip":
                    rid = client.send_clip(**job.request)
                else:
                    rid = client.send_reconstruct(**job.request)
                job._client, job._request_id = client, rid
            if job.kind == "clip" and job.request.get("upload"):
                # Outside the job's lock: `Job.cancel` (Blender's main thread) must not wait for it.
                client.send_clip_data(rid, lambda sent, total: put(JobEvent(
                    job.id, "progress", 0.0, f"uploading the clip: {sent / 1e6:.0f} of {total / 1e6:.0f} MB")),
                    cancelled=lambda: job.cancelled)
            expected = "rig" if job.kind == "rig" else "result"
            data = client.wait_for(rid, expected, timeout=self.request_timeout,
                                   progress=lambda f, m: put(JobEvent(job.id, "progress", f, m))
                                   ).arrays
            put(JobEvent(job.id, "result", 1.0, "done", data=data))
        except RemoteError as exc:
            put(JobEvent(job.id, "error", message=exc.message, code=exc.code))
        except ServerStartError as exc:
            put(JobEvent(job.id, "error", message=exc.message, code="server_start",
                         log_tail=exc.log_tail))
        except ConnectionLost as exc:
            put(self._lost_event(job, exc))
        except (ValueError, TypeError, wire.WireError) as exc:  # a bad request from our side
            put(JobEvent(job.id, "error", message=str(exc), code="bad_request"))
        except Exception as exc:  # the queue consumer must always hear back
            put(JobEvent(job.id, "error", message=f"{type(exc).__name__}: {exc}",
                         code="client_internal"))
        finally:
            if client is not None:
                client.close()
            job.done.set()

    def _lost_event(self, job: Job, exc: Exception) -> JobEvent:
        server = self.server
        if server is not None and server.process is not None:
            code = server.wait_exit(3.0)  # a crash closes the socket just before the exit
            if code is not None:
                return JobEvent(job.id, "died", message=f"the server process exited with code "
                                                        f"{code}: {exc}",
                                code="server_died", log_tail=server.log_tail())
        return JobEvent(job.id, "error", message=str(exc), code="connection")
