"""TEST DOUBLE: the fake engine, plus one image width whose request ignores cancel (like a long
GPU kernel), to test that the server still exits when its parent goes away."""
from __future__ import annotations

import time

from tests.wire import fake_engine
from tests.wire.fake_engine import ReconstructRequest  # noqa: F401 - the request type of --engine

STUBBORN_WIDTH = 23
STUBBORN_SECONDS = 60.0


class StubbornEngine(fake_engine.FakeEngine):
    def reconstruct(self, request, progress=lambda f, m: None, cancelled=lambda: False):
        if request.image.shape[1] == STUBBORN_WIDTH:
            progress(0.1, "stubborn: not listening to cancel")
            time.sleep(STUBBORN_SECONDS)
        return super().reconstruct(request, progress, cancelled)


def make_engine(checkpoint=None, repo=None, mhr=None, device="auto") -> StubbornEngine:
    return StubbornEngine(vertices=16)
