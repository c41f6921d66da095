"""A clip sent to the server as file bytes (a studio's server on another machine).

The client names the files up front (a movie, or the images of a folder) with their sizes in the
`clip` message's `upload` field, then sends their bytes in order as `clip_data` parts
(addon/protocol/wire.py). The bytes go straight to a private temporary folder, so a long movie is
never held in memory; when the last byte is in, the clip is opened from there like a local one
and the job queues. The folder is removed when the job ends, is cancelled, or the connection
goes, whichever comes first.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

from addon.protocol.clip_result import IMAGE_SUFFIXES, VIDEO_SUFFIXES

from .errors import BAD_INPUT, ServerError

MAX_UPLOAD_BYTES = 16 << 30  # the default limit of one clip's files (serve --max-upload-gb)
MAX_UPLOAD_FILES = 100_000
FREE_DISK_MARGIN = 1 << 30  # left free on the temporary folder's disk
_LIVE: set["ClipUpload"] = set()  # uploads not yet discarded, for the disk check
_LIVE_LOCK = threading.Lock()


def _check_name(name: Any) -> str:
    if (not isinstance(name, str) or not name or name in (".", "..") or len(name) > 255
            or any(c in name for c in "/\\\0:") or name != name.strip()):
        raise ServerError(BAD_INPUT, f"upload: {name!r:.80} is not a plain file name")
    return name


class ClipUpload:
    """The files of one uploaded clip as they arrive; `path` is what `open_clip` reads."""

    def __init__(self, upload: Mapping[str, Any], max_bytes: int = MAX_UPLOAD_BYTES,
                 temp_dir: str | None = None) -> None:
        names, sizes = upload.get("files"), upload.get("sizes")
        if not isinstance(names, list) or not isinstance(sizes, list) or len(names) != len(sizes):
            raise ServerError(BAD_INPUT, "upload needs 'files' and 'sizes', two lists of the same length")
        if not 1 <= len(names) <= MAX_UPLOAD_FILES:
            raise ServerError(BAD_INPUT, f"upload: 1 to {MAX_UPLOAD_FILES} files, not {len(names)}")
        self.names = [_check_name(n) for n in names]
        if len(set(n.lower() for n in self.names)) != len(self.names):
            raise ServerError(BAD_INPUT, "upload: the file names must be unique")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ServerError(BAD_INPUT, "upload: every size must be a whole number of bytes >= 1")
        self.sizes = [int(s) for s in sizes]
        suffixes = {os.path.splitext(n)[1].lower() for n in self.names}
        if len(self.names) == 1 and suffixes <= set(VIDEO_SUFFIXES):
            self.movie = True
        elif suffixes <= set(IMAGE_SUFFIXES):
            self.movie = False
        else:
            raise ServerError(BAD_INPUT, f"upload: one movie ({', '.join(VIDEO_SUFFIXES)}) or image files "
                                         f"({', '.join(IMAGE_SUFFIXES)}), not {sorted(suffixes)}")
        total = sum(self.sizes)
        if total > max_bytes:
            raise ServerError(BAD_INPUT, f"the clip is {total / 2**30:.2f} GiB, more than this server takes "
                                         f"({max_bytes / 2**30:.2f} GiB, serve --max-upload-gb)")
        self.folder = Path(tempfile.mkdtemp(prefix="sam3d_upload_", dir=temp_dir))
        self.total = total
        self.received = 0
        with _LIVE_LOCK:
            # Other uploads still arriving will take their remaining bytes of the same disk.
            coming = sum(u.total - u.received for u in _LIVE)
            free = shutil.disk_usage(self.folder).free
            if total > free - coming - FREE_DISK_MARGIN:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise ServerError(BAD_INPUT, f"the server's disk has {free / 2**30:.1f} GiB free "
                                             f"({coming / 2**30:.1f} GiB of it promised to other uploads), "
                                             f"too little for a {total / 2**30:.2f} GiB clip")
            _LIVE.add(self)
        self._file = 0  # the file being written
        self._written = 0  # of it
        self._handle: Any = None
        self._lock = threading.Lock()
        self._discarded = False

    @property
    def path(self) -> Path:
        return self.folder / self.names[0] if self.movie else self.folder

    @property
    def complete(self) -> bool:
        return self.received == self.total

    def write(self, file: int, data: memoryview | bytes) -> None:
        """The next bytes of file number `file` (files in order, each from its start)."""
        with self._lock:
            if self._discarded:
                raise ServerError(BAD_INPUT, "upload: this clip's upload was ended")
            if not 0 <= file < len(self.names):
                raise ServerError(BAD_INPUT, f"upload: the clip has {len(self.names)} file(s), no file {file}")
            if file == self._file + 1 and self._written == self.sizes[self._file]:
                self._next_file()
            if file != self._file:
                expected = self._file + (self._written == self.sizes[self._file])
                raise ServerError(BAD_INPUT, f"upload: expected bytes of file {expected}, got file {file}")
            if self._written + len(data) > self.sizes[file]:
                raise ServerError(BAD_INPUT, f"upload: {self.names[file]} is longer than its announced "
                                             f"{self.sizes[file]} bytes")
            if self._handle is None:
                self._handle = open(self.folder / self.names[file], "xb")
            self._handle.write(data)
            self._written += len(data)
            self.received += len(data)
            if self._written == self.sizes[file]:
                self._handle.close()
                self._handle = None

    def _next_file(self) -> None:
        self._file += 1
        self._written = 0

    def discard(self) -> None:
        """Remove the files (idempotent; safe from any thread)."""
        with self._lock:
            self._discarded = True
            if self._handle is not None:
                self._handle.close()
                self._handle = None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        shutil.rmtree(self.folder, ignore_errors=True)
