"""`python -m server reconstruct CLIP --connect HOST:PORT`: the clip is uploaded to a running
server and the file written is the one a local run writes (but for the upload's own name)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.video.clip_data import ASTRONAUT_BOX, panned_clip, write_movie


def _cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("SAM3D_BODY_TOKEN", None)
    if token is not None:
        env["SAM3D_BODY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "server", "reconstruct", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_clip_through_a_running_server_writes_the_local_file(parity_dir: Path, tmp_path: Path) -> None:
    from addon.protocol.client import ServerProcess

    checkpoint = str(parity_dir / "checkpoints" / "dinov3_tiny")
    frames, boxes = panned_clip(parity_dir / "images", n_frames=4)
    movie = write_movie(tmp_path / "walk.mp4", frames)
    tracked = tmp_path / "boxes.json"
    tracked.write_text(json.dumps({str(t): b.tolist() for t, b in enumerate(boxes) if t != 1}))
    box = ",".join(f"{v:g}" for v in ASTRONAUT_BOX)
    # Frames 0, 2, 3 have the tracker's boxes (batched in pairs), frame 1 the first frame's box.
    request = [str(movie), "--mode", "body", "--box", box, "--track-boxes", str(tracked), "--batch-frames", "2"]
    server = ServerProcess(sys.executable, root=ROOT, checkpoint=checkpoint, device="cpu", ready_timeout=120,
                           extra_args=["--detector", "none"])
    server.start()
    try:
        remote = _cli(*request, "--out", str(tmp_path / "remote.npz"), "--connect", f"127.0.0.1:{server.port}",
                      token=server.token)
        assert remote.returncode == 0, remote.stderr
        assert "uploading the clip" in remote.stderr and "frame 4/4" in remote.stderr
    finally:
        server.stop()
    local = _cli(*request, "--out", str(tmp_path / "local.npz"), "--checkpoint", checkpoint, "--device", "cpu",
                 "--detector", "none")
    assert local.returncode == 0, local.stderr
    with np.load(tmp_path / "remote.npz") as a, np.load(tmp_path / "local.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert str(a["source_path"]) == str(movie)
        np.testing.assert_allclose(a["bbox"][a["frame"] == 2][0], boxes[2][0], atol=0.5)  # the tracker's box
