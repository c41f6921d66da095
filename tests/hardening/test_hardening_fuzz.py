"""Property-based fuzzing of the frame parser and the message validator (addon/protocol/wire.py).

Whatever the bytes, the parser either returns a valid message or raises a `wire.WireError`
subclass: never another exception, never a hang, and a decoded message always re-encodes to a
frame that decodes to the same message. Derandomised (the same cases every run) and bounded.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.protocol import wire

_BASE = settings(derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(_BASE, max_examples=examples)


SMALL = wire.Limits(max_header_bytes=1 << 14, max_payload_bytes=1 << 14, max_arrays=16)

# Integers beyond a float's range are valid JSON and must not break the number checks.
HUGE = 10**400
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.sampled_from([HUGE, -HUGE, 2**63, 2**64])
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
numbers = (st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([HUGE, -HUGE, 0.5, 1e308]))
# Values shaped like the schemas' fields (numbers, [fx, fy, cx, cy], [[x, y, label]]), so the
# generator reaches the number checks behind the shape checks.
shaped_values = (numbers | st.lists(numbers, min_size=4, max_size=4)
                 | st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=1, max_size=2))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
dtype_names = st.sampled_from([*wire.DTYPES, "str", "O", "<f8", "V8", "c16", "", "u16"])
field_names = st.sampled_from(["mode", "image_path", "intrinsics", "prompts", "exif_focal_35mm", "fit_prompts",
                               "version", "token", "info", "client", "fraction", "message",
                               "code", "bogus"])
message_types = st.sampled_from([*wire.MESSAGE_TYPES, "exec", "", "RESULT"])


def check_decoded(message: wire.Message) -> None:
    """A decoded message is valid and survives a re-encode unchanged."""
    wire.validate_message(message)
    again = wire.decode_frame(wire.encode_message(message.type, message.id, message.fields,
                                                  message.arrays))
    assert (again.type, again.id, again.fields) == (message.type, message.id, message.fields)
    assert again.arrays.keys() == message.arrays.keys()
    for name, array in message.arrays.items():
        assert again.arrays[name].dtype == array.dtype
        assert np.array_equal(again.arrays[name], array, equal_nan=array.dtype.kind == "f")


def parse_both_ways(frame: bytes, limits: wire.Limits = SMALL) -> None:
    for parse in (lambda: wire.decode_frame(frame, limits),
                  lambda: wire.read_message(io.BytesIO(frame), limits)):
        try:
            message = parse()
        except wire.WireError:
            continue
        check_decoded(message)


def pack(header: bytes, payload: bytes) -> bytes:
    return wire.PREFIX.pack(wire.MAGIC, len(header), len(payload)) + header + payload


@st.composite
def array_entries(draw) -> list:
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(st.integers(0, 5) | st.sampled_from([-1, 2**40, 2**62, True, 1.5]),
                              max_size=4))
        entry = {"name": draw(st.sampled_from(["image", "image_bytes", "boxes", "masks", "x",
                                               ""])),
                 "dtype": draw(dtype_names), "shape": shape,
                 "offset": draw(st.integers(0, 80) | st.sampled_from([-8, 2**64])),
                 "nbytes": draw(st.integers(0, 120) | st.sampled_from([-1, 2**63]))}
        if draw(st.booleans()):
            entry["values"] = draw(st.lists(st.text(max_size=3) | st.integers(), max_size=6))
        if draw(st.integers(0, 9)) == 0:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        entries.append(entry)
    return entries


@st.composite
def headers(draw) -> dict:
    header = {"type": draw(message_types),
              "id": draw(st.integers(-2, 2**64) | st.text(max_size=130) | json_scalars),
              "arrays": draw(array_entries() | json_values)}
    schema = wire.SCHEMAS.get(header["type"])
    own = sorted({*schema.required, *schema.optional}) if schema else []
    names = st.sampled_from(own) if own and draw(st.integers(0, 3)) else field_names
    for name in draw(st.lists(names, max_size=4, unique=True)):
        header[name] = draw(json_values | st.sampled_from(["body", "full", [1.0, 1.0, 0.0, 0.0],
                                                           [[1, 2, 3]], 0.5, 1])
                            | shaped_values)
    for key in draw(st.lists(st.sampled_from(["type", "id", "arrays"]), max_size=1)):
        header.pop(key)
    return header


@fuzz(600)
@given(st.binary(max_size=256))
def test_random_bytes_never_crash_the_parser(data):
    parse_both_ways(data)
    parse_both_ways(wire.MAGIC + data)


@fuzz(1500)
@given(headers(), st.binary(max_size=160))
def test_structured_headers_are_accepted_only_when_valid(header, payload):
    raw = json.dumps(header).encode()
    parse_both_ways(pack(raw, payload))


@st.composite
def valid_frames(draw) -> bytes:
    kind = draw(st.sampled_from(["reconstruct", "result", "progress", "error", "hello"]))
    fields: dict = {}
    arrays: dict = {}
    if kind == "reconstruct":
        h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        arrays["image"] = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
        n = draw(st.integers(0, 2))
        if n:
            arrays["boxes"] = np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1))
        fields["mode"] = draw(st.sampled_from(["body", "full"]))
    elif kind == "result":
        for i in range(draw(st.integers(0, 3))):
            dtype = draw(st.sampled_from(sorted(wire.DTYPES)))
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
            arrays[f"a{i}"] = np.zeros(shape, wire.DTYPES[dtype])
        arrays["names"] = np.array(["x", "é"])
    elif kind == "progress":
        fields = {"fraction": draw(st.floats(0, 1)), "message": draw(st.text(max_size=10))}
    elif kind == "error":
        fields = {"code": "x", "message": draw(st.text(max_size=10))}
    else:
        fields = {"version": 1, "token": draw(st.text(max_size=10))}
    return wire.encode_message(kind, draw(st.integers(0, 2**63 - 1)), fields, arrays)


@fuzz(1500)
@given(valid_frames(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                min_size=1, max_size=4),
       st.sampled_from(["flip", "truncate", "insert", "delete"]))
def test_mutated_valid_frames_never_crash_the_parser(frame, edits, how):
    data = bytearray(frame)
    for position, value in edits:
        position %= len(data) + (how == "insert")
        if how == "flip":
            data[position % len(data)] ^= value or 1
        elif how == "truncate":
            data = data[:position]
        elif how == "insert":
            data[position:position] = bytes([value])
        elif data:
            del data[position % len(data)]
        if not data:
            break
    parse_both_ways(bytes(data))


@fuzz(600)
@given(st.lists(valid_frames() | st.binary(max_size=40), min_size=1, max_size=6))
def test_a_stream_of_good_and_bad_frames_always_terminates(chunks):
    # The server's read loop: keep reading after a frame-consuming BadSchema, stop on anything
    # that loses the framing. Every call consumes input, so this loop is bounded.
    stream = io.BytesIO(b"".join(chunks))
    total = len(stream.getbuffer())
    for _ in range(total + 2):
        before = stream.tell()
        try:
            check_decoded(wire.read_message(stream, SMALL))
        except wire.BadSchema:
            assert stream.tell() > before
            continue
        except wire.WireError:
            break
    else:
        raise AssertionError("the reader did not make progress")


@fuzz(1000)
@given(message_types, st.data(),
       st.dictionaries(st.sampled_from(["image", "image_bytes", "boxes", "masks", "x"]),
                       st.sampled_from(["u1", "bool", "f4", "i8", "O", "c8", "U3"]), max_size=3),
       st.integers(0, 3))
def test_the_validator_raises_only_bad_schema(kind, data, array_dtypes, size):
    schema = wire.SCHEMAS.get(kind)
    own = sorted({*schema.required, *schema.optional}) if schema else []
    # Mostly the type's own fields (so the value checks run), sometimes any name.
    names = st.sampled_from(own) if own and data.draw(st.integers(0, 3)) else field_names
    fields = data.draw(st.dictionaries(names, shaped_values | json_values, max_size=4))
    arrays = {}
    for name, dtype in array_dtypes.items():
        if dtype == "O":
            arrays[name] = np.array([object()] * size, dtype=object)
        else:
            arrays[name] = np.zeros((size,) * (3 if name in ("image", "masks") else 2), dtype)
    try:
        wire.validate_message(wire.Message(kind, 1, fields, arrays))
    except wire.BadSchema:
        return
    assert kind in wire.SCHEMAS  # accepted: the schema knows the type
    if kind == "reconstruct":
        assert sum(k in arrays for k in ("image", "image_bytes")) + ("image_path" in fields) == 1
    for value in fields.values():
        json.dumps(value, allow_nan=False)
        assert not (isinstance(value, float) and not math.isfinite(value))
