"""addon/protocol/wire.py: frame layout, round trips of every message type and dtype, and refusals."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.protocol import wire


def roundtrip(type, id, fields=None, arrays=None, limits=wire.Limits()) -> wire.Message:
    frame = wire.encode_message(type, id, fields, arrays)
    from_stream = wire.read_message(io.BytesIO(frame), limits)
    from_memory = wire.decode_frame(frame, limits)
    assert from_stream.type == from_memory.type == type
    assert from_stream.id == from_memory.id == id
    assert from_stream.fields == from_memory.fields
    assert from_stream.arrays.keys() == from_memory.arrays.keys()
    return from_stream


def build_frame(header: dict, payload: bytes = b"", header_len: int | None = None,
                payload_len: int | None = None, magic: bytes = wire.MAGIC) -> bytes:
    raw = json.dumps(header).encode()
    return (struct.pack("<4sIQ", magic, len(raw) if header_len is None else header_len,
                        len(payload) if payload_len is None else payload_len) + raw + payload)


def test_frame_layout_is_the_documented_one():
    frame = wire.encode_message("rig", 7, arrays={"a": np.array([1, 2], np.int32)})
    magic, header_len, payload_len = struct.unpack_from("<4sIQ", frame)
    assert magic == b"S3DB"
    header = json.loads(frame[16:16 + header_len])
    assert header["type"] == "rig" and header["id"] == 7
    assert header["arrays"] == [{"name": "a", "dtype": "i4", "shape": [2], "offset": 0,
                                 "nbytes": 8}]
    assert len(frame) == 16 + header_len + payload_len
    assert frame[16 + header_len:] == b"\x01\x00\x00\x00\x02\x00\x00\x00"


@pytest.mark.parametrize("dtype", ["?", "u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8",
                                   "<f2", "<f4", "<f8", ">i4", ">f8", ">u2"])
def test_every_dtype_round_trips_exactly(dtype):
    rng = np.random.default_rng(0)
    values = (rng.random((3, 5, 2)) * 100).astype(dtype)
    back = roundtrip("result", 1, arrays={"x": values, "tail": np.arange(3, dtype=np.int8)})
    got = back.arrays["x"]
    assert got.shape == (3, 5, 2)
    assert got.dtype == np.dtype(dtype).newbyteorder("<") or got.dtype == np.dtype(dtype)
    assert got.dtype.byteorder in "<=|"
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(back.arrays["tail"], [0, 1, 2])


def test_arrays_are_aligned_and_not_overlapping():
    arrays = {"a": np.ones(3, np.uint8), "b": np.ones((4, 4), np.float64),
              "c": np.ones(7, np.int16), "d": np.ones((0, 3), np.float32)}
    frame = wire.encode_message("result", 2, arrays=arrays)
    header_len = struct.unpack_from("<I", frame, 4)[0]
    entries = json.loads(frame[16:16 + header_len])["arrays"]
    for entry in entries:
        assert entry["offset"] % wire.ALIGNMENT == 0
    back = wire.decode_frame(frame)
    for name, value in arrays.items():
        np.testing.assert_array_equal(back.arrays[name], value)
        assert back.arrays[name].shape == value.shape


def test_unicode_string_arrays_travel_in_the_header():
    names = np.array(["root", "pelvis", "Ünïcødé ✓", ""])
    back = roundtrip("rig", 3, arrays={"joint_names": names, "mode": np.array("full"),
                                       "grid": np.array([["a", "bb"], ["ccc", "d"]]),
                                       "none": np.zeros((0,), dtype="<U1")})
    np.testing.assert_array_equal(back.arrays["joint_names"], names)
    assert back.arrays["mode"].shape == () and str(back.arrays["mode"]) == "full"
    assert back.arrays["grid"].shape == (2, 2) and back.arrays["grid"][1, 0] == "ccc"
    assert back.arrays["none"].shape == (0,)
    assert back.arrays["joint_names"].dtype.kind == "U"


def test_non_contiguous_and_zero_dim_numeric_arrays():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    back = roundtrip("result", 4, arrays={"t": base.T, "s": np.float64(2.5), "b": np.bool_(True)})
    np.testing.assert_array_equal(back.arrays["t"], base.T)
    assert back.arrays["s"].shape == () and float(back.arrays["s"]) == 2.5
    assert bool(back.arrays["b"]) is True


MESSAGES = [
    ("hello", 1, {"version": wire.PROTOCOL_VERSION, "token": "secret", "client": "test"}, {}),
    ("hello", 1, {"version": wire.PROTOCOL_VERSION, "info": {"device": "cpu", "port": 5}}, {}),
    ("load", 2, {}, {}),
    ("load", 2, {"info": {"model": "m"}}, {}),
    ("rig", 3, {}, {}),
    ("rig", 3, {}, {"joint_parents": np.array([-1, 0, 1], np.int32),
                    "joint_names": np.array(["a", "b", "c"])}),
    ("reconstruct", 4, {"mode": "body", "intrinsics": [1000.0, 1000.0, 320.0, 240.0],
                        "prompts": [[10.0, 20.0, 5], [1.5, 2.5, -1]], "exif_focal_35mm": 26.0},
     {"image": np.zeros((4, 6, 3), np.uint8), "boxes": np.array([[0, 0, 5, 3]], np.float32),
      "masks": np.ones((1, 4, 6), np.uint8)}),
    ("reconstruct", "job-a", {"mode": "full"}, {"image_bytes": np.frombuffer(b"\xff\xd8jpeg",
                                                                             np.uint8)}),
    ("reconstruct", 5, {"image_path": "/tmp/photo.jpg"}, {}),
    ("clip", 11, {"clip_path": "/tmp/walk.mp4", "mode": "body", "start": 0, "stop": 40, "step": 2,
                  "fps": 29.97, "max_people": 2}, {"boxes": np.array([[0, 0, 5, 3]], np.float32)}),
    ("clip", 12, {"clip_path": "walk.mp4", "upload": {"files": ["walk.mp4"], "sizes": [10]}}, {}),
    ("clip_data", 12, {"file": 0}, {"data": np.arange(10, dtype=np.uint8)}),
    ("clip", 13, {"clip_path": "walk.mp4", "batch_frames": 4},
     {"track_box_frames": np.array([0, 0, 3]), "track_boxes": np.array([[0, 0, 5, 5], [1, 1, 4, 9], [2, 2, 8, 8.5]])}),
    ("progress", 6, {"fraction": 0.25, "message": "backbone"}, {}),
    ("progress", 6, {"fraction": 1}, {}),
    ("clip_rows", 11, {"start": 0}, {"frame": np.arange(3, dtype=np.int32),
                                     "bbox": np.ones((3, 4), np.float32)}),
    ("clip_rows", 11, {"start": 3, "total": 5}, {"mhr_skel_state": np.ones((2, 127, 8), np.float32)}),
    ("result", 7, {"info": {"seconds": 1.5}}, {"pred_cam_t": np.ones((2, 3), np.float32),
                                              "mode": np.array("body")}),
    ("result", 11, {"info": {"seconds": 1.5}, "rows": 5}, {"track_ids": np.zeros(1, np.int32)}),
    ("error", 8, {"code": "bad_image", "message": "cannot read"}, {}),
    ("cancel", 9, {}, {}),
    ("shutdown", 10, {}, {}),
]


@pytest.mark.parametrize("type,id,fields,arrays", MESSAGES,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MESSAGES)])
def test_every_message_type_round_trips(type, id, fields, arrays):
    back = roundtrip(type, id, fields, arrays)
    assert back.fields == fields
    assert back.arrays.keys() == arrays.keys()
    for name, value in arrays.items():
        np.testing.assert_array_equal(back.arrays[name], value)
        assert back.arrays[name].dtype.kind == np.asarray(value).dtype.kind


def test_all_message_types_are_covered():
    assert {m[0] for m in MESSAGES} == set(wire.MESSAGE_TYPES)


@pytest.mark.parametrize("type,id,fields,arrays,needle", [
    ("hello", 1, {}, {}, "missing field 'version'"),
    ("hello", 1, {"version": "1"}, {}, "must be an integer"),
    ("hello", 1, {"version": 1, "extra": 2}, {}, "unexpected field"),
    ("hello", 1, {"version": 1}, {"a": np.zeros(1)}, "unexpected array"),
    ("progress", 1, {"fraction": 1.5}, {}, "[0, 1]"),
    ("error", 1, {"code": "x"}, {}, "missing field 'message'"),
    ("reconstruct", 1, {}, {}, "exactly one"),
    ("reconstruct", 1, {"image_path": "a"}, {"image": np.zeros((2, 2, 3), np.uint8)},
     "exactly one"),
    ("reconstruct", 1, {"mode": "hands"}, {"image": np.zeros((2, 2, 3), np.uint8)},
     "'body' or 'full'"),
    ("reconstruct", 1, {}, {"image": np.zeros((2, 2, 4), np.uint8)}, "expected (*, *, 3)"),
    ("reconstruct", 1, {}, {"image": np.zeros((2, 2, 3), np.float32)}, "dtype f4"),
    ("reconstruct", 1, {"intrinsics": [1, 2, 3]}, {"image": np.zeros((2, 2, 3), np.uint8)},
     "[fx, fy, cx, cy]"),
    ("reconstruct", 1, {"prompts": [[1, 2]]}, {"image": np.zeros((2, 2, 3), np.uint8)},
     "triples"),
    ("reconstruct", 1, {"fit_prompts": "yes"}, {"image": np.zeros((2, 2, 3), np.uint8)},
     "true or false"),
    ("reconstruct", 1, {}, {"image": np.zeros((2, 2, 3), np.uint8),
                            "masks": np.zeros((1, 2, 2), np.uint8)}, "one box per mask"),
    ("reconstruct", 1, {}, {"image": np.zeros((2, 2, 3), np.uint8),
                            "boxes": np.zeros((1, 4), np.float32),
                            "masks": np.zeros((1, 3, 2), np.uint8)}, "differs from the image"),
    ("cancel", -1, {}, {}, "message id"),
    ("cancel", True, {}, {}, "message id"),
    ("cancel", "x" * 200, {}, {}, "message id"),
    ("shutdown", 1, {"now": True}, {}, "unexpected field"),
    ("clip_rows", 1, {}, {"frame": np.zeros(2, np.int32)}, "missing field 'start'"),
    ("clip_rows", 1, {"start": -1}, {"frame": np.zeros(2, np.int32)}, "integer >= 0"),
    ("clip_rows", 1, {"start": 0}, {}, "same number of rows"),
    ("clip_rows", 1, {"start": 0}, {"frame": np.zeros(2, np.int32), "bbox": np.zeros((3, 4))},
     "same number of rows"),
    ("clip_rows", 1, {"start": 0}, {"frame": np.zeros(0, np.int32)}, "same number of rows"),
    ("clip_rows", 1, {"start": 4, "total": 5}, {"frame": np.zeros(2, np.int32)}, "past 'total'"),
    ("result", 1, {"rows": 1.5}, {}, "integer >= 0"),
    ("clip_data", 1, {"file": 0}, {}, "non-empty 'data'"),
    ("clip_data", 1, {"file": 0}, {"data": np.zeros(0, np.uint8)}, "non-empty 'data'"),
    ("clip_data", 1, {"file": 0}, {"data": np.zeros(3, np.float32)}, "dtype f4"),
    ("clip_data", 1, {}, {"data": np.zeros(3, np.uint8)}, "missing field 'file'"),
    ("clip", 1, {"clip_path": "a", "upload": []}, {}, "JSON object"),
    ("clip", 1, {"clip_path": "a"}, {"track_boxes": np.zeros((1, 4))}, "go together"),
    ("clip", 1, {"clip_path": "a"}, {"track_box_frames": np.zeros(2, np.int32),
                                     "track_boxes": np.array([[0, 0, 1, 1.0]])}, "one frame number per row"),
    ("clip", 1, {"clip_path": "a"}, {"track_box_frames": np.zeros(1, np.int32),
                                     "track_boxes": np.array([[5, 0, 1, 1.0]])}, "x1 < x2"),
    ("clip", 1, {"clip_path": "a"}, {"track_box_frames": np.array([-1]),
                                     "track_boxes": np.array([[0, 0, 1, 1.0]])}, "frame numbers >= 0"),
    ("clip", 1, {"clip_path": "a", "batch_frames": 0}, {}, "at least 1"),
])
def test_schema_violations_are_refused_when_encoding(type, id, fields, arrays, needle):
    with pytest.raises(wire.BadSchema) as info:
        wire.encode_message(type, id, fields, arrays)
    assert needle in str(info.value)


def test_unknown_type_and_unsendable_values_are_refused():
    with pytest.raises(wire.UnknownMessageType):
        wire.encode_message("eval", 1)
    with pytest.raises(wire.BadSchema, match="cannot be sent"):
        wire.encode_message("result", 1, arrays={"o": np.array([object()], dtype=object)})
    with pytest.raises(wire.BadSchema, match="cannot be sent"):
        wire.encode_message("result", 1, arrays={"c": np.zeros(2, np.complex64)})
    with pytest.raises(wire.BadSchema, match="not plain JSON"):
        wire.encode_message("result", 1, {"info": {"x": float("nan")}})
    with pytest.raises(wire.BadSchema, match="reserved"):
        wire.encode_message("result", 1, {"arrays": []})


def _valid_header(**changes):
    header = {"type": "result", "id": 1,
              "arrays": [{"name": "a", "dtype": "f4", "shape": [2], "offset": 0, "nbytes": 8}]}
    header.update(changes)
    return header


@pytest.mark.parametrize("header,payload,error,needle", [
    (_valid_header(type="exec"), bytes(8), wire.UnknownMessageType, "unknown message type"),
    (_valid_header(type=None), bytes(8), wire.BadSchema, "string 'type'"),
    ({"type": "result", "arrays": []}, b"", wire.BadSchema, "needs an 'id'"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [3], "offset": 0,
                            "nbytes": 12}]), bytes(8), wire.BadSchema, "outside"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [2], "offset": 0,
                            "nbytes": 4}]), bytes(8), wire.BadSchema, "does not match"),
    (_valid_header(arrays=[{"name": "a", "dtype": "O", "shape": [2], "offset": 0,
                            "nbytes": 8}]), bytes(8), wire.BadSchema, "not allowed"),
    (_valid_header(arrays=[{"name": "a", "dtype": ">f4", "shape": [2], "offset": 0,
                            "nbytes": 8}]), bytes(8), wire.BadSchema, "not allowed"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [-2], "offset": 0,
                            "nbytes": 8}]), bytes(8), wire.BadSchema, "shape"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [2], "offset": -1,
                            "nbytes": 8}]), bytes(8), wire.BadSchema, "offset"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [2], "offset": 0,
                            "nbytes": 8, "extra": 1}]), bytes(8), wire.BadSchema, "keys"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [2], "offset": 0, "nbytes": 8},
                           {"name": "b", "dtype": "u1", "shape": [4], "offset": 4,
                            "nbytes": 4}]), bytes(8), wire.BadSchema, "overlap"),
    (_valid_header(arrays=[{"name": "a", "dtype": "f4", "shape": [2], "offset": 0, "nbytes": 8},
                           {"name": "a", "dtype": "f4", "shape": [2], "offset": 0,
                            "nbytes": 8}]), bytes(8), wire.BadSchema, "twice"),
    (_valid_header(arrays=[{"name": "s", "dtype": "str", "shape": [2], "offset": 0,
                            "nbytes": 0, "values": ["a", 3]}]), b"", wire.BadSchema, "strings"),
    (_valid_header(arrays=[{"name": "s", "dtype": "str", "shape": [3], "offset": 0,
                            "nbytes": 0, "values": ["a"]}]), b"", wire.BadSchema, "strings"),
    (_valid_header(arrays={"a": 1}), b"", wire.BadSchema, "must be a list"),
    ([1, 2], b"", wire.BadSchema, "JSON object"),
])
def test_malformed_headers_are_refused_with_a_clear_error(header, payload, error, needle):
    frame = build_frame(header, payload)
    for decode in (lambda f: wire.read_message(io.BytesIO(f)), wire.decode_frame):
        with pytest.raises(error) as info:
            decode(frame)
        assert needle in str(info.value)
        assert info.value.frame_consumed


def test_bad_json_duplicate_keys_and_nan_are_refused():
    def frame_of(raw: bytes) -> bytes:
        return struct.pack("<4sIQ", b"S3DB", len(raw), 0) + raw

    for raw, needle in [(b"{not json", "not valid"), (b'\xff\xfe{}', "not valid"),
                        (b'{"type":"cancel","id":1,"id":2}', "duplicate"),
                        (b'{"type":"progress","id":1,"fraction":NaN}', "NaN"),
                        (b"[" * 100000 + b"]" * 100000, "not valid")]:
        with pytest.raises(wire.BadSchema, match=needle):
            wire.decode_frame(frame_of(raw))


def test_stream_stays_in_sync_after_a_schema_error():
    bad = build_frame(_valid_header(type="exec"), bytes(8))
    good = wire.encode_message("cancel", 5)
    stream = io.BytesIO(bad + good)
    with pytest.raises(wire.UnknownMessageType) as info:
        wire.read_message(stream)
    assert info.value.request_id == 1
    assert wire.read_message(stream).id == 5
    with pytest.raises(wire.ConnectionClosed):
        wire.read_message(stream)


def test_framing_errors():
    good = wire.encode_message("result", 1, arrays={"a": np.zeros(10, np.float32)})
    with pytest.raises(wire.BadMagic):
        wire.read_message(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(wire.ConnectionClosed):
        wire.read_message(io.BytesIO(b""))
    for cut in (1, 15, 16, 30, len(good) - 1):
        with pytest.raises(wire.TruncatedFrame):
            wire.read_message(io.BytesIO(good[:cut]))
        with pytest.raises(wire.TruncatedFrame):
            wire.decode_frame(good[:cut])
    with pytest.raises(wire.BadSchema, match="unexpected bytes"):
        wire.decode_frame(good + b"x")
    small = wire.Limits(max_header_bytes=1 << 20, max_payload_bytes=39)
    with pytest.raises(wire.FrameTooLarge, match="payload"):
        wire.read_message(io.BytesIO(good), small)
    with pytest.raises(wire.FrameTooLarge, match="header"):
        wire.read_message(io.BytesIO(good), wire.Limits(max_header_bytes=10))
    # A huge declared size is refused before anything is allocated or read.
    huge = struct.pack("<4sIQ", b"S3DB", 10, 1 << 62)
    with pytest.raises(wire.FrameTooLarge):
        wire.read_message(io.BytesIO(huge))
    with pytest.raises(wire.FrameTooLarge, match="arrays exceed"):
        wire.decode_frame(good, wire.Limits(max_arrays=0))
    with pytest.raises(wire.FrameTooLarge):
        wire.read_message(io.BytesIO(wire.encode_message("hello", 1, {"version": 1},
                                                         {})[:16] + b"x" * 100),
                          wire.Limits(max_header_bytes=5))


def test_handshake_limits_refuse_payloads():
    hello = wire.encode_message("hello", 1, {"version": 1, "token": "t"})
    assert wire.read_message(io.BytesIO(hello), wire.HANDSHAKE_LIMITS).type == "hello"
    with_payload = wire.encode_message("rig", 1, arrays={"a": np.zeros(1, np.uint8)})
    with pytest.raises(wire.FrameTooLarge):
        wire.read_message(io.BytesIO(with_payload), wire.HANDSHAKE_LIMITS)


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, the parser answers with a WireError (never another exception)

_SEEDS = [wire.encode_message(*m) for m in MESSAGES]


def _parse_everything(data: bytes) -> None:
    limits = wire.Limits(max_header_bytes=1 << 16, max_payload_bytes=1 << 16, max_arrays=16)
    stream = io.BytesIO(data)
    for _ in range(4):
        try:
            message = wire.read_message(stream, limits)
        except wire.WireError as exc:
            if not getattr(exc, "frame_consumed", False):
                break
            continue
        assert message.type in wire.MESSAGE_TYPES
        for array in message.arrays.values():
            assert isinstance(array, np.ndarray)
    try:
        wire.decode_frame(data, limits)
    except wire.WireError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SEEDS),
       edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 4000)),
       extra=st.binary(max_size=64))
def test_fuzz_mutated_frames_only_raise_wire_errors(seed, edits, cut, extra):
    data = bytearray(seed)
    for position, value in edits:
        if data:
            data[position % len(data)] = value
    if cut is not None:
        data = data[:cut]
    _parse_everything(bytes(data) + extra)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_wire_errors(data):
    _parse_everything(data)
    _parse_everything(b"S3DB" + data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(type=st.sampled_from(list(wire.MESSAGE_TYPES) + ["bogus"]),
       fields=st.dictionaries(st.sampled_from(["id", "arrays", "version", "token", "fraction",
                                               "code", "message", "mode", "prompts",
                                               "intrinsics", "image_path", "info", "x"]),
                              json_values, max_size=6))
def test_fuzz_structured_headers_only_raise_wire_errors(type, fields):
    header = {"type": type, **fields}
    try:
        raw = json.dumps(header).encode()
    except (ValueError, OverflowError):
        return
    _parse_everything(struct.pack("<4sIQ", b"S3DB", len(raw), 16) + raw + bytes(16))
