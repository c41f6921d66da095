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
