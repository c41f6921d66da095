"""bpy test set-up: a clean factory scene per test and stand-in data shared per session."""
from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")


@pytest.fixture()
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene
    bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.fixture(scope="session")
def lod1_rig(standin_lod1):
    from tests.rig.standin_data import standin_rig
    return standin_rig(str(standin_lod1))


@pytest.fixture(scope="session")
def lod1_result(standin_lod1, mhr_samples):
    from tests.rig.standin_data import standin_result
    return standin_result(str(standin_lod1), mhr_samples, n_persons=2)
