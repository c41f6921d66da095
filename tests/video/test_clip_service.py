"""Clips over the socket: the `clip` message runs the clip job on the server with per-frame
progress, returns one clip result, stops on cancel, and is refused for a bad clip."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from addon.protocol.client import Client, RemoteError
from addon.protocol.clip_result import check_clip
from server import service as service_mod
from tests.video.clip_data import ASTRONAUT_BOX, panned_clip, write_movie

TOKEN = "clip-token"


@pytest.fixture(scope="module")
def running(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from server.engine import ReconstructRequest, load_engine

    engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu", detector=None,
                         cache_dir=str(tmp_path_factory.mktemp("cache")))
    service = service_mod.InferenceService(engine, ReconstructRequest, TOKEN, handshake_timeout=5.0).start()
    frames, _ = panned_clip(parity_dir / "images", n_frames=6)
    movie = write_movie(tmp_path_factory.mktemp("movie") / "pan.mp4", frames)
    yield service, movie
    service.shutdown()


def _client(service) -> Client:
    client = Client("127.0.0.1", service.port, TOKEN, timeout=60)
    client.connect()
    return client


def test_a_clip_request_streams_progress_and_returns_a_clip_result(running) -> None:
    service, movie = running
    seen: list[str] = []
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), mode="body", boxes=[ASTRONAUT_BOX])
        arrays = client.wait_for(rid, "result", lambda f, m: seen.append(m), timeout=120).arrays
    clip = check_clip(arrays)
    assert clip["frames"].tolist() == list(range(6))
    assert set(clip["frame"].tolist()) | set(clip["failed_frames"].tolist()) == set(range(6))
    np.testing.assert_allclose(clip["bbox"][0], ASTRONAUT_BOX, atol=0.5)  # the first frame's box
    assert "frame 6/6" in " ".join(seen)


def test_the_rows_come_in_parts_and_join_to_the_clip_job_s_own_result(running, monkeypatch) -> None:
    """Streamed back: the rows leave the server in `clip_rows` parts (the per-frame ones while
    the clip runs, the skeleton states after the shape lock) and the client joins them into
    exactly what the clip job gives when it keeps the rows itself."""
    from addon.protocol import clip_rows
    from server.video import clip as clip_mod
    from server.video.source import open_clip

    service, movie = running
    monkeypatch.setattr(clip_mod, "ROWS_PER_PART", 2)
    parts: list[tuple[int, tuple[str, ...], int | None]] = []
    add = clip_rows.RowAssembler.add

    def spy(self, start, arrays, total=None):
        parts.append((start, tuple(sorted(arrays)), total))
        return add(self, start, arrays, total)

    monkeypatch.setattr(clip_rows.RowAssembler, "add", spy)
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), mode="body", boxes=[ASTRONAUT_BOX])
        streamed = check_clip(client.wait_for(rid, "result", timeout=120).arrays)
    n = len(streamed["frame"])
    early = [p for p in parts if "bbox" in p[1]]
    locked = [p for p in parts if "mhr_skel_state" in p[1]]
    assert n == 6 and [p[0] for p in early] == [0, 2, 4] and [p[2] for p in early] == [None] * 3
    assert [p[0] for p in locked] == [0, 2, 4] and {p[2] for p in locked} == {n}
    assert all("mhr_skel_state" not in p[1] for p in early)

    parts.clear()
    local = clip_mod.ClipJob(service.engine, open_clip(str(movie)),
                             clip_mod.ClipRequest(mode="body", boxes=np.asarray([ASTRONAUT_BOX], np.float32))).run()
    assert len(parts) > 3  # the job's own rows went through the same assembler
    assert streamed.keys() - {"rig_joint_names"} >= local.keys() - {"source_path"}
    for name, value in local.items():
        np.testing.assert_array_equal(streamed[name], value, err_msg=name)


def test_cancel_stops_a_running_clip(running) -> None:
    service, movie = running
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), boxes=[ASTRONAUT_BOX])
        first = threading.Event()

        def progress(fraction: float, message: str) -> None:
            if message.startswith("frame 1/"):
                if not first.is_set():
                    client.cancel(rid)
                first.set()

        with pytest.raises(RemoteError) as err:
            client.wait_for(rid, "result", progress, timeout=120)
    assert err.value.code == "cancelled"


@pytest.mark.parametrize("path,text", [("/nonexistent/walk.mp4", "not found"), (__file__, "not a movie")])
def test_a_bad_clip_is_refused_before_it_queues(running, path: str, text: str) -> None:
    service, _ = running
    with _client(service) as client:
        rid = client.send_clip(clip_path=path)
        with pytest.raises(RemoteError) as err:
            client.wait_for(rid, "result", timeout=30)
    assert text in err.value.message


# -- clips uploaded to the server (a studio's server on another machine) --------------------


@pytest.fixture
def uploads_dir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("sam3d_upload_")]


def test_a_server_that_reads_no_client_paths_takes_the_clip_as_an_upload(running, uploads_dir, monkeypatch) -> None:
    """A remote server refuses a clip path but takes its bytes, and gives the same rows as the
    clip read from its own disk; the client's path names the result; the copy is gone after."""
    from addon.protocol import client as client_mod
    from addon.protocol.client import JobRunner

    service, movie = running
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), mode="body", boxes=[ASTRONAUT_BOX])
        local = check_clip(client.wait_for(rid, "result", timeout=120).arrays)
    monkeypatch.setattr(service, "allow_image_path", False)
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), mode="body", boxes=[ASTRONAUT_BOX])
        with pytest.raises(RemoteError, match="send the clip's files"):
            client.wait_for(rid, "result", timeout=30)
    monkeypatch.setattr(client_mod, "UPLOAD_CHUNK", 4096)  # several clip_data parts
    runner = JobRunner(address=("127.0.0.1", service.port, TOKEN))
    job = runner.submit_clip(clip_path=str(movie), mode="body", boxes=[ASTRONAUT_BOX], upload=True)
    events = []
    while not events or events[-1].kind == "progress":
        events.append(runner.events.get(timeout=120))
    assert events[-1].kind == "result", events[-1]
    assert job.done.wait(10)
    assert any(e.message.startswith("uploading the clip") for e in events)
    uploaded = check_clip(events[-1].data)
    assert str(uploaded["source_path"]) == str(movie)
    for name, value in local.items():
        if name != "source_path":
            np.testing.assert_array_equal(uploaded[name], value, err_msg=name)
    assert _leftovers(uploads_dir) == []


def test_an_image_folder_uploads_as_its_images(running, parity_dir, uploads_dir, tmp_path) -> None:
    from PIL import Image

    service, _ = running
    frames, boxes = panned_clip(parity_dir / "images", n_frames=3)
    folder = tmp_path / "shots"
    folder.mkdir()
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"shot_{k + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(folder), mode="body", boxes=boxes[0], upload=True)
        assert client.send_clip_data(rid)
        clip = check_clip(client.wait_for(rid, "result", timeout=120).arrays)
    assert clip["frames"].tolist() == [0, 1, 2] and str(clip["source_path"]) == str(folder)
    assert _leftovers(uploads_dir) == []


def test_cancel_or_a_lost_connection_mid_upload_leaves_nothing_behind(running, uploads_dir) -> None:
    import time

    service, movie = running
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), upload=True)
        client._uploads.pop(rid)
        client._send("clip_data", rid, {"file": 0}, {"data": np.frombuffer(b"\0" * 100, np.uint8)})
        client.cancel(rid)
        with pytest.raises(RemoteError) as err:
            client.wait_for(rid, "result", timeout=30)
        assert err.value.code == "cancelled" and "uploading" in err.value.message
        # data still in flight after the cancel is dropped without an answer
        client._send("clip_data", rid, {"file": 0}, {"data": np.frombuffer(b"\0" * 10, np.uint8)})
        assert client.load()["protocol"] >= 2
    assert _leftovers(uploads_dir) == []
    client = _client(service)
    rid = client.send_clip(clip_path=str(movie), upload=True)
    client._send("clip_data", rid, {"file": 0}, {"data": np.frombuffer(b"\0" * 100, np.uint8)})
    client.load()  # the upload is under way on the server
    assert len(_leftovers(uploads_dir)) == 1
    client.close()
    deadline = time.monotonic() + 30
    while _leftovers(uploads_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(uploads_dir) == []


def test_bad_uploads_are_refused_and_the_connection_stays_usable(running, uploads_dir, monkeypatch) -> None:
    service, movie = running
    size = movie.stat().st_size
    monkeypatch.setattr(service, "max_upload_bytes", size - 1)
    with _client(service) as client:
        rid = client.send_clip(clip_path=str(movie), upload=True)
        with pytest.raises(RemoteError, match="more than this server takes"):
            client.wait_for(rid, "result", timeout=30)
        monkeypatch.setattr(service, "max_upload_bytes", 1 << 30)
        rid = client.next_id()
        client._send("clip", rid, {"clip_path": "x", "upload": {"files": ["../../etc/a.mp4"], "sizes": [5]}})
        with pytest.raises(RemoteError, match="not a plain file name"):
            client.wait_for(rid, "result", timeout=30)
        rid = client.next_id()
        client._send("clip_data", rid, {"file": 0}, {"data": np.zeros(4, np.uint8)})
        with pytest.raises(RemoteError, match="no clip upload under way"):
            client.wait_for(rid, "result", timeout=30)
        rid = client.next_id()
        client._send("clip", rid, {"clip_path": "x", "upload": {"files": ["a.mp4"], "sizes": [3]}})
        client._send("clip_data", rid, {"file": 0}, {"data": np.zeros(4, np.uint8)})
        with pytest.raises(RemoteError, match="longer than its announced 3 bytes"):
            client.wait_for(rid, "result", timeout=30)
        rid = client.next_id()
        client._send("clip", rid, {"clip_path": "x", "upload": {"files": ["a.mp4"], "sizes": [3]}})
        client._send("clip_data", rid, {"file": 0}, {"data": np.zeros(3, np.uint8)})
        with pytest.raises(RemoteError, match="cannot open the movie x") as err:  # complete, not a movie
            client.wait_for(rid, "result", timeout=30)
        assert "sam3d_upload_" not in err.value.message  # the client's name, not the server's copy
        assert client.load()["protocol"] >= 2
    assert _leftovers(uploads_dir) == []
