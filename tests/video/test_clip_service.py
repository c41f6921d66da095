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
