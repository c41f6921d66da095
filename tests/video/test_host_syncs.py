"""A batched clip pass reads back from the device a fixed number of times, however many frames
and people it holds (server/host_syncs.py): a read per frame or per person would make a GPU
wait once per frame, which caps the clip's frame rate whatever the batch size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.host_syncs import HostSyncCounter
from tests.video.clip_data import crossing_clip, panned_clip


def test_the_counter_sees_each_read_and_where_it_was_made() -> None:
    x = torch.arange(4.0)
    with HostSyncCounter() as syncs:
        for _ in range(3):
            x.sum().item()
        bool((x > 2).any())
        y = x * 2  # queued work, no read
    assert syncs.total == 3 + 2  # .item() x3; .any() and bool()
    assert all(site.startswith("tests/video/test_host_syncs.py:") for site in syncs.sites)
    assert y.shape == x.shape
    with HostSyncCounter(device="cuda") as on_gpu:  # only reads of tensors on that device count
        x.sum().item()
    assert on_gpu.total == 0


@pytest.fixture(scope="module")
def engine(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from server.engine import load_engine

    return load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                       detector=None, cache_dir=str(tmp_path_factory.mktemp("cache")))


def _reads(engine, frames: list[np.ndarray], boxes: list[np.ndarray]) -> HostSyncCounter:
    from server.engine import ReconstructRequest

    requests = [ReconstructRequest(image=f, boxes=b, mode="body") for f, b in zip(frames, boxes)]
    with HostSyncCounter() as syncs:
        outs = engine.reconstruct_frames(requests)
    assert all(isinstance(out, dict) for out in outs)
    return syncs


def test_a_batched_pass_reads_back_the_same_number_of_times_for_any_frames_and_people(
        engine, parity_dir: Path) -> None:
    frames, boxes = panned_clip(parity_dir / "images", n_frames=4)
    _reads(engine, frames[:1], boxes[:1])  # first-call caches (the faces) out of the count
    one = _reads(engine, frames[:1], boxes[:1])
    many = _reads(engine, frames, boxes)
    two_people_frames, two_people_boxes = crossing_clip(parity_dir / "images", n_frames=3)
    crowd = _reads(engine, two_people_frames, two_people_boxes)
    assert one.total > 0  # the pass does read its outputs back: the counter is watching
    assert many.sites == one.sites, "reads that grow with the frames of a pass"
    assert crowd.sites == one.sites, "reads that grow with the people of a pass"
