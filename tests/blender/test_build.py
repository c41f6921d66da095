"""apply_result() in headless Blender: skinned, posed characters and the photo camera."""
from __future__ import annotations

import numpy as np
import pytest

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from addon.scene.apply import apply_result
from addon.scene.builder import CORRECTIVE_KEY
from addon.rig import axes, skeleton
from addon.rig.camera import project_camera_points
from tests.blender.helpers import evaluated_world_vertices, numpy_lbs_blender, write_png


def _objects(objs, kind):
    return [o for o in objs if o.type == kind]


def test_lbs_rig_matches_numpy_lbs(scene, lod1_result, lod1_rig):
    objs = apply_result(bpy.context, lod1_result, lod1_rig,
                        options={"correctives": False, "proportions": "exact"})
    arms, meshes = _objects(objs, "ARMATURE"), _objects(objs, "MESH")
    assert len(arms) == len(meshes) == 2 and len(_objects(objs, "CAMERA")) == 1
    for i, (arm, mesh) in enumerate(zip(arms, meshes)):
        assert f"person{i}" in arm.name and f"person{i}" in mesh.name
        world = evaluated_world_vertices(mesh)
        expect = numpy_lbs_blender(lod1_result, lod1_rig, i) + np.array(arm.matrix_world)[:3, 3]
        err = np.abs(world - expect).max()
        assert err < 1e-4, f"person {i}: {err} m"
        # the pose really moves the mesh away from the bind pose
        rest = axes.mhr_to_blender_points(lod1_result["mhr_rest_vertices"][i])
        assert np.abs(world - np.array(arm.matrix_world)[:3, 3] - rest).max() > 0.2
        assert mesh.data.shape_keys is None


def test_armature_bones_and_hierarchy(scene, lod1_result, lod1_rig):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"proportions": "exact"})
    names = lod1_rig["joint_names"]
    parents = lod1_rig["joint_parents"]
    rest = skeleton.rest_bones(lod1_rig["bind_skel_state"], parents, names)
    for arm in _objects(objs, "ARMATURE"):
        bones = arm.data.bones
        assert [b.name for b in bones] == names or sorted(b.name for b in bones) == sorted(names)
        for j, name in enumerate(names):
            b = bones[name]
            assert b.length > 0.009
            assert (b.parent.name if b.parent else None) == (names[parents[j]] if parents[j] >= 0
                                                             else None)
            assert not b.use_connect and b.inherit_scale == "FULL"
            assert np.allclose(np.array(b.matrix_local), rest.matrices[j], atol=1e-4), name
        mod = next(m for m in _objects(objs, "MESH")[0].modifiers if m.type == "ARMATURE")
        assert not mod.use_deform_preserve_volume


def test_vertex_groups_hold_the_skin_weights(scene, lod1_result, lod1_rig):
    objs = apply_result(bpy.context, lod1_result, lod1_rig)
    names = lod1_rig["joint_names"]
    for mesh in _objects(objs, "MESH"):
        assert [g.name for g in mesh.vertex_groups] == names
        for v in (0, 17, 5000, 18438):
            got = {names[g.group]: g.weight for g in mesh.data.vertices[v].groups}
            idx, w = lod1_rig["skin_indices"][v], lod1_rig["skin_weights"][v]
            want = {names[j]: float(x) for j, x in zip(idx, w) if x > 0}
            assert got.keys() == want.keys()
            assert all(abs(got[k] - want[k]) < 1e-6 for k in want)
        assert mesh.data.uv_layers and len(mesh.data.uv_layers[0].data) == 3 * 36874
        assert mesh.data.polygons[0].use_smooth and mesh.data.materials[0] is not None


@pytest.mark.parametrize("proportions", ["baked", "exact"])
def test_corrective_key_reproduces_mhr_vertices(scene, lod1_result, lod1_rig, proportions):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"proportions": proportions})
    for i, (arm, mesh) in enumerate(zip(_objects(objs, "ARMATURE"), _objects(objs, "MESH"))):
        assert mesh.data.shape_keys.key_blocks[CORRECTIVE_KEY].value == 1.0
        world = evaluated_world_vertices(mesh) - np.array(arm.matrix_world)[:3, 3]
        expect = axes.mhr_to_blender_points(lod1_result["mhr_vertices"][i])
        assert np.abs(world - expect).max() < 1e-4


def test_persons_sit_where_the_camera_sees_them(scene, lod1_result, lod1_rig, tmp_path):
    photo = write_png(tmp_path / "group_photo.png", 64, 30)
    objs = apply_result(bpy.context, lod1_result, lod1_rig, image_path=photo)
    cam = _objects(objs, "CAMERA")[0]
    assert bpy.context.scene.camera == cam
    assert {c.name for c in bpy.data.collections} == {"group_photo"}
    assert all(o.users_collection[0].name == "group_photo" for o in objs)
    assert cam.data.background_images[0].image.filepath.endswith("group_photo.png")
    t = lod1_result["pred_cam_t"]
    cam_pos = np.array(cam.matrix_world)[:3, 3]
    for i, mesh in enumerate(_objects(objs, "MESH")):
        world = evaluated_world_vertices(mesh)
        cam_space = axes.mhr_to_camera_points(lod1_result["mhr_vertices"][i], t[i])
        assert np.abs(world - axes.camera_to_blender_points(cam_space, t[0])).max() < 1e-4
        # camera-space points relative to the camera object, in its axes, are OpenCV-flipped
        rel = (world - cam_pos) @ np.array(cam.matrix_world)[:3, :3]
        assert np.allclose(rel, cam_space @ axes.FLIP_YZ, atol=1e-4)


def _project_with_blender(scene, cam, points_world):
    w = scene.render.resolution_x
    h = scene.render.resolution_y
    out = []
    for p in points_world:
        ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
        out.append((ndc.x * w, (1.0 - ndc.y) * h))
    return np.array(out)


@pytest.mark.parametrize("k, size", [
    (None, (1920, 890)),                                                   # the sample photo
    (np.array([[1500.0, 0, 300], [0, 1500, 700], [0, 0, 1]]), (720, 1280)),  # portrait, off-centre
    (np.array([[2200.0, 0, 1010], [0, 2000, 400], [0, 0, 1]]), (1920, 890)),  # non-square pixels
])
def test_joints_project_where_the_intrinsics_say(scene, standin_lod1, mhr_samples, lod1_rig, k,
                                                 size):
    from tests.rig.standin_data import standin_result
    res = standin_result(str(standin_lod1), mhr_samples, 2, cam_int=k, image_size=size)
    objs = apply_result(bpy.context, res, lod1_rig, options={"correctives": False})
    cam = _objects(objs, "CAMERA")[0]
    for i, arm in enumerate(_objects(objs, "ARMATURE")):
        heads = np.array([(arm.matrix_world @ pb.head)[:] for pb in arm.pose.bones])
        order = [arm.pose.bones.find(n) for n in lod1_rig["joint_names"]]
        heads = heads[order]
        cam_space = axes.mhr_to_camera_points(res["mhr_skel_state"][i, :, :3],
                                              res["pred_cam_t"][i])
        want = project_camera_points(cam_space, res["cam_int"])
        got = _project_with_blender(bpy.context.scene, cam, heads)
        assert np.abs(got - want).max() < 0.05, f"person {i}: {np.abs(got - want).max()} px"


def test_mismatched_rig_is_rejected_before_touching_the_scene(scene, lod1_result, lod1_rig,
                                                              standin_small):
    from tests.rig.standin_data import standin_rig
    small = standin_rig(str(standin_small))
    with pytest.raises(ValueError, match="rest vertices"):
        apply_result(bpy.context, lod1_result, small)
    assert len(bpy.data.objects) == 0
    with pytest.raises(ValueError, match="unknown apply options"):
        apply_result(bpy.context, lod1_result, small, options={"corectives": False})
    with pytest.raises(FileNotFoundError):
        apply_result(bpy.context, lod1_result, lod1_rig, image_path="/nonexistent.png")


def test_zero_persons_builds_only_the_camera(scene, lod1_result, lod1_rig):
    empty = {k: (v[:0] if k.startswith(("pred_", "mhr_", "shape", "scale", "expr", "global",
                                         "body_", "hand_", "bbox", "focal")) else v)
             for k, v in lod1_result.items()}
    objs = apply_result(bpy.context, empty, lod1_rig)
    assert [o.type for o in objs] == ["CAMERA"]


@pytest.mark.parametrize("preset", ["unreal", "mixamo"])
def test_naming_presets(scene, lod1_result, lod1_rig, preset):
    from addon.rig import naming
    from addon.rig.skinning import linear_blend_skinning, skinning_transforms

    plan = naming.bone_plan(lod1_rig["joint_names"], lod1_rig["joint_parents"], preset)
    objs = apply_result(bpy.context, lod1_result, lod1_rig,
                        options={"naming": preset, "correctives": False,
                                 "proportions": "exact"})
    arm, mesh = objs[0], objs[1]
    assert sorted(b.name for b in arm.data.bones) == sorted(plan.names)
    assert [g.name for g in mesh.vertex_groups] == list(plan.names)
    for b, name in enumerate(plan.names):
        parent = arm.data.bones[name].parent
        assert (parent.name if parent else None) == (plan.names[plan.parents[b]]
                                                     if plan.parents[b] >= 0 else None)
    # the rig deforms exactly as numpy LBS with the preset's (merged) skin
    idx, w = naming.merge_skin_weights(lod1_rig["skin_indices"], lod1_rig["skin_weights"],
                                       plan.bone_of_joint)
    t = skinning_transforms(lod1_result["mhr_skel_state"][0][plan.source],
                            lod1_rig["bind_skel_state"][plan.source])
    expect = axes.mhr_to_blender_points(
        linear_blend_skinning(lod1_result["mhr_rest_vertices"][0], idx, w, t))
    world = evaluated_world_vertices(mesh) - np.array(arm.matrix_world)[:3, 3]
    assert np.abs(world - expect).max() < 1e-4


def test_merged_preset_with_correctives_still_matches_mhr(scene, lod1_result, lod1_rig):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"naming": "mixamo"})
    arm, mesh = objs[0], objs[1]
    assert len(arm.data.bones) == 65
    world = evaluated_world_vertices(mesh) - np.array(arm.matrix_world)[:3, 3]
    assert np.abs(world - axes.mhr_to_blender_points(lod1_result["mhr_vertices"][0])).max() < 1e-4
