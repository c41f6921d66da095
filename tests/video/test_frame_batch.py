"""A clip's frames share one model pass (Engine.reconstruct_frames, body mode) when their boxes
are known up front: the same result as one frame at a time, but for float rounding; a bad frame
fails alone; the clip job batches, reports every frame and stops on cancel between batches."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from server.errors import BAD_INPUT, CANCELLED, ServerError
from server.video.bench_clip import MemoryClip
from server.video.clip import ClipJob, ClipRequest
from tests.video.clip_data import panned_clip

# Largest |batched - one frame at a time| measured over ATEN_CPU_CAPABILITY default/avx2 and 1/2
# threads: 1.1e-4 px, 1.1e-6 m, 1.1e-4 cm, 1.5e-5 (cm, quaternion). Bounds at ~50x that.
TOLERANCE = {"pred_keypoints_2d": 5e-3, "pred_vertices": 5e-5, "mhr_vertices": 5e-3,
             "mhr_skel_state": 1e-3, "mhr_rest_skel_state": 1e-3, "mhr_rest_vertices": 1e-3}
OTHER_FLOATS = 1e-4


@contextmanager
def _counting_passes(engine):
    """Record the number of frames of every batched model pass."""
    calls: list[int] = []
    real = engine.run_prepared

    def counting(frames, cancelled=lambda: False):
        calls.append(len(frames.requests))
        return real(frames, cancelled)

    engine.run_prepared = counting
    try:
        yield calls
    finally:
        del engine.run_prepared


@pytest.fixture(scope="module")
def engine(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from server.engine import load_engine

    return load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                       detector=None, cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def clip(parity_dir: Path):
    return panned_clip(parity_dir / "images", n_frames=5)


def test_batched_frames_equal_one_frame_at_a_time(engine, clip) -> None:
    from server.engine import ReconstructRequest

    frames, boxes = clip
    requests = [ReconstructRequest(image=f, boxes=b, mode="body") for f, b in zip(frames, boxes)]
    requests[2] = ReconstructRequest(image=frames[2], boxes=np.array([[10.0, 10.0, 5.0, 5.0]]), mode="body")
    batched = engine.reconstruct_frames(requests)
    assert isinstance(batched[2], ServerError) and batched[2].code == BAD_INPUT
    for k in (0, 1, 3, 4):
        one = engine.reconstruct(requests[k])
        assert set(batched[k]) == set(one)
        for key, want in one.items():
            got, want = np.asarray(batched[k][key]), np.asarray(want)
            if want.dtype.kind == "f":
                assert np.abs(got - want).max() <= TOLERANCE.get(key, OTHER_FLOATS), key
            else:
                assert np.array_equal(got, want), key


def test_the_clip_job_batches_and_gets_the_same_clip(engine, clip) -> None:
    frames, boxes = clip
    seen: list[str] = []
    with _counting_passes(engine) as calls:
        batched = ClipJob(engine, MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)),
                                                                  batch_frames=2),
                          progress=lambda f, m: seen.append(m)).run()
    single = ClipJob(engine, MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)),
                                                             batch_frames=1)).run()
    assert calls == [2, 2, 1]
    lines = [m.split(" (")[0] for m in seen if m.startswith("frame ")]
    assert lines == [f"frame {k}/5" for k in range(6)]  # every frame reported, in order
    assert batched["track"].tolist() == single["track"].tolist()
    assert batched["frame"].tolist() == single["frame"].tolist()
    assert np.abs(batched["mhr_skel_state"] - single["mhr_skel_state"]).max() < 1e-3
    assert np.abs(batched["pred_keypoints_2d"] - single["pred_keypoints_2d"]).max() < 5e-3


def test_without_known_boxes_frames_go_one_at_a_time_and_cancel_stops_a_batch(engine, clip) -> None:
    frames, boxes = clip
    with _counting_passes(engine) as calls:
        # only the first frame's boxes: the next frames' boxes come from the keypoints before them
        result = ClipJob(engine, MemoryClip(frames), ClipRequest(boxes=boxes[0], batch_frames=4)).run()
        assert calls == [1] and len(result["frame"]) == 5
        stop = iter([False, False, True])
        with pytest.raises(ServerError) as err:
            ClipJob(engine, MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)), batch_frames=2),
                    cancelled=lambda: next(stop, True)).run()
        assert err.value.code == CANCELLED
    with pytest.raises(ServerError, match="batch_frames"):
        ClipJob(engine, MemoryClip(frames), ClipRequest(batch_frames=0))


def test_crops_made_during_the_previous_pass_give_the_same_clip(engine, clip) -> None:
    import threading

    frames, boxes = clip
    boxes = list(boxes)
    boxes[3] = np.array([[10.0, 10.0, 5.0, 5.0]])  # a bad box: that frame alone is skipped

    def run(overlap: bool) -> dict:
        job = ClipJob(engine, MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)), batch_frames=2))
        job.overlap_crops = overlap
        with _counting_passes(engine) as calls:
            result = job.run()
        assert calls == [2, 2, 1]
        return result

    serial, overlapped = run(False), run(True)
    assert overlapped["failed_frames"].tolist() == [3]
    assert set(serial) == set(overlapped)
    for key in serial:
        assert np.array_equal(serial[key], overlapped[key]), key  # the same crops, the same passes
    stop = iter([False] * 4)  # cancelled once a batch's crops are under way
    job = ClipJob(engine, MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)), batch_frames=2),
                  cancelled=lambda: next(stop, True))
    job.overlap_crops = True
    with _counting_passes(engine) as calls, pytest.raises(ServerError) as err:
        job.run()
    assert err.value.code == CANCELLED and calls == [2]
    assert not [t for t in threading.enumerate() if t.name.startswith("clip-crops")]  # nothing left running


def test_with_the_detector_the_next_batch_is_detected_beside_the_pass(engine, clip) -> None:
    import threading

    frames, _ = clip
    threads: list[str] = []

    def detect(image: np.ndarray) -> np.ndarray:  # a stand-in detector: the person's box
        threads.append(threading.current_thread().name)
        return np.array([[40.0, 20.0, 470.0, 500.0]], np.float32)

    engine.detector = detect
    try:
        def run(overlap: bool) -> dict:
            job = ClipJob(engine, MemoryClip(frames), ClipRequest(batch_frames=2))
            job.overlap_crops = overlap
            with _counting_passes(engine) as calls:
                result = job.run()
            assert calls == [2, 2, 1]  # detected boxes are known up front: frames batch
            return result

        serial = run(False)
        assert threads and not any(name.startswith("clip-crops") for name in threads)
        threads.clear()
        overlapped = run(True)
        assert threads and all(name.startswith("clip-crops") for name in threads)
    finally:
        engine.detector = None
    for key in serial:
        assert np.array_equal(serial[key], overlapped[key]), key
