"""Start-up stages: the serve command reports each loading step before its ready line, the add-on's
ServerProcess hears them, and hub downloads report their bytes."""
from __future__ import annotations

import io
import sys
from pathlib import Path

from addon.protocol.client import ServerProcess
from addon.protocol.wire import STAGE_PREFIX
from server import stages


def test_server_process_hears_every_loading_stage(parity_dir: Path, tmp_path: Path) -> None:
    heard: list[str] = []
    server = ServerProcess(sys.executable, checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                           env={"SAM3D_BODY_CACHE": str(tmp_path / "cache")}, ready_timeout=120)
    server.on_stage = heard.append
    try:
        server.start()
    finally:
        server.stop()
    assert heard[:4] == ["finding the checkpoint", "building the model", "loading the weights",
                         "moving the model to cpu"], heard
    assert server.stage == heard[-1]


def test_hub_downloads_report_gigabytes_and_files() -> None:
    stream = io.StringIO()
    stages.set_sink(stream)
    try:
        bar = stages.hub_progress_class("facebook/sam-3d-body-dinov3")(total=3 * 2**30, unit="B")
        bar.update(2**30)
        bar.update(2 * 2**30)
        bar.close()
        files = stages.hub_progress_class("facebook/sam-3d-body-dinov3")(total=3)
        files.update(3)
        files.close()
    finally:
        stages.set_sink(None)
    lines = [ln[len(STAGE_PREFIX):] for ln in stream.getvalue().splitlines() if ln.startswith(STAGE_PREFIX)]
    text = " ".join(lines)
    assert "1.00 of 3.00 GB" in text and "3.00 of 3.00 GB" in text and "3 of 3 files" in text


def test_a_request_reports_each_pipeline_step(parity_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    from server.engine import ReconstructRequest, load_engine
    from server.imageio import load_image

    engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu", detector=None,
                         cache_dir=str(tmp_path / "cache"))
    image = load_image(str(parity_dir / "images" / "astronaut.png"))[0]
    seen: list[tuple[float, str]] = []
    engine.reconstruct(ReconstructRequest(image=image, boxes=np.array([[20, 10, 370, 512]], np.float32), mode="full"),
                       progress=lambda f, m: seen.append((f, m)))
    messages = [m for _, m in seen]
    for step in ("cropping 1 person", "body: image encoder", "body: decoder", "hands of 1 person",
                 "hands: image encoder", "merging the hands", "skeleton", "done"):
        assert step in messages, messages
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)  # the bar never runs backwards
