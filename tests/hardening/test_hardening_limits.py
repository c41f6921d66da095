"""Input limits: frame sizes, message schemas, image pixel counts, server-side paths."""
from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from addon.protocol import wire
from addon.protocol.client import Client, RemoteError
from tests.hardening.hardening_support import (TOKEN, assert_serves, image, raw_connect,
                                               raw_hello, start_service)


@pytest.fixture
def service():
    running = start_service(max_pixels=1000, limits=wire.Limits(max_header_bytes=4096,
                                                                max_payload_bytes=1 << 20))
    yield running
    running.shutdown()


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixel_limit_for_raw_and_encoded_images(service):
    with Client("127.0.0.1", service.port, TOKEN, timeout=10) as client:
        with pytest.raises(RemoteError, match="more than the limit of 1,000") as raw:
            client.reconstruct(image=np.zeros((40, 40, 3), np.uint8), timeout=10)
        assert raw.value.code == "bad_input"
        # A decompression bomb in miniature: a few hundred bytes that would decode to 250,000
        # pixels. Refused from the header, before decoding.
        bomb = png_bytes(500, 500)
        assert len(bomb) < 2000
        with pytest.raises(RemoteError, match="limit of 1,000") as encoded:
            client.reconstruct(image_bytes=bomb, timeout=10)
        assert encoded.value.code == "bad_image"
        result = client.reconstruct(image_bytes=png_bytes(20, 10), timeout=10)
        assert tuple(result["image_size"]) == (20, 10)


def test_image_paths_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(8, 8))
    for allowed in (False, True):
        running = start_service(allow_image_path=allowed)
        try:
            with Client("127.0.0.1", running.port, TOKEN, timeout=10) as client:
                if allowed:
                    assert tuple(client.reconstruct(image_path=path)["image_size"]) == (8, 8)
                else:
                    with pytest.raises(RemoteError, match="image_path") as info:
                        client.reconstruct(image_path=path, timeout=10)
                    assert info.value.code == "bad_input"
        finally:
            running.shutdown()
    running = start_service(host="127.0.0.1")
    running.shutdown()
    assert running.allow_image_path  # loopback: allowed by default


def frame(header: dict, payload: bytes = b"") -> bytes:
    raw = wire.json.dumps(header).encode()
    return wire.PREFIX.pack(wire.MAGIC, len(raw), len(payload)) + raw + payload


@pytest.mark.parametrize("bad, code", [
    ({"type": "exec", "id": 2, "arrays": []}, "unknown_type"),
    ({"type": "reconstruct", "id": 2, "arrays": [], "image_path": "a", "code": "print(1)"},
     "bad_schema"),
    ({"type": "reconstruct", "id": 2, "arrays": [{"name": "image", "dtype": "O", "shape": [1],
                                                  "offset": 0, "nbytes": 8}]}, "bad_schema"),
    ({"type": "reconstruct", "id": 2, "arrays": [], "mode": {"__reduce__": "os.system"}},
     "bad_schema"),
    ({"type": "rig", "id": 1e400}, "bad_schema"),
    ({"type": "reconstruct", "id": 2, "arrays": [], "image_path": "a",
      "prompts": [[1, 2, 10**400]]}, "bad_schema"),
], ids=["unknown-type", "extra-field", "object-dtype", "object-field", "float-id", "huge-int"])
def test_bad_messages_get_an_error_and_the_connection_stays_usable(service, bad, code):
    with raw_connect(service.port) as sock:
        raw_hello(sock)
        payload = bytes(8) if bad.get("arrays") else b""
        sock.sendall(frame(bad, payload))
        reply = wire.recv_message(sock, timeout=10)
        assert reply.type == "error" and reply.fields["code"] == code, reply
        wire.send_message(sock, "load", 3)
        assert wire.recv_message(sock, timeout=10).type == "load"


@pytest.mark.parametrize("prefix, code", [
    (wire.PREFIX.pack(wire.MAGIC, 4097, 0), "too_large"),        # header over the limit
    (wire.PREFIX.pack(wire.MAGIC, 10, (1 << 20) + 1), "too_large"),  # payload over the limit
    (b"PKL\x80" + bytes(12), "bad_magic"),                     # not our protocol at all
])
def test_oversized_or_foreign_frames_close_the_connection_only(service, prefix, code):
    with raw_connect(service.port) as sock:
        raw_hello(sock)
        sock.sendall(prefix)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.fields["code"] == code
        with pytest.raises((wire.ConnectionClosed, ConnectionResetError)):
            wire.recv_message(sock, timeout=10)
    assert_serves(service.port)


def test_a_claimed_payload_is_not_allocated_before_it_arrives():
    # 512 MiB announced, 1 KiB sent: the reader's memory follows what arrived.
    claimed = 512 << 20
    stream = io.BytesIO(wire.PREFIX.pack(wire.MAGIC, 2, claimed) + b"{}" + bytes(1024))
    tracemalloc.start()
    try:
        with pytest.raises(wire.TruncatedFrame):
            wire.read_message(stream, wire.Limits(max_payload_bytes=1 << 30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_a_payload_larger_than_the_first_buffer_arrives_intact():
    big = np.arange((40 << 20) // 4, dtype=np.float32)  # 40 MiB: grown twice
    data = wire.encode_message("result", 1, {}, {"big": big})
    message = wire.read_message(io.BytesIO(data))
    assert np.array_equal(message.arrays["big"], big)
    assert struct.unpack("<Q", data[8:16])[0] >= big.nbytes
