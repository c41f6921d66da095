"""server/service.py in-process with the test-double engine: auth, requests, faults, cancel."""
from __future__ import annotations

import io
import socket
import threading

import numpy as np
import pytest

from addon.protocol import wire
from addon.protocol.client import Client, ConnectionLost, RemoteError
from server import service as service_mod
from tests.wire import fake_engine

TOKEN = "test-token-123"


@pytest.fixture
def engine():
    return fake_engine.FakeEngine(vertices=32)


@pytest.fixture
def service(engine):
    running = service_mod.InferenceService(engine, fake_engine.ReconstructRequest, TOKEN,
                                           queue_size=2, handshake_timeout=5.0).start()
    yield running
    running.shutdown()


def raw_connect(service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    return sock


def hello(sock, token=TOKEN, rid=1) -> wire.Message:
    wire.send_message(sock, "hello", rid, {"version": wire.PROTOCOL_VERSION, "token": token})
    return wire.recv_message(sock, timeout=10)


def connected(service) -> Client:
    client = Client("127.0.0.1", service.port, TOKEN, timeout=10)
    client.connect()
    return client


def image(width=8, height=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def assert_still_serving(service):
    with connected(service) as client:
        assert client.load()["protocol"] == wire.PROTOCOL_VERSION


def assert_closed(sock):
    with pytest.raises((wire.ConnectionClosed, ConnectionResetError)):
        wire.recv_message(sock, timeout=10)


# -- handshake ---------------------------------------------------------------------------------

def test_hello_with_token_returns_server_info(service):
    with raw_connect(service) as sock:
        reply = hello(sock)
    assert reply.type == "hello" and reply.id == 1
    assert reply.fields["version"] == wire.PROTOCOL_VERSION
    info = reply.fields["info"]
    assert info["model"] == "fake/test-double" and info["port"] == service.port


@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_refused_and_the_server_keeps_serving(service, token):
    with raw_connect(service) as sock:
        fields = {"version": wire.PROTOCOL_VERSION}
        if token is not None:
            fields["token"] = token
        wire.send_message(sock, "hello", 1, fields)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.type == "error" and reply.fields["code"] == service_mod.AUTH
        assert_closed(sock)
    assert_still_serving(service)


def test_requests_before_hello_are_refused(service):
    with raw_connect(service) as sock:
        wire.send_message(sock, "rig", 4)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.fields["code"] == service_mod.AUTH and reply.id == 4
        assert_closed(sock)
    with raw_connect(service) as sock:  # a big frame before hello is refused unread
        wire.send_message(sock, "reconstruct", 5, {}, {"image": image(64, 64)})
        reply = wire.recv_message(sock, timeout=10)
        assert reply.fields["code"] == service_mod.AUTH
    assert_still_serving(service)


def test_wrong_protocol_version_is_refused(service):
    with raw_connect(service) as sock:
        wire.send_message(sock, "hello", 1, {"version": wire.PROTOCOL_VERSION + 1,
                                             "token": TOKEN})
        reply = wire.recv_message(sock, timeout=10)
        assert reply.fields["code"] == service_mod.VERSION
        assert_closed(sock)


def test_silent_client_is_dropped_after_the_handshake_timeout(engine):
    running = service_mod.InferenceService(engine, fake_engine.ReconstructRequest, TOKEN,
                                           handshake_timeout=0.2).start()
    try:
        with raw_connect(running) as sock:
            reply = wire.recv_message(sock, timeout=10)
            assert reply.fields["code"] == service_mod.AUTH
            assert "no hello" in reply.fields["message"]
            assert_closed(sock)
        assert_still_serving(running)
    finally:
        running.shutdown()


# -- garbage -----------------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"S3DB" + b"\xff" * 12,           # absurd sizes
    b"S3DB\x05\x00\x00\x00\x00\x00\x00\x00{\"ty",  # truncated, then the peer hangs up
    bytes(range(256)) * 4,
])
def test_garbage_before_and_after_hello_never_stops_the_server(service, garbage):
    with raw_connect(service) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = wire.recv_message(sock, timeout=10)
            assert reply.type == "error"
        except (wire.ConnectionClosed, ConnectionResetError):
            pass
    with raw_connect(service) as sock:
        assert hello(sock).type == "hello"
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = wire.recv_message(sock, timeout=10)
            assert reply.type == "error"
            assert reply.fields["code"] in ("bad_magic", "too_large", "truncated")
        except (wire.ConnectionClosed, ConnectionResetError):
            pass
    assert_still_serving(service)


def test_schema_error_gets_a_reply_and_the_connection_stays_usable(service):
    with raw_connect(service) as sock:
        hello(sock)
        header = b'{"type":"format_disk","id":7,"arrays":[]}'
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, len(header), 0) + header)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.type == "error" and reply.id == 7
        assert reply.fields["code"] == "unknown_type"
        header = b'{"type":"reconstruct","id":8,"arrays":[]}'
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, len(header), 0) + header)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.id == 8 and "exactly one" in reply.fields["message"]
        wire.send_message(sock, "load", 9)
        assert wire.recv_message(sock, timeout=10).type == "load"


def test_client_cannot_send_server_messages(service):
    with raw_connect(service) as sock:
        hello(sock)
        wire.send_message(sock, "result", 3)
        reply = wire.recv_message(sock, timeout=10)
        assert reply.type == "error" and reply.id == 3 and reply.fields["code"] == "bad_input"


# -- requests ----------------------------------------------------------------------------------

def test_reconstruct_with_raw_pixels_boxes_masks_and_prompts(service, engine):
    picture = image(10, 7)
    boxes = np.array([[0, 0, 5, 5], [2, 1, 9, 6]], np.float32)
    masks = [np.eye(7, 10, dtype=np.uint8), np.ones((7, 10), np.uint8)]
    seen = []
    with connected(service) as client:
        result = client.reconstruct(image=picture, boxes=boxes, masks=masks, mode="body",
                                    intrinsics=(500, 510, 5, 3.5), prompts=[(1, 2, 3)],
                                    progress=lambda f, m: seen.append((f, m)))
    assert int(result["image_sum"]) == int(picture.sum())
    np.testing.assert_array_equal(result["bbox"], boxes)
    np.testing.assert_array_equal(result["mask"][..., 0], np.stack(masks))
    np.testing.assert_allclose(result["cam_int"], [[500, 0, 5], [0, 510, 3.5], [0, 0, 1]])
    assert str(result["mode"]) == "body" and str(result["intrinsics_source"]) == "user"
    assert result["pred_vertices"].shape == (2, 32, 3) and "lhand_bbox" not in result
    np.testing.assert_array_equal(result["prompts_seen"], [[1, 2, 3]])
    assert [f for f, _ in seen] == [0.1, 0.9]
    assert engine.vertices == 32


def test_reconstruct_from_encoded_bytes_and_from_a_server_path(service, tmp_path):
    pytest.importorskip("server.imageio")
    from PIL import Image

    picture = image(12, 9, seed=3)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(buffer.getvalue())
    with connected(service) as client:
        from_bytes = client.reconstruct(image_bytes=buffer.getvalue(), mode="full")
        from_path = client.reconstruct(image_path=path)
        with pytest.raises(RemoteError) as info:
            client.reconstruct(image_bytes=b"not an image at all")
        assert info.value.code == "bad_image"
        with pytest.raises(RemoteError) as info:
            client.reconstruct(image_path=tmp_path / "missing.png")
        assert info.value.code == "bad_image"
        with pytest.raises(RemoteError) as info:  # checked after decoding on the server
            client.reconstruct(image_bytes=buffer.getvalue(), boxes=[[0, 0, 2, 2]],
                               masks=[np.zeros((3, 3), np.uint8)])
        assert info.value.code == "bad_input" and "masks are 3x3" in info.value.message
    for result in (from_bytes, from_path):
        assert int(result["image_sum"]) == int(picture.sum())
        np.testing.assert_array_equal(result["image_size"], [12, 9])
        assert "lhand_bbox" in result


def test_rig_is_sent_with_string_names(service):
    with connected(service) as client:
        rig = client.rig()
        again = client.rig()
    assert rig["joint_names"].dtype.kind == "U" and rig["joint_names"][5] == "joint_005"
    assert rig["joint_parents"].dtype == np.int32 and rig["joint_parents"][0] == -1
    assert rig["skin_weights"].shape == (32, 8)
    np.testing.assert_array_equal(rig["faces"], again["faces"])


def test_engine_and_input_errors_become_error_replies(service):
    with connected(service) as client:
        with pytest.raises(RemoteError) as info:
            client.reconstruct(image=image(fake_engine.FAIL_WIDTH, 4))
        assert info.value.code == "internal" and "fake engine failure" in info.value.message
        with pytest.raises(RemoteError) as info:
            client.reconstruct(image=image(), boxes=np.zeros((0, 4), np.float32))
        assert info.value.code == "no_person"
        with pytest.raises(RemoteError) as info:
            client.reconstruct(image=image(), boxes=[[5, 5, 1, 1]])
        assert info.value.code == "bad_input" and "x2 > x1" in info.value.message
        with pytest.raises(wire.BadSchema, match="differs from the image"):  # refused locally
            client.reconstruct(image=image(8, 6), boxes=[[0, 0, 1, 1]],
                               masks=[np.zeros((5, 5), np.uint8)])
        # the connection is still fine afterwards
        assert int(client.reconstruct(image=image())["image_sum"]) == int(image().sum())


def test_duplicate_request_id_is_refused(service):
    with raw_connect(service) as sock:
        hello(sock)
        hang = image(fake_engine.HANG_WIDTH, 3)
        wire.send_message(sock, "reconstruct", 5, {}, {"image": hang})
        assert wire.recv_message(sock, timeout=10).type == "progress"
        wire.send_message(sock, "reconstruct", 5, {}, {"image": image()})
        while True:
            reply = wire.recv_message(sock, timeout=10)
            if reply.type == "error":
                break
        assert reply.fields["code"] == service_mod.DUPLICATE_ID
        wire.send_message(sock, "cancel", 5)
        while True:
            reply = wire.recv_message(sock, timeout=10)
            if reply.type != "progress":
                break
        assert reply.fields["code"] == "cancelled"


# -- cancel, disconnect, busy ------------------------------------------------------------------

def _wait_for_progress(sock, rid):
    while True:
        message = wire.recv_message(sock, timeout=10)
        if message.type == "progress" and message.id == rid:
            return


def test_cancel_running_request_then_serve_the_next(service):
    with connected(service) as client:
        rid = client.next_id()
        started = threading.Event()
        errors = []

        def run():
            try:
                client.reconstruct(image=image(fake_engine.HANG_WIDTH, 3), request_id=rid,
                                   progress=lambda f, m: started.set())
            except RemoteError as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(10)
        client.cancel(rid)
        thread.join(20)
        assert not thread.is_alive()
        assert errors and errors[0].code == "cancelled"
        assert int(client.reconstruct(image=image())["image_sum"]) == int(image().sum())


def test_cancel_of_a_queued_request_answers_at_once(service):
    with raw_connect(service) as sock:
        hello(sock)
        wire.send_message(sock, "reconstruct", 1, {}, {"image": image(fake_engine.HANG_WIDTH, 3)})
        _wait_for_progress(sock, 1)
        wire.send_message(sock, "reconstruct", 2, {}, {"image": image()})
        wire.send_message(sock, "cancel", 2)
        while True:  # the queued one is answered while the first still runs
            reply = wire.recv_message(sock, timeout=10)
            if reply.type == "error":
                break
        assert reply.id == 2 and reply.fields["code"] == "cancelled"
        wire.send_message(sock, "cancel", 1)
        while True:
            reply = wire.recv_message(sock, timeout=10)
            if reply.type == "error":
                break
        assert reply.id == 1 and reply.fields["code"] == "cancelled"
        wire.send_message(sock, "cancel", 99)  # unknown ids are ignored
        wire.send_message(sock, "load", 3)
        assert wire.recv_message(sock, timeout=10).type == "load"


def test_client_disconnect_mid_job_drops_its_job(service):
    sock = raw_connect(service)
    hello(sock)
    wire.send_message(sock, "reconstruct", 1, {}, {"image": image(fake_engine.HANG_WIDTH, 3)})
    _wait_for_progress(sock, 1)
    sock.close()
    # The fake engine only stops hanging when cancelled, so this can only finish if the
    # disconnect cancelled the first job (the client's 30 s timeout fails the test otherwise).
    with Client("127.0.0.1", service.port, TOKEN, timeout=30) as client:
        result = client.reconstruct(image=image(), timeout=30)
    assert int(result["image_sum"]) == int(image().sum())


def test_full_queue_answers_busy(service):
    with raw_connect(service) as sock:
        hello(sock)
        wire.send_message(sock, "reconstruct", 1, {}, {"image": image(fake_engine.HANG_WIDTH, 3)})
        _wait_for_progress(sock, 1)
        for rid in (2, 3, 4):  # queue_size=2: the third waiting request is refused
            wire.send_message(sock, "reconstruct", rid, {}, {"image": image()})
        while True:
            reply = wire.recv_message(sock, timeout=10)
            if reply.type == "error":
                break
        assert reply.id == 4 and reply.fields["code"] == service_mod.BUSY


def test_shutdown_message_stops_the_service(engine):
    running = service_mod.InferenceService(engine, fake_engine.ReconstructRequest, TOKEN).start()
    with connected(running) as client:
        client.shutdown()
    assert running.wait(10)
    with pytest.raises(ConnectionLost):
        Client("127.0.0.1", running.port, TOKEN, timeout=2).connect()


def test_service_refuses_an_empty_token(engine):
    with pytest.raises(ValueError):
        service_mod.InferenceService(engine, fake_engine.ReconstructRequest, "")


def test_parent_watch_fires_once_when_the_parent_pid_changes(monkeypatch):
    import os

    calls = []
    gone = threading.Event()
    real_parent = os.getppid()
    monkeypatch.setattr(os, "getppid", lambda: real_parent)
    service_mod.watch_parent(lambda: (calls.append(1), gone.set()), use_stdin=False,
                             poll_seconds=0.01)
    monkeypatch.setattr(os, "getppid", lambda: 1 if real_parent != 1 else 2)
    assert gone.wait(10)
    threading.Event().wait(0.05)
    assert calls == [1]


def test_client_times_out_on_a_silent_peer():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = Client("127.0.0.1", port, TOKEN, timeout=0.3)
        with pytest.raises(ConnectionLost, match="no answer"):
            client.connect()
        client.close()
