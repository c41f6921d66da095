"""python -m addon.cli PHOTOS_DIR --out-dir OUT: a folder of photos with the tiny fixture
checkpoint, one server start, bad photos reported and skipped, re-runs skip what is done."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "addon.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def photos(parity_dir: Path, tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(parity_dir / "images" / "astronaut.png", folder / "a_astronaut.png")
    shutil.copy(parity_dir / "images" / "two_person.png", folder / "b_two.png")
    (folder / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(64))
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "d_tiny.png")  # no person fits
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_batch_writes_one_scene_per_photo_and_reports_the_bad_ones(photos: Path, parity_dir: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(photos), "--out-dir", str(out), "--fbx", "--checkpoint", str(parity_dir / "checkpoints" / "dinov3_tiny"),
            "--device", "cpu", "--mode", "body"]
    first = _run(args, tmp_path)
    assert first.returncode == 3, first.stderr[-3000:]
    for stem in ("a_astronaut", "b_two"):
        assert (out / f"{stem}.blend").stat().st_size > 100_000
        assert (out / f"{stem}.fbx").read_bytes()[:18] == b"Kaydara FBX Binary"
    summary = json.loads((out / "batch.json").read_text())
    by_photo = {p["photo"]: p for p in summary["photos"]}
    assert sorted(by_photo) == ["a_astronaut.png", "b_two.png", "c_corrupt.jpg", "d_tiny.png"]
    assert by_photo["a_astronaut.png"]["status"] == "done" and by_photo["a_astronaut.png"]["people"] >= 1
    assert by_photo["b_two.png"]["outputs"] == [str(out / "b_two.blend"), str(out / "b_two.fbx")]
    assert by_photo["c_corrupt.jpg"]["status"] == "failed" and by_photo["c_corrupt.jpg"]["error"]
    assert by_photo["d_tiny.png"]["status"] == "failed" and "too small" in by_photo["d_tiny.png"]["error"]
    assert not (out / "c_corrupt.blend").exists() and not (out / "d_tiny.blend").exists()
    assert "4 photos: 2 done, 0 up to date, 2 failed" in first.stderr
    assert "building the scene" in first.stderr and "exporting FBX" in first.stderr  # each stage shown
    assert len(re.findall(r"starting the server(?!:)", first.stderr)) <= 1  # one server for the batch

    # Again: the done photos are up to date, the bad ones are tried and fail again.
    blend_mtime = (out / "a_astronaut.blend").stat().st_mtime
    second = _run(args, tmp_path)
    assert second.returncode == 3, second.stderr[-3000:]
    again = {p["photo"]: p["status"] for p in json.loads((out / "batch.json").read_text())["photos"]}
    assert again == {"a_astronaut.png": "skipped", "b_two.png": "skipped", "c_corrupt.jpg": "failed",
                     "d_tiny.png": "failed"}
    assert (out / "a_astronaut.blend").stat().st_mtime == blend_mtime

    # Only the good ones, forced: everything succeeds, exit code 0.
    third = _run(args + ["--glob", "[ab]_*.png", "--force"], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "a_astronaut.blend").stat().st_mtime > blend_mtime


def test_batch_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = _run([str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")], tmp_path)
    assert done.returncode == 2 and "no photos" in done.stderr
    folder_as_photo = _run([str(tmp_path / "empty"), "--blend", str(tmp_path / "x.blend")], tmp_path)
    assert folder_as_photo.returncode == 2 and "--out-dir" in folder_as_photo.stderr
