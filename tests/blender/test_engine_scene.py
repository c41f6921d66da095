"""The scene built from the engine's real output (fixture checkpoint, CPU): the photo camera sees
the rig where 3DB's own 2D output says, for one and for two persons."""
from __future__ import annotations

import numpy as np
import pytest

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from addon.scene.apply import apply_result
from addon.rig import axes
from tests.blender.helpers import evaluated_world_vertices
from tests.conftest import require

ASTRONAUT_BOX = [[20, 10, 370, 512]]
TWO_PERSON_BOXES = [[20, 10, 370, 512], [424, 150, 684, 480]]  # parity case 03


@pytest.fixture(scope="module")
def engine(parity_dir, tmp_path_factory):
    from server.engine import load_engine
    return load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                       cache_dir=str(tmp_path_factory.mktemp("ckpt_cache")))


@pytest.fixture(scope="module")
def rig(engine):
    return engine.rig_data()


def _photo(parity_dir, name) -> tuple[str, np.ndarray]:
    from PIL import Image
    path = require(parity_dir / "images" / name)
    return str(path), np.asarray(Image.open(path).convert("RGB"))


def _reconstruct(engine, image, boxes, **kw):
    from server.engine import ReconstructRequest
    return engine.reconstruct(ReconstructRequest(image=image, mode="body",
                                                 boxes=np.asarray(boxes, np.float32), **kw))


def _project(scene, cam, points_world) -> np.ndarray:
    w, h = scene.render.resolution_x, scene.render.resolution_y
    ndc = np.array([world_to_camera_view(scene, cam, Vector(p.tolist()))[:2]
                    for p in points_world])
    return np.stack([ndc[:, 0] * w, (1.0 - ndc[:, 1]) * h], axis=1)


def _check_person(scene, cam, result, i, arm, mesh) -> None:
    t0 = result["pred_cam_t"][0]
    # the deformed mesh is 3DB's pred_vertices, placed by pred_cam_t in the camera's frame
    world = evaluated_world_vertices(mesh)
    want = axes.camera_to_blender_points(result["pred_vertices"][i] + result["pred_cam_t"][i], t0)
    assert np.abs(world - want).max() < 1e-4
    # the posed 3D keypoints, through the Blender camera, land on pred_keypoints_2d
    kp_world = axes.camera_to_blender_points(
        result["pred_keypoints_3d"][i] + result["pred_cam_t"][i], t0)
    err = np.abs(_project(scene, cam, kp_world) - result["pred_keypoints_2d"][i]).max()
    assert err < 1.0, f"person {i}: {err} px"
    assert f"person{i}" in arm.name and f"person{i}" in mesh.name


@pytest.mark.parametrize("intrinsics", [None, (700.0, 940.0, 300.0, 236.0)])
def test_one_person_projects_onto_3db_keypoints(scene, engine, rig, parity_dir, intrinsics):
    path, image = _photo(parity_dir, "astronaut.png")
    result = _reconstruct(engine, image, ASTRONAUT_BOX, intrinsics=intrinsics)
    objs = apply_result(bpy.context, result, rig, image_path=path)
    cam = objs[-1]
    assert cam.type == "CAMERA" and bpy.context.scene.camera == cam
    assert (bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y) == \
        tuple(int(x) for x in result["image_size"])
    assert cam.data.background_images[0].image.filepath == path
    _check_person(bpy.context.scene, cam, result, 0, objs[0], objs[1])


def test_two_persons_share_one_camera_and_collection(scene, engine, rig, parity_dir):
    path, image = _photo(parity_dir, "two_person.png")
    result = _reconstruct(engine, image, TWO_PERSON_BOXES)
    assert result["pred_cam_t"].shape[0] == 2
    objs = apply_result(bpy.context, result, rig, image_path=path)
    arms = [o for o in objs if o.type == "ARMATURE"]
    meshes = [o for o in objs if o.type == "MESH"]
    cams = [o for o in objs if o.type == "CAMERA"]
    assert len(arms) == len(meshes) == 2 and len(cams) == 1
    assert {c.name for c in bpy.data.collections} == {"two_person"}
    assert all(o.users_collection[0].name == "two_person" for o in objs)
    for i in range(2):
        _check_person(bpy.context.scene, cams[0], result, i, arms[i], meshes[i])
