"""`python -m server bench` on the tiny fixture checkpoint, and the stage-timing hook."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.bench import STAGES, bench_image
from server.profiling import StageRecorder, active_recorder, stage
from tests.conftest import ROOT


def _bench(parity_dir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "server", "bench", "--checkpoint", str(parity_dir / "checkpoints" / "dinov3_tiny"),
           "--repeat", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bench_full_mode_prints_every_stage(parity_dir: Path, tmp_path: Path) -> None:
    proc = _bench(parity_dir, tmp_path, "--mode", "full", "--persons", "2", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and (parts[0] in STAGES or parts[0] == "total"):
            rows[parts[0]] = (float(parts[1]), int(parts[2]))
    assert set(rows) == {*STAGES, "total"}, proc.stdout
    for name in ("crop", "backbone", "decoder", "hands", "hands/backbone", "hands/decoder", "total"):
        assert rows[name][0] > 0 and rows[name][1] >= 1, (name, proc.stdout)
    assert rows["hands/backbone"][1] == 2  # left and right hand passes
    assert rows["hands"][0] >= rows["hands/backbone"][0] + rows["hands/decoder"][0]
    assert rows["total"][0] >= rows["backbone"][0] + rows["hands"][0]
    assert "peak memory" in proc.stdout and "MiB" in proc.stdout
    assert "precision fp32" in proc.stdout and "2 person(s)" in proc.stdout


def test_bench_body_mode_has_no_hand_work(parity_dir: Path, tmp_path: Path) -> None:
    proc = _bench(parity_dir, tmp_path, "--mode", "body")
    assert proc.returncode == 0, proc.stderr
    hands = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("hands")]
    assert hands and all(float(p[1]) == 0.0 and p[2] == "0" for p in hands)


def test_bench_rejects_bad_arguments(parity_dir: Path, tmp_path: Path) -> None:
    proc = _bench(parity_dir, tmp_path, "--persons", "0")
    assert proc.returncode != 0 and "--persons must be at least 1" in proc.stderr
    proc = _bench(parity_dir, tmp_path, "--precision", "half")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_bench_image_tiles_one_box_per_person() -> None:
    image, boxes = bench_image(3)
    assert image.shape == (512, 3 * 512, 3) and image.dtype == np.uint8
    assert boxes.shape == (3, 4) and np.all(boxes[:, 2] <= image.shape[1])
    np.testing.assert_array_equal(np.diff(boxes[:, 0]), [512, 512])


def test_stage_hook_is_a_no_op_without_recorder_and_nests_with_one() -> None:
    assert active_recorder() is None
    with stage("crop"):
        pass  # no recorder: nothing recorded, nothing raised
    with StageRecorder() as rec:
        with stage("hands"):
            with stage("backbone"):
                pass
            with stage("backbone"):
                pass
        assert active_recorder() is rec
    assert active_recorder() is None
    assert rec.counts == {"hands/backbone": 2, "hands": 1}
    assert rec.times["hands"] >= rec.times["hands/backbone"] >= 0
    with pytest.raises(RuntimeError), StageRecorder() as rec2:
        with stage("crop"):
            raise RuntimeError("boom")
    assert rec2.counts == {"crop": 1} and active_recorder() is None
