# SPDX-License-Identifier: GPL-3.0-or-later
"""The wire format between the add-on and the inference server (both sides use this module).

A frame is ``b"S3DB"`` + u32 header length + u64 payload length (little-endian) + a UTF-8 JSON
header + the payload. The header holds ``type``, ``id`` (the request id, echoed in replies),
``arrays`` (``{name, dtype, shape, offset, nbytes}`` entries describing little-endian buffers in
the payload) and the message's other fields. Unicode string arrays travel inside the header as a
flat JSON list (``values``) and take no payload bytes. Nothing is ever unpickled or evaluated.

This module is imported inside Blender and by the server, so it uses only the standard library
and numpy, and never ``bpy``.
"""
from __future__ import annotations

import json
import math
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

# 2: a clip's rows come in `clip_rows` parts before its `result` (addon/protocol/clip_rows.py);
#    a clip may be uploaded (`clip` with `upload`, then `clip_data`).
PROTOCOL_VERSION = 2
MAGIC = b"S3DB"
PREFIX = struct.Struct("<4sIQ")
# Offsets of numeric arrays in the payload are rounded up to this so decoded views are aligned.
ALIGNMENT = 64

# A server's start-up stage on its stdout before the ready line: "SAM3D_STAGE {"message": ...}".
STAGE_PREFIX = "SAM3D_STAGE "

MESSAGE_TYPES = (
    "hello", "load", "rig", "reconstruct", "clip", "clip_data", "progress", "clip_rows", "result", "error",
    "cancel", "shutdown",
)
# Wire dtype name -> numpy dtype (always little-endian). "str" arrays live in the header.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "bool": "?", "u1": "<u1", "i1": "<i1", "u2": "<u2", "i2": "<i2", "u4": "<u4",
        "i4": "<i4", "u8": "<u8", "i8": "<i8", "f2": "<f2", "f4": "<f4", "f8": "<f8",
    }.items()
}
STR_DTYPE = "str"
MAX_NDIM = 16
MAX_NAME_LENGTH = 128
MAX_ID_LENGTH = 128


class WireError(Exception):
    """Any problem with a frame or a message. ``request_id`` is set when it could be read."""

    code = "bad_frame"

    def __init__(self, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class ConnectionClosed(WireError):
    """The peer closed the connection cleanly, between two frames."""

    code = "closed"


class TruncatedFrame(WireError):
    """The stream ended (or timed out) in the middle of a frame."""

    code = "truncated"


class BadMagic(WireError):
    """The bytes are not an S3DB frame (wrong protocol or a desynchronised stream)."""

    code = "bad_magic"


class FrameTooLarge(WireError):
    """A header or payload is larger than the receiver's limits."""

    code = "too_large"


class BadSchema(WireError):
    """The frame was read completely but its header or arrays are invalid.

    The stream is still in sync after this error (``frame_consumed``), so a receiver may reply
    and keep reading.
    """

    code = "bad_schema"
    frame_consumed = True


class UnknownMessageType(BadSchema):
    code = "unknown_type"


@dataclass(frozen=True)
class Limits:
    """Receiver-side size limits; anything larger is refused before it is read."""

    max_header_bytes: int = 1 << 20
    max_payload_bytes: int = 1 << 30
    max_arrays: int = 256


# Before authentication a peer may only say hello, so it gets almost no room.
HANDSHAKE_LIMITS = Limits(max_header_bytes=64 << 10, max_payload_bytes=0, max_arrays=0)


@dataclass
class Message:
    type: str
    id: int | str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Message schemas


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def _check_str(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _check_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return None if ok else "must be an integer"


def _check_dict(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a JSON object"


def _check_fraction(value: Any) -> str | None:
    return None if _is_number(value) and 0.0 <= value <= 1.0 else "must be a number in [0, 1]"


def _check_positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "must be a positive number"


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _check_count(value: Any) -> str | None:
    return None if _check_int(value) is None and value >= 0 else "must be an integer >= 0"


def _check_mode(value: Any) -> str | None:
    return None if value in ("body", "full") else "must be 'body' or 'full'"


def _check_intrinsics(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value):
        if value[0] > 0 and value[1] > 0:
            return None
    return "must be [fx, fy, cx, cy] with positive focal lengths"


def _check_prompts(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > 1024:
        return "must be a list of at most 1024 [x, y, label] triples"
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and all(_is_number(v) for v in item)
                and float(item[2]).is_integer()):
            return "must be a list of [x, y, label] triples (label an integer)"
    return None


@dataclass(frozen=True)
class ArraySpec:
    dtypes: frozenset[str]
    shape: tuple[int | None, ...]  # None = any length on that axis


@dataclass(frozen=True)
class Schema:
    required: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)
    optional: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)
    # None: any array names (results); otherwise exactly these names may appear.
    arrays: Mapping[str, ArraySpec] | None = field(default_factory=dict)
    check: Callable[[Message], str | None] | None = None


_FLOATS = frozenset({"f2", "f4", "f8"})


def _check_reconstruct(message: Message) -> str | None:
    sources: list[str] = [k for k in ("image", "image_bytes") if k in message.arrays]
    if "image_path" in message.fields:
        sources.append("image_path")
    if len(sources) != 1:
        return "reconstruct needs exactly one of the arrays 'image', 'image_bytes' or the field " \
               f"'image_path' (got {sources or 'none'})"
    if "masks" in message.arrays:
        boxes = message.arrays.get("boxes")
        masks = message.arrays["masks"]
        if boxes is None or boxes.shape[0] != masks.shape[0]:
            return "'masks' needs 'boxes' with one box per mask"
        image = message.arrays.get("image")
        if image is not None and masks.shape[1:] != image.shape[:2]:
            return f"'masks' shape {masks.shape[1:]} differs from the image's {image.shape[:2]}"
    return None


def _check_clip(message: Message) -> str | None:
    frames, boxes = message.arrays.get("track_box_frames"), message.arrays.get("track_boxes")
    if (frames is None) != (boxes is None):
        return "'track_box_frames' and 'track_boxes' go together"
    if frames is not None and boxes is not None:
        if len(frames) != len(boxes):
            return "'track_box_frames' needs one frame number per row of 'track_boxes'"
        if (frames < 0).any() or not np.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
            return "'track_boxes' need frame numbers >= 0 and finite boxes with x1 < x2, y1 < y2"
    if message.fields.get("batch_frames") == 0:
        return "'batch_frames' must be at least 1"
    return None


def _check_rows_part(message: Message) -> str | None:
    lengths = {name: array.shape[0] if array.ndim else -1 for name, array in message.arrays.items()}
    if not lengths or min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
        return f"needs row arrays with the same number of rows (>= 1), got {lengths}"
    total = message.fields.get("total")
    if total is not None and message.fields["start"] + next(iter(lengths.values())) > total:
        return "rows run past 'total'"
    return None


SCHEMAS: dict[str, Schema] = {
    "hello": Schema(
        required={"version": _check_int},
        optional={"token": _check_str, "info": _check_dict, "client": _check_str},
    ),
    "load": Schema(optional={"info": _check_dict}),
    "rig": Schema(arrays=None),
    "reconstruct": Schema(
        optional={
            "mode": _check_mode, "image_path": _check_str, "intrinsics": _check_intrinsics,
            "prompts": _check_prompts, "exif_focal_35mm": _check_positive,
            "fit_prompts": _check_bool,
        },
        arrays={
            "image": ArraySpec(frozenset({"u1"}), (None, None, 3)),
            "image_bytes": ArraySpec(frozenset({"u1"}), (None,)),
            "boxes": ArraySpec(_FLOATS | {"i4", "i8"}, (None, 4)),
            "masks": ArraySpec(frozenset({"u1", "bool"}), (None, None, None)),
        },
        check=_check_reconstruct,
    ),
    # A video clip: on the server's disk (loopback servers only), or with `upload` ({"files":
    # [names], "sizes": [bytes]}) sent next as `clip_data` parts (server/clip_upload.py).
    # Per-frame progress, the rows in `clip_rows` parts, one result (addon/protocol/clip_result.py).
    "clip": Schema(
        required={"clip_path": _check_str},
        optional={
            "mode": _check_mode, "start": _check_count, "stop": _check_count, "step": _check_count,
            "fps": _check_positive, "max_people": _check_count, "intrinsics": _check_intrinsics,
            "upload": _check_dict, "batch_frames": _check_count,
        },
        # Boxes per frame from another tracker: row k is a box on source frame track_box_frames[k].
        arrays={"boxes": ArraySpec(_FLOATS | {"i4", "i8"}, (None, 4)),
                "track_box_frames": ArraySpec(frozenset({"i4", "i8"}), (None,)),
                "track_boxes": ArraySpec(_FLOATS, (None, 4))},
        check=_check_clip,
    ),
    # The next bytes of file number `file` of an uploaded clip (the `clip` request's id).
    "clip_data": Schema(
        required={"file": _check_count},
        arrays={"data": ArraySpec(frozenset({"u1"}), (None,))},
        check=lambda m: None if "data" in m.arrays and m.arrays["data"].size else "needs a non-empty 'data'",
    ),
    "progress": Schema(required={"fraction": _check_fraction}, optional={"message": _check_str}),
    # Rows start.. of a clip result's row arrays, sent while the clip runs; `total` (the clip's
    # row count) once it is known. The clip's `result` then says `rows` and holds the rest.
    "clip_rows": Schema(required={"start": _check_count}, optional={"total": _check_count}, arrays=None,
                        check=_check_rows_part),
    "result": Schema(optional={"info": _check_dict, "rows": _check_count}, arrays=None),
    "error": Schema(required={"code": _check_str, "message": _check_str}),
    "cancel": Schema(),
    "shutdown": Schema(),
}
assert set(SCHEMAS) == set(MESSAGE_TYPES)


def _check_id(request_id: Any) -> None:
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        if 0 <= request_id < 2**63:
            return
    elif isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_LENGTH:
        return
    raise BadSchema(f"message id must be an integer in [0, 2**63) or a short string, got "
                    f"{request_id!r:.80}")


def validate_message(message: Message) -> None:
    """Raise `BadSchema` unless the message matches its type's schema."""
    schema = SCHEMAS.get(message.type)
    if schema is None:
        raise UnknownMessageType(f"unknown message type {message.type!r:.60}",
                                 _safe_id(message.id))
    _check_id(message.id)
    rid = message.id

    def fail(text: str) -> BadSchema:
        return BadSchema(f"{message.type}: {text}", rid)

    for name in schema.required:
        if name not in message.fields:
            raise fail(f"missing field '{name}'")
    for name, value in message.fields.items():
        check = schema.required.get(name) or schema.optional.get(name)
        if check is None:
            raise fail(f"unexpected field {name!r:.60}")
        problem = check(value)
        if problem:
            raise fail(f"field '{name}' {problem}")
    if schema.arrays is not None:
        for name, array in message.arrays.items():
            spec = schema.arrays.get(name)
            if spec is None:
                raise fail(f"unexpected array {name!r:.60}")
            wire_dtype = _wire_dtype(array.dtype)
            if wire_dtype not in spec.dtypes:
                raise fail(f"array '{name}' has dtype {wire_dtype}, expected one of "
                           f"{sorted(spec.dtypes)}")
            if array.ndim != len(spec.shape) or any(
                    want is not None and have != want
                    for have, want in zip(array.shape, spec.shape)):
                pattern = ", ".join("*" if n is None else str(n) for n in spec.shape)
                raise fail(f"array '{name}' has shape {array.shape}, expected ({pattern})")
    if schema.check is not None:
        problem = schema.check(message)
        if problem:
            raise fail(problem)


def _safe_id(value: Any) -> int | str | None:
    try:
        _check_id(value)
    except BadSchema:
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Encoding


def _wire_dtype(dtype: np.dtype) -> str:
    if dtype.kind == "U":
        return STR_DTYPE
    if dtype.kind == "b":
        return "bool"
    if dtype.kind in "uif":
        name = f"{dtype.kind}{dtype.itemsize}"
        if name in DTYPES:
            return name
    raise BadSchema(f"dtype {dtype} cannot be sent (allowed: {', '.join(DTYPES)}, unicode str)")


def _as_wire_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    try:
        wire = _wire_dtype(array.dtype)
    except BadSchema as exc:
        raise BadSchema(f"array {name!r}: {exc}") from None
    if wire == STR_DTYPE:
        return array
    array = np.asarray(array, dtype=DTYPES[wire])
    # (np.ascontiguousarray would turn 0-d arrays into 1-d ones.)
    return array if array.flags.c_contiguous else array.copy(order="C")


def encode_parts(type: str, id: int | str, fields: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, Any] | None = None) -> list[memoryview | bytes]:
    """The frame as a list of buffers (prefix+header, then array data and padding), no copies
    of large arrays. ``b"".join(parts)`` is the frame."""
    fields = dict(fields or {})
    arrays = {name: _as_wire_array(name, value) for name, value in (arrays or {}).items()}
    for name in arrays:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise BadSchema(f"array name {name!r:.60} must be a non-empty string of at most "
                            f"{MAX_NAME_LENGTH} characters")
    for reserved in ("type", "id", "arrays"):
        if reserved in fields:
            raise BadSchema(f"'{reserved}' is reserved in the header and cannot be a field")
    validate_message(Message(type, id, fields, arrays))

    entries: list[dict[str, Any]] = []
    chunks: list[memoryview | bytes] = []
    offset = 0
    for name, array in arrays.items():
        shape = [int(n) for n in array.shape]
        if array.dtype.kind == "U":
            entries.append({"name": name, "dtype": STR_DTYPE, "shape": shape, "offset": 0,
                            "nbytes": 0, "values": [str(v) for v in array.reshape(-1).tolist()]})
            continue
        padding = -offset % ALIGNMENT
        if padding:
            chunks.append(bytes(padding))
            offset += padding
        entries.append({"name": name, "dtype": _wire_dtype(array.dtype), "shape": shape,
                        "offset": offset, "nbytes": int(array.nbytes)})
        if array.nbytes:
            chunks.append(memoryview(array.reshape(-1)).cast("B"))
        offset += int(array.nbytes)
    header = {"type": type, "id": id, "arrays": entries, **fields}
    try:
        header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False,
                                  ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BadSchema(f"{type}: header is not plain JSON ({exc})", id) from None
    return [PREFIX.pack(MAGIC, len(header_bytes), offset) + header_bytes, *chunks]


def encode_message(type: str, id: int | str, fields: Mapping[str, Any] | None = None,
                   arrays: Mapping[str, Any] | None = None) -> bytes:
    """One complete frame as bytes."""
    return b"".join(encode_parts(type, id, fields, arrays))


def send_message(sock: socket.socket, type: str, id: int | str,
                 fields: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, Any] | None = None) -> None:
    """Encode and send one frame (the caller serialises concurrent senders)."""
    for part in encode_parts(type, id, fields, arrays):
        sock.sendall(part)


# ---------------------------------------------------------------------------------------------
# Decoding


# A large read grows its buffer as bytes arrive (doubling from this size), so a peer that
# announces a big payload and then stalls holds memory for what it sent, not what it claimed.
_GROW_FROM = 16 << 20


def _read_exact(source: Any, n: int, *, at_boundary: bool = False) -> bytearray:
    buffer = bytearray(min(n, _GROW_FROM))
    view = memoryview(buffer)
    got = 0
    recv_into = getattr(source, "recv_into", None)
    read_into = recv_into or getattr(source, "readinto", None)
    while got < n:
        if got == len(buffer):
            view.release()
            buffer.extend(bytes(min(len(buffer), n - len(buffer))))
            view = memoryview(buffer)
        try:
            if read_into is not None:
                count = read_into(view[got:])
            else:
                chunk = source.read(len(buffer) - got)
                count = len(chunk) if chunk else 0
                view[got:got + count] = chunk or b""
        except socket.timeout:
            if got == 0 and at_boundary:
                raise
            raise TruncatedFrame(f"timed out after {got} of {n} bytes") from None
        if not count:
            if got == 0 and at_boundary:
                raise ConnectionClosed("connection closed")
            raise TruncatedFrame(f"stream ended after {got} of {n} bytes")
        got += count
    view.release()
    return buffer


def _skip(source: Any, n: int) -> None:
    while n > 0:
        step = min(n, 1 << 20)
        _read_exact(source, step)
        n -= step


def read_message(source: socket.socket | BinaryIO, limits: Limits = Limits()) -> Message:
    """Read and validate one frame from a socket (or any object with ``recv_into``,
    ``readinto`` or ``read``). Raises `WireError` subclasses; a `socket.timeout` raised before
    the first byte of a frame is passed through unchanged, so callers can poll."""
    prefix = bytes(_read_exact(source, PREFIX.size, at_boundary=True))
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise BadMagic(f"not an S3DB frame (starts with {prefix[:4]!r})")
    if header_len > limits.max_header_bytes:
        raise FrameTooLarge(f"header of {header_len} bytes exceeds the limit of "
                            f"{limits.max_header_bytes}")
    if payload_len > limits.max_payload_bytes:
        raise FrameTooLarge(f"payload of {payload_len} bytes exceeds the limit of "
                            f"{limits.max_payload_bytes}")
    header_bytes = _read_exact(source, header_len)
    try:
        header = _parse_header(bytes(header_bytes))
    except BadSchema:
        _skip(source, payload_len)
        raise
    payload = _read_exact(source, payload_len) if payload_len else bytearray()
    return decode_body(header, payload, limits)


def decode_frame(frame: bytes | bytearray | memoryview, limits: Limits = Limits()) -> Message:
    """Decode one complete frame held in memory (trailing bytes are an error)."""
    view = memoryview(frame)
    if len(view) < PREFIX.size:
        raise TruncatedFrame(f"frame of {len(view)} bytes is shorter than its prefix")
    magic, header_len, payload_len = PREFIX.unpack(view[:PREFIX.size])
    if magic != MAGIC:
        raise BadMagic(f"not an S3DB frame (starts with {bytes(view[:4])!r})")
    if header_len > limits.max_header_bytes or payload_len > limits.max_payload_bytes:
        raise FrameTooLarge(f"frame (header {header_len}, payload {payload_len} bytes) exceeds "
                            "the limits")
    end = PREFIX.size + header_len + payload_len
    if len(view) < end:
        raise TruncatedFrame(f"frame needs {end} bytes, got {len(view)}")
    if len(view) > end:
        raise BadSchema(f"{len(view) - end} unexpected bytes after the frame")
    header = _parse_header(bytes(view[PREFIX.size:PREFIX.size + header_len]))
    return decode_body(header, bytearray(view[PREFIX.size + header_len:end]), limits)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r:.60}")
        result[key] = value
    return result


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                            object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadSchema(f"header is not valid UTF-8 JSON: {str(exc):.200}") from None
    if not isinstance(header, dict):
        raise BadSchema("header must be a JSON object")
    return header


def decode_body(header: dict[str, Any], payload: bytearray, limits: Limits = Limits()) -> Message:
    """Turn a parsed header and its payload into a validated `Message`."""
    request_id = _safe_id(header.get("id"))
    kind = header.get("type")
    if not isinstance(kind, str):
        raise BadSchema("header needs a string 'type'", request_id)
    if kind not in SCHEMAS:
        raise UnknownMessageType(f"unknown message type {kind!r:.60}", request_id)
    if "id" not in header:
        raise BadSchema(f"{kind}: header needs an 'id'")
    entries = header.get("arrays", [])
    if not isinstance(entries, list):
        raise BadSchema(f"{kind}: 'arrays' must be a list", request_id)
    if len(entries) > limits.max_arrays:
        raise FrameTooLarge(f"{kind}: {len(entries)} arrays exceed the limit of "
                            f"{limits.max_arrays}", request_id)
    try:
        arrays = _decode_arrays(entries, payload)
    except BadSchema as exc:
        raise BadSchema(f"{kind}: {exc}", request_id) from None
    fields = {k: v for k, v in header.items() if k not in ("type", "id", "arrays")}
    message = Message(kind, header["id"], fields, arrays)
    validate_message(message)
    return message


_ENTRY_KEYS = {"name", "dtype", "shape", "offset", "nbytes"}


def _decode_arrays(entries: list[Any], payload: bytearray) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    spans: list[tuple[int, int, str]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadSchema("each array entry must be an object")
        keys = set(entry)
        is_str = entry.get("dtype") == STR_DTYPE
        expected = _ENTRY_KEYS | ({"values"} if is_str else set())
        if keys != expected:
            raise BadSchema(f"array entry keys {sorted(keys)} differ from {sorted(expected)}")
        name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
        offset, nbytes = entry["offset"], entry["nbytes"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise BadSchema(f"bad array name {name!r:.60}")
        if name in arrays:
            raise BadSchema(f"array {name!r} appears twice")
        if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40 for n in shape)):
            raise BadSchema(f"array {name!r}: shape must be a list of at most {MAX_NDIM} "
                            "non-negative integers")
        for label, number in (("offset", offset), ("nbytes", nbytes)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise BadSchema(f"array {name!r}: {label} must be a non-negative integer")
        count = math.prod(shape)
        if is_str:
            values = entry["values"]
            if offset or nbytes:
                raise BadSchema(f"str array {name!r} must have offset 0 and nbytes 0")
            if not isinstance(values, list) or len(values) != count or not all(
                    isinstance(v, str) for v in values):
                raise BadSchema(f"str array {name!r}: 'values' must be {count} strings")
            arrays[name] = np.array(values, dtype=str).reshape(shape) if count else \
                np.zeros(shape, dtype="<U1")
            continue
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise BadSchema(f"array {name!r}: dtype {dtype_name!r:.20} is not allowed")
        if nbytes != count * dtype.itemsize:
            raise BadSchema(f"array {name!r}: nbytes {nbytes} does not match shape {shape} "
                            f"of {dtype_name}")
        if offset + nbytes > len(payload):
            raise BadSchema(f"array {name!r}: bytes {offset}..{offset + nbytes} lie outside the "
                            f"{len(payload)}-byte payload")
        spans.append((offset, offset + nbytes, name))
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count,
                                     offset=offset).reshape(shape)
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise BadSchema(f"arrays {first!r} and {second!r} overlap in the payload")
    return arrays


def recv_message(sock: socket.socket, limits: Limits = Limits(),
                 timeout: float | None = None) -> Message:
    """`read_message` from a socket with an optional timeout for this one message."""
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        return read_message(sock, limits)
    finally:
        sock.settimeout(previous)

