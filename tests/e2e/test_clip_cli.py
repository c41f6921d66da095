"""python -m addon.cli CLIP.mp4 --blend OUT.blend --fbx OUT.fbx with the tiny fixture checkpoint,
then --from-result of the kept clip result with other smoothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.video.clip_data import panned_clip, write_movie

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "addon.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _gltf_animations(path: Path) -> list[dict]:
    """Animations in a .glb: its first chunk is the JSON document."""
    import struct

    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20:20 + length]).get("animations", [])


def test_clip_to_animated_blend_and_fbx(parity_dir: Path, tmp_path: Path) -> None:
    frames, boxes = panned_clip(parity_dir / "images", n_frames=5)
    movie = write_movie(tmp_path / "walk.mp4", frames)
    (tmp_path / "boxes.json").write_text(json.dumps({str(t): b.tolist() for t, b in enumerate(boxes)}))
    run = _run([str(movie), "--blend", str(tmp_path / "out.blend"), "--fbx", str(tmp_path / "out.fbx"),
                "--glb", str(tmp_path / "out.glb"),
                "--checkpoint", str(parity_dir / "checkpoints" / "dinov3_tiny"), "--device", "cpu",
                "--track-boxes", str(tmp_path / "boxes.json"), "--keep-result", str(tmp_path / "clip.npz")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out.blend").stat().st_size > 100_000
    assert (tmp_path / "out.fbx").read_bytes()[:18] == b"Kaydara FBX Binary"
    animations = _gltf_animations(tmp_path / "out.glb")
    assert len(animations) == 1  # bones and the corrective shape keys in one animation
    paths = {c["target"]["path"] for c in animations[0]["channels"]}
    assert {"rotation", "weights"} <= paths, paths
    assert "jitter" in run.stderr and "shape keys" in run.stderr and "5/5" in run.stderr  # per-track numbers, the progress bar
    with np.load(tmp_path / "clip.npz") as data:
        assert data["frames"].tolist() == [0, 1, 2, 3, 4] and str(data["kind"]) == "clip"

    again = _run(["--from-result", str(tmp_path / "clip.npz"), "--blend", str(tmp_path / "raw.blend"),
                  "--smoothing", "0", "--no-foot-lock"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "raw.blend").is_file()


def test_bad_clip_arguments_exit_2(tmp_path: Path) -> None:
    movie = tmp_path / "x.mp4"
    movie.write_bytes(b"not a movie")
    bad = _run([str(movie), "--blend", str(tmp_path / "o.txt")], tmp_path)
    assert bad.returncode == 2 and "--blend must end in .blend" in bad.stderr
    neg = _run([str(movie), "--blend", str(tmp_path / "o.blend"), "--smoothing", "-1"], tmp_path)
    assert neg.returncode == 2 and "--smoothing" in neg.stderr
    # Refused before the server starts, not after a whole clip was reconstructed for nothing.
    for args, says in ((["--fps", "nan"], "argument --fps: needs a finite number"),
                       (["--fps", "-3"], "argument --fps: must be greater than 0"),
                       (["--smoothing", "nan"], "argument --smoothing: needs a finite number"),
                       (["--step", "0"], "argument --step: must be at least 1"),
                       (["--start", "5", "--stop", "3"], "--stop 3 must come after --start 5")):
        refused = _run([str(movie), "--blend", str(tmp_path / "o.blend"), *args], tmp_path)
        assert refused.returncode == 2 and says in refused.stderr, (args, refused.stderr[-500:])
    broken = _run([str(movie), "--blend", str(tmp_path / "o.blend"), "--device", "cpu",
                   "--checkpoint", str(tmp_path)], tmp_path)
    assert broken.returncode == 1 and "cannot open the movie" in broken.stderr
    assert not (tmp_path / "o.blend").exists()
