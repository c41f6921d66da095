"""The clip job with the tiny fixture checkpoint: python -m server reconstruct CLIP --out X.npz on
synthetic clips (a panned photo, two people crossing), frame skipping, cancel, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from addon.protocol.clip_result import check_clip, track_rows
from server.errors import CANCELLED, ServerError
from tests.video.clip_data import crossing_clip, panned_clip, write_movie


def _boxes_json(path: Path, boxes: list[np.ndarray], order: list[np.ndarray] | None = None) -> Path:
    data = {str(t): (b[order[t]] if order else b).tolist() for t, b in enumerate(boxes)}
    path.write_text(json.dumps(data))
    return path


def _reconstruct(clip: Path, out: Path, checkpoint: Path, *extra: str) -> dict[str, np.ndarray]:
    from server.__main__ import main

    rc = main(["reconstruct", str(clip), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu",
               "--mode", "body", "--detector", "none", *extra])
    assert rc == 0
    with np.load(out, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def panned(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("panned")
    frames, boxes = panned_clip(parity_dir / "images")
    return write_movie(folder / "pan.mp4", frames), boxes


@pytest.fixture(scope="module")
def pan_result(panned, parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    movie, boxes = panned
    folder = tmp_path_factory.mktemp("pan_result")
    return _reconstruct(movie, folder / "clip.npz", parity_dir / "checkpoints" / "dinov3_tiny",
                        "--track-boxes", str(_boxes_json(folder / "boxes.json", boxes)))


def test_every_frame_is_a_row_of_one_track(pan_result: dict[str, np.ndarray], panned) -> None:
    clip = check_clip(pan_result)
    n = len(panned[1])
    assert clip["frames"].tolist() == list(range(n))
    assert clip["frame"].tolist() == list(range(n)) and clip["track"].tolist() == [0] * n
    assert clip["track_ids"].tolist() == [0] and float(clip["fps"]) == pytest.approx(12.0)
    np.testing.assert_allclose(clip["bbox"], np.concatenate(panned[1]), atol=0.6)  # the boxes given
    assert any(k.startswith("rig_") for k in pan_result)  # self-contained for the add-on


def test_shape_is_locked_on_every_frame(pan_result: dict[str, np.ndarray]) -> None:
    """One identity shape and one set of bone scales for the whole track (the rest skeleton's bone
    lengths); what still moves joints is MHR's pose parameters (e.g. spine and limb twist)."""
    clip = check_clip(pan_result)
    shape, params = clip["shape_params"], clip["mhr_model_params"]
    assert np.ptp(shape, axis=0).max() == 0.0 and np.ptp(params[:, 136:], axis=0).max() == 0.0
    np.testing.assert_array_equal(shape[0], clip["track_shape_params"][0])
    np.testing.assert_array_equal(params[0, 136:], clip["track_scales"][0])


def test_shape_lock_reposes_with_the_median_shape(pan_result: dict[str, np.ndarray], parity_dir: Path) -> None:
    """The locked rows are MHR's forward of the frame's pose with the track's median shape."""
    from server.mhr.rig_data import person_rig_state
    from server.mhr.torchscript import load_mhr

    clip = check_clip(pan_result)
    mhr = load_mhr(parity_dir / "checkpoints" / "dinov3_tiny" / "assets" / "mhr_model.pt", "cpu")
    want = person_rig_state(mhr, clip["mhr_model_params"][2:3], clip["track_shape_params"][:1],
                            clip["expr_params"][2:3])
    np.testing.assert_allclose(clip["mhr_skel_state"][2], want["mhr_skel_state"][0], atol=1e-4)
    np.testing.assert_allclose(clip["track_rest_vertices"][0], want["mhr_rest_vertices"][0], atol=1e-4)


def test_two_people_crossing_keep_their_identities(parity_dir: Path, tmp_path: Path) -> None:
    frames, boxes = crossing_clip(parity_dir / "images")
    rng = np.random.default_rng(3)
    order = [rng.permutation(2) for _ in boxes]  # the other tracker lists people in any order
    movie = write_movie(tmp_path / "cross.mp4", frames)
    clip = check_clip(_reconstruct(movie, tmp_path / "cross.npz", parity_dir / "checkpoints" / "dinov3_tiny",
                                   "--track-boxes", str(_boxes_json(tmp_path / "b.json", boxes, order))))
    assert sorted(clip["track_ids"].tolist()) == [0, 1]
    truth = {}
    for row, (frame, track) in enumerate(zip(clip["frame"], clip["track"])):
        person = int(np.argmin(np.abs(boxes[frame] - clip["bbox"][row]).sum(axis=1)))
        truth.setdefault(int(track), set()).add(person)
    assert all(len(people) == 1 for people in truth.values()), truth  # no identity swap
    assert all(len(track_rows(clip, t)) == len(frames) for t in (0, 1))


class _FlakyEngine:
    """The tiny engine, failing on chosen calls (a corrupt frame, say) or cancelling."""

    def __init__(self, engine, fail_on: set[int]):
        self.engine, self.fail_on, self.calls = engine, fail_on, 0
        self.mhr = engine.mhr

    def _detector(self):
        return None

    def reconstruct(self, request):
        self.calls += 1
        if self.calls - 1 in self.fail_on:
            raise ServerError("no_person", "No person was found in the image")
        return self.engine.reconstruct(request)


@pytest.fixture(scope="module")
def tiny_engine(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from server.engine import load_engine

    return load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu", detector=None,
                       cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_a_failed_frame_is_skipped_not_the_clip(panned, tiny_engine) -> None:
    from server.video.clip import ClipJob, ClipRequest
    from server.video.source import open_clip

    movie, boxes = panned
    seen: list[str] = []
    job = ClipJob(_FlakyEngine(tiny_engine, {2}), open_clip(movie), ClipRequest(mode="body", frame_boxes=dict(enumerate(boxes))),
                  progress=lambda f, m: seen.append(m))
    clip = check_clip(job.run())
    assert clip["failed_frames"].tolist() == [2]
    assert clip["frame"].tolist() == [0, 1, 3, 4, 5]
    assert f"frame {len(boxes)}/{len(boxes)}" in " ".join(seen)


def test_an_unreadable_image_in_a_folder_is_one_skipped_frame(parity_dir: Path, tiny_engine, tmp_path: Path) -> None:
    from PIL import Image

    from server.video.clip import ClipJob, ClipRequest
    from server.video.source import open_clip

    frames, boxes = panned_clip(parity_dir / "images", n_frames=4)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{k}.png")
    (tmp_path / "f2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    clip = check_clip(ClipJob(tiny_engine, open_clip(tmp_path),
                              ClipRequest(mode="body", frame_boxes=dict(enumerate(boxes)))).run())
    assert clip["failed_frames"].tolist() == [2] and clip["frame"].tolist() == [0, 1, 3]


def test_an_image_of_another_size_in_a_folder_is_one_skipped_frame(parity_dir: Path, tiny_engine,
                                                                  tmp_path: Path) -> None:
    from PIL import Image

    from server.video.clip import ClipJob, ClipRequest
    from server.video.source import open_clip

    frames, boxes = panned_clip(parity_dir / "images", n_frames=4)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{k}.png")
    Image.fromarray(frames[1][:400, :300]).save(tmp_path / "f1.png")  # a stray crop among the frames
    job = ClipJob(tiny_engine, open_clip(tmp_path), ClipRequest(mode="body", frame_boxes=dict(enumerate(boxes))))
    clip = check_clip(job.run())
    warnings = [message for _, message in job.failed]
    assert clip["failed_frames"].tolist() == [1] and clip["frame"].tolist() == [0, 2, 3]
    assert warnings == ["f1.png is 300x400 but the clip's frames are 512x512: every frame of a clip needs "
                        "the same size"]


def test_a_folder_whose_first_image_is_unreadable_takes_the_next_ones_size(tmp_path: Path) -> None:
    from PIL import Image

    from server.video.source import open_clip

    (tmp_path / "a0.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    Image.new("RGB", (64, 48)).save(tmp_path / "a1.png")
    source = open_clip(tmp_path)
    assert source.size == (64, 48)
    got = list(source)
    assert isinstance(got[0][1], ServerError) and "a0.png" in got[0][1].message
    assert got[1][1].shape == (48, 64, 3)
    (tmp_path / "a1.png").write_bytes(b"not an image either")
    with pytest.raises(ServerError, match="no image of the folder .* could be read .*a0.png"):
        open_clip(tmp_path)


def test_cancel_stops_at_the_next_frame(panned, tiny_engine) -> None:
    from server.video.clip import ClipJob, ClipRequest
    from server.video.source import open_clip

    movie, boxes = panned
    engine = _FlakyEngine(tiny_engine, set())
    job = ClipJob(engine, open_clip(movie), ClipRequest(frame_boxes=dict(enumerate(boxes))),
                  cancelled=lambda: engine.calls >= 2)
    with pytest.raises(ServerError) as err:
        job.run()
    assert err.value.code == CANCELLED and engine.calls == 2
    import threading

    assert not [t for t in threading.enumerate() if t.name == "clip-frames"]  # the reader stopped with it


def test_frame_range_and_image_folders(panned, tmp_path: Path) -> None:
    from PIL import Image

    from server.video.source import open_clip

    movie, _ = panned
    source = open_clip(movie, start=1, stop=5, step=2)
    assert source.frame_numbers == [1, 3] and [n for n, _ in source] == [1, 3]
    folder = tmp_path / "seq"
    folder.mkdir()
    for k in (10, 9, 11):  # natural order: 9, 10, 11
        Image.fromarray(np.full((8, 12, 3), k, np.uint8)).save(folder / f"f{k}.png")
    seq = open_clip(folder, fps=30)
    assert seq.fps == 30 and seq.size == (12, 8)
    assert [int(img[0, 0, 0]) for _, img in seq] == [9, 10, 11]


@pytest.mark.parametrize("kind", ["text", "empty_folder", "range", "missing"])
def test_bad_clips_are_clear_errors(tmp_path: Path, panned, kind: str) -> None:
    from server.video.source import open_clip

    path: Path = {"text": tmp_path / "a.txt", "empty_folder": tmp_path / "empty", "missing": tmp_path / "gone.mp4",
                  "range": panned[0]}[kind]
    if kind == "text":
        path.write_text("hello")
    if kind == "empty_folder":
        path.mkdir()
    with pytest.raises(ServerError) as err:
        open_clip(path, start=50 if kind == "range" else 0)
    assert {"text": "not a movie file", "empty_folder": "holds no images", "range": "selects none",
            "missing": "not found"}[kind] in err.value.message


def test_malformed_track_boxes_are_refused(tmp_path: Path) -> None:
    from server.video.cli import read_track_boxes

    (tmp_path / "a.json").write_text('{"0": [[10, 10, 5, 20]]}')
    with pytest.raises(ValueError, match="x1<x2"):
        read_track_boxes(str(tmp_path / "a.json"))
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold an object"):
        read_track_boxes(str(tmp_path / "b.json"))


def test_bench_video_reports_person_frames_per_second(tiny_engine) -> None:
    from server.bench import bench_image
    from server.video.bench_clip import run_video_bench

    image, boxes = bench_image(2)
    stats = run_video_bench(tiny_engine, image, boxes, "body", 3)
    assert stats["person_frames"] == 6 and stats["tracks"] == 2
    assert stats["person_frames_per_s"] > 0
    assert stats["host_reads_per_pass"] >= 1  # one pass reads its outputs back, at least
    assert stats["crops_overlapped"] == 0.0  # on a CPU the crops wait for the pass
    from server.pipeline.crop import warp_kernel

    assert tiny_engine.info["crop_warp"] == warp_kernel()  # the bench prints it
    with pytest.raises(ValueError, match="at least 2"):
        run_video_bench(tiny_engine, image, boxes, "body", 1)


def test_batch_frames_on_the_command_line(panned, parity_dir: Path, tmp_path: Path) -> None:
    from server.__main__ import main

    movie, boxes = panned
    track = str(_boxes_json(tmp_path / "boxes.json", boxes))
    one = _reconstruct(movie, tmp_path / "one.npz", parity_dir / "checkpoints" / "dinov3_tiny",
                       "--track-boxes", track, "--batch-frames", "1")
    three = _reconstruct(movie, tmp_path / "three.npz", parity_dir / "checkpoints" / "dinov3_tiny",
                         "--track-boxes", track, "--batch-frames", "3")
    assert one["track"].tolist() == three["track"].tolist()
    assert np.abs(one["mhr_skel_state"] - three["mhr_skel_state"]).max() < 1e-3
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", str(movie), "--out", str(tmp_path / "x.npz"), "--checkpoint",
              str(parity_dir / "checkpoints" / "dinov3_tiny"), "--batch-frames", "0"])
    assert exc.value.code == 2
