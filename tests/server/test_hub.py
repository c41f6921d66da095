"""Offline fail-fast: every hub access asks server/hub.py once, and offline costs seconds, not a
retry loop (loopback only: the "hub" here is a closed or a listening port on 127.0.0.1)."""
from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from server import hub
from server.engine import ReconstructRequest, load_engine


@pytest.fixture(autouse=True)
def fresh_answer():
    hub.offline_reason.cache_clear()
    yield
    hub.offline_reason.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_env_answers_without_a_connection(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set" and not hub.reachable()


def test_unreachable_and_reachable_endpoints(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    assert "cannot be reached" in (hub.offline_reason() or "")
    assert time.monotonic() - start < 2.0 + 1.0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hub.offline_reason.cache_clear()
        assert hub.reachable()
    assert hub.endpoint() == ("127.0.0.1", port)


def test_detector_fallback_offline_is_fast_and_said_once(parity_dir: Path, tmp_path: Path, monkeypatch,
                                                         caplog) -> None:
    """A photo without a box, the detector not cached, the hub unreachable: whole-image fallback in
    well under the 24 s the hub's retries took (generous bound: it still fails on a 20 s loop)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                         cache_dir=str(tmp_path / "cache"))
    photo = np.asarray(np.random.default_rng(0).integers(0, 256, (96, 64, 3)), np.uint8)
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    first = engine.reconstruct(ReconstructRequest(image=photo, mode="body"))
    elapsed = time.monotonic() - start
    second = engine.reconstruct(ReconstructRequest(image=photo, mode="body"))
    print(f"offline detector fallback: first photo {elapsed:.2f} s")
    assert elapsed < 10.0
    assert str(first["boxes_source"]) == str(second["boxes_source"]) == "full_image"
    # Said once per run (the hub check, then why detection is off), not once per photo.
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == len(set(said)) == 2, said
    assert any("hub offline" in m for m in said) and any("person detection is off" in m for m in said)
