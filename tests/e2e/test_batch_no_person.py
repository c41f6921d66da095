"""A photo in which the detector finds nobody, through the batch runner, the socket and the real
engine (tiny fixture checkpoint): reported with the engine's reason and skipped, the other photo
built. Offline the hub detector cannot load, so a stand-in detector (nobody on a blank image, the
whole frame elsewhere) drives the engine's own no-person path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from addon.cli import batch  # noqa: E402
from addon.protocol.client import JobRunner  # noqa: E402
from server import service as service_mod  # noqa: E402

TOKEN = "batch-no-person"


def _nobody_on_blank(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if float(image.std()) < 1.0:
        return np.zeros((0, 4), np.float32)
    return np.array([[0.0, 0.0, width - 1.0, height - 1.0]], np.float32)


def test_a_photo_with_nobody_is_reported_and_skipped(parity_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from server.engine import ReconstructRequest, load_engine

    engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                         detector=None, cache_dir=str(tmp_path / "cache"))
    engine.detector = _nobody_on_blank
    service = service_mod.InferenceService(engine, ReconstructRequest, TOKEN, handshake_timeout=5.0).start()
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(parity_dir / "images" / "astronaut.png", folder / "a_astronaut.png")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "b_empty_room.png")
    args = batch.build_parser().parse_args([str(folder), "--out-dir", str(out), "--mode", "body"])
    out.mkdir()
    runner = JobRunner(address=("127.0.0.1", service.port, TOKEN))
    try:
        reports = batch.run_batch(args, batch.find_photos(folder, None, False), runner)
    finally:
        runner.stop()
        service.shutdown()
    by_photo = {r.photo: r for r in reports}
    assert by_photo["a_astronaut.png"].status == "done" and by_photo["a_astronaut.png"].people == 1
    assert (out / "a_astronaut.blend").is_file()
    empty = by_photo["b_empty_room.png"]
    assert empty.status == "failed" and "No person was found" in empty.error, empty.error
    assert not (out / "b_empty_room.blend").exists()
