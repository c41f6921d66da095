"""Issue 2's end-to-end path: the real server subprocess on a fixture checkpoint, the fixture
photo over the socket, the rig built headless in bpy, FBX export and re-import.

The fixture checkpoint has random weights and the MHR stand-in: the character means nothing,
but every number comes from the real engine and the real protocol.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.scene.apply import apply_result  # noqa: E402
from addon.protocol.client import ServerProcess  # noqa: E402
from addon.scene.export import export_fbx  # noqa: E402

BOX = [[20, 10, 370, 512]]


@pytest.fixture(scope="module")
def served(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module: rig data once, then a full-mode reconstruction."""
    cache = tmp_path_factory.mktemp("cache")
    server = ServerProcess(sys.executable, checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"),
                           device="cpu", env={"SAM3D_BODY_CACHE": str(cache)}, ready_timeout=120)
    info = server.start()
    try:
        client = server.client()
        rig = client.rig(timeout=60)
        seen: list[float] = []
        result = client.reconstruct(image_path=str(parity_dir / "images" / "astronaut.png"), boxes=BOX,
                                    mode="full", progress=lambda f, m: seen.append(f), timeout=120)
        client.close()
        yield info, rig, result, seen
    finally:
        server.stop()


def _evaluated_vertices(obj) -> np.ndarray:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    mw = np.array(obj.matrix_world)
    co = co.reshape(-1, 3)
    return co @ mw[:3, :3].T + mw[:3, 3]


def _bones(arm) -> dict[str, tuple[str | None, np.ndarray]]:
    mw = np.array(arm.matrix_world)
    return {b.name: (b.parent.name if b.parent else None, mw @ np.array(b.matrix_local)) for b in arm.data.bones}


def test_server_result_matches_official_outputs(served, parity_dir: Path) -> None:
    info, rig, result, seen = served
    assert info["protocol"] >= 1 and info["device"] == "cpu"
    ref = np.load(parity_dir / "cases" / "02_dinov3_full_1p_hands_valid" / "outputs.npz")
    np.testing.assert_allclose(result["pred_vertices"], ref["pred_vertices"], atol=1e-5)
    np.testing.assert_allclose(result["pred_keypoints_2d"], ref["pred_keypoints_2d"], atol=1e-3)
    assert seen and seen[-1] == pytest.approx(1.0)
    assert len(rig["joint_names"]) == 127


def test_rig_build_and_fbx_round_trip(served, parity_dir: Path, tmp_path: Path) -> None:
    _, rig, result, _ = served
    bpy.ops.wm.read_factory_settings(use_empty=True)
    photo = str(parity_dir / "images" / "astronaut.png")
    objects = apply_result(bpy.context, result, rig, image_path=photo)
    arm = next(o for o in objects if o.type == "ARMATURE")
    mesh = next(o for o in objects if o.type == "MESH")
    cam = next(o for o in objects if o.type == "CAMERA")
    assert len(arm.data.bones) == 127
    assert all(b.length > 1e-4 for b in arm.data.bones)
    names = list(rig["joint_names"])
    parents = np.asarray(rig["joint_parents"])
    for j, name in enumerate(names):
        parent = arm.data.bones[name].parent
        assert (parent.name if parent else None) == (names[parents[j]] if parents[j] >= 0 else None)
    assert {g.name for g in mesh.vertex_groups} <= set(names)
    assert cam.data.background_images[0].image is not None
    assert bpy.context.scene.render.resolution_x == int(result["image_size"][0])

    # The deformed mesh is MHR's skinning of this person (the stand-in's correctives are a few
    # mm at most, so the LBS mesh sits within 1 cm of 3DB's own mesh in camera space).
    before = _evaluated_vertices(mesh)
    cam_mw = np.array(cam.matrix_world)
    # Blender camera looks down -Z; OpenCV camera = diag(1,-1,-1) of it.
    to_cam = np.linalg.inv(cam_mw)
    v_cam = (before @ to_cam[:3, :3].T + to_cam[:3, 3]) * np.array([1, -1, -1])
    expected = result["pred_vertices"][0] + result["pred_cam_t"][0]
    assert np.abs(v_cam - expected).max() < 0.01

    bones_before = _bones(arm)
    fbx = tmp_path / "character.fbx"
    export_fbx(str(fbx), [arm, mesh], preset="blender")
    assert fbx.stat().st_size > 10_000
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(fbx), automatic_bone_orientation=False, anim_offset=0.0)
    arm2 = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
    mesh2 = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    bones_after = _bones(arm2)
    assert bones_after.keys() == bones_before.keys()
    for name, (parent, mat) in bones_before.items():
        assert bones_after[name][0] == parent, name
        np.testing.assert_allclose(bones_after[name][1], mat, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(_evaluated_vertices(mesh2), before, atol=1e-4)
