"""GPU out of memory in the engine: a clear `out_of_memory` reply, cached memory released, the
service still usable."""
from __future__ import annotations

import sys
import types

import pytest

from addon.protocol.client import Client, RemoteError
from server import oom
from server.errors import OUT_OF_MEMORY, ServerError
from tests.hardening.hardening_support import TOKEN, assert_serves, image, start_service
from tests.wire import fake_engine

OOM_WIDTH = 19


def _torch_like_oom() -> type[Exception]:
    """A class shaped like torch.cuda.OutOfMemoryError (module torch.cuda, RuntimeError base),
    so the test needs no CUDA build of torch."""
    return type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch.cuda"})


class OomEngine(fake_engine.FakeEngine):
    """Raises ``failure`` for images OOM_WIDTH wide; ``release_memory`` counts its calls."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(vertices=16)
        self.failure = failure
        self.released = 0

    def reconstruct(self, request, progress=lambda f, m: None, cancelled=lambda: False):
        if request.image.shape[1] == OOM_WIDTH:
            progress(0.2, "allocating")
            raise self.failure
        return super().reconstruct(request, progress, cancelled)

    def release_memory(self) -> None:
        self.released += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """A stand-in `torch` module in sys.modules whose CUDA is available and counts
    empty_cache calls (the service must not import torch itself)."""
    calls = []
    cuda = types.SimpleNamespace(is_available=lambda: True,
                                 empty_cache=lambda: calls.append("empty_cache"))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    return calls


@pytest.mark.parametrize("failure", [
    _torch_like_oom()("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
    MemoryError(),
], ids=["torch.cuda.OutOfMemoryError", "RuntimeError", "mps", "MemoryError"])
def test_oom_is_answered_clearly_memory_is_released_and_the_service_goes_on(failure, fake_cuda):
    engine = OomEngine(failure)
    running = start_service(engine)
    try:
        with Client("127.0.0.1", running.port, TOKEN, timeout=10) as client:
            with pytest.raises(RemoteError) as info:
                client.reconstruct(image=image(OOM_WIDTH, 4), timeout=10)
            assert info.value.code == OUT_OF_MEMORY
            assert "ran out of memory" in info.value.message
            assert "still running" in info.value.message
            # Same connection, next request: served normally.
            result = client.reconstruct(image=image(), timeout=10)
            assert int(result["image_sum"]) == int(image().sum())
        assert engine.released == 1 and fake_cuda == ["empty_cache"]
        assert running.oom_count == 1
        assert_serves(running.port)
    finally:
        running.shutdown()


def test_other_errors_are_not_mistaken_for_oom(fake_cuda):
    for failure, code in ((RuntimeError("shape mismatch"), "internal"),
                          (ServerError("no_person", "No person."), "no_person")):
        engine = OomEngine(failure)
        running = start_service(engine)
        try:
            with Client("127.0.0.1", running.port, TOKEN, timeout=10) as client:
                with pytest.raises(RemoteError) as info:
                    client.reconstruct(image=image(OOM_WIDTH, 4), timeout=10)
            assert info.value.code == code
            assert engine.released == 0 and fake_cuda == []
        finally:
            running.shutdown()


def test_is_out_of_memory_and_release_without_torch(monkeypatch):
    assert oom.is_out_of_memory(_torch_like_oom()("anything"))
    assert oom.is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling ..."))
    assert not oom.is_out_of_memory(RuntimeError("index out of range"))
    assert not oom.is_out_of_memory(ValueError("out of memory"))  # not an allocation failure
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    done = oom.release_cached_memory(None)
    assert done["cuda_empty_cache"] is False and "torch" not in sys.modules


def test_a_failing_release_hook_does_not_break_the_worker(fake_cuda):
    engine = OomEngine(MemoryError())

    def broken() -> None:
        raise RuntimeError("hook failed")

    engine.release_memory = broken
    running = start_service(engine)
    try:
        with Client("127.0.0.1", running.port, TOKEN, timeout=10) as client:
            with pytest.raises(RemoteError, match="out of memory"):
                client.reconstruct(image=image(OOM_WIDTH, 4), timeout=10)
        assert_serves(running.port)  # the worker released memory before this job
        assert fake_cuda == ["empty_cache"]
    finally:
        running.shutdown()


class TorchEngine(fake_engine.FakeEngine):
    """Allocates a real torch tensor far larger than any machine has for OOM_WIDTH images."""

    def __init__(self, device: str) -> None:
        super().__init__(vertices=16)
        self.device = device

    def reconstruct(self, request, progress=lambda f, m: None, cancelled=lambda: False):
        import torch

        if request.image.shape[1] == OOM_WIDTH:
            kept = torch.ones(64 << 20, dtype=torch.uint8, device=self.device)  # noqa: F841
            torch.empty(1 << 50, dtype=torch.uint8, device=self.device)
        return super().reconstruct(request, progress, cancelled)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_real_torch_allocation_failure(device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    running = start_service(TorchEngine(device))
    try:
        with Client("127.0.0.1", running.port, TOKEN, timeout=30) as client:
            with pytest.raises(RemoteError) as info:
                client.reconstruct(image=image(OOM_WIDTH, 4), timeout=30)
            assert info.value.code == OUT_OF_MEMORY
            assert ("GPU" in info.value.message) == (device == "cuda")
            client.reconstruct(image=image(), timeout=30)
        if device == "cuda":
            # The failed request's 64 MiB tensor was freed and the cache handed back.
            assert torch.cuda.memory_allocated() == 0
            assert torch.cuda.memory_reserved() < 64 << 20
    finally:
        running.shutdown()
