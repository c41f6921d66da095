"""Apply Pose to Rig in Blender (addon/scene/retarget.py): MHR poses from the stand-in's real 3DB
samples onto rigs built here: our own FBX exports (UE-named with every joint, and Mixamo-named),
Rigify's human metarig and a UE5-mannequin-named layout with other spine, neck and finger counts,
turned and scaled like an engine import. Directions and effectors are measured from Blender's
own evaluated pose, in world space, independently of the retargeter's arithmetic."""
from __future__ import annotations

import addon_utils
import numpy as np
import pytest

import bpy
from mathutils import Matrix

from addon.rig import bone_maps
from addon.scene import retarget as scene_retarget
from addon.scene.apply import apply_result
from addon.scene.export import export_fbx


@pytest.fixture()
def source(scene, lod1_result, lod1_rig):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"camera": False, "mesh": False})
    return objs[0]


def _points(obj, mapping, slot, posed: bool) -> np.ndarray:
    """World polyline of a slot: the anchor's head (spine, fingers), chain heads, then the aim
    slot's head or the last tail."""
    w = np.array(obj.matrix_world)
    bones = obj.pose.bones if posed else obj.data.bones
    head = (lambda b: b.head) if posed else (lambda b: b.head_local)
    tail = (lambda b: b.tail) if posed else (lambda b: b.tail_local)
    anchor = bone_maps.anchor_slot(slot)
    start = [mapping[anchor][0]] if anchor in mapping else []
    pts = [np.array(head(bones[n])) for n in start + mapping[slot]]
    aim = bone_maps.aim_slot(slot)
    pts.append(np.array(head(bones[mapping[aim][0]])) if aim in mapping else
               np.array(tail(bones[mapping[slot][-1]])))
    return np.array(pts) @ w[:3, :3].T + w[:3, 3]


def _fractions(pts):
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()


def _angle(a, b):
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _at(pts, fracs, f):
    return np.array([np.interp(f, fracs, pts[:, k]) for k in range(3)])


def direction_errors(src, tgt, turn=np.eye(3)) -> dict[str, float]:
    """Per mapped target bone (hips aside): the angle between its posed direction and the
    source's direction over the same stretch of the body (the source chain between the same
    fractions of its length; the bone itself where counts match), turned by the known facing
    difference."""
    _, smap = bone_maps.detect_map([b.name for b in src.data.bones])
    _, tmap = bone_maps.detect_map([b.name for b in tgt.data.bones])
    out = {}
    for slot in tmap:
        if slot == "hips" or slot not in smap:
            continue
        tf = _fractions(_points(tgt, tmap, slot, posed=False))
        sf = _fractions(_points(src, smap, slot, posed=False))
        t_pose, s_pose = _points(tgt, tmap, slot, posed=True), _points(src, smap, slot, posed=True)
        o = 1 if bone_maps.anchor_slot(slot) in tmap else 0  # polylines start at the anchor
        for k, name in enumerate(tmap[slot]):
            chord = _at(s_pose, sf, tf[k + o + 1]) - _at(s_pose, sf, tf[k + o])
            out[name] = _angle(t_pose[k + o + 1] - t_pose[k + o], turn @ chord)
    return out


def effector_errors(src, tgt, turn=np.eye(3)) -> dict[str, float]:
    """Hands and feet (heads) against the source's, moved like the root: the target's rest hips
    plus the source's offset from its rest hips, scaled by the leg-length ratio."""
    _, smap = bone_maps.detect_map([b.name for b in src.data.bones])
    _, tmap = bone_maps.detect_map([b.name for b in tgt.data.bones])

    def world(obj, name, posed):
        b = obj.pose.bones[name] if posed else obj.data.bones[name]
        return np.array(obj.matrix_world @ (b.head if posed else b.head_local))

    def legs(obj, m):
        return np.mean([sum(np.linalg.norm(world(obj, m[f"{b}.{s}"][0], False) -
                                           world(obj, m[f"{a}.{s}"][0], False))
                            for a, b in (("thigh", "shin"), ("shin", "foot"))) for s in "LR"])

    ratio = legs(tgt, tmap) / legs(src, smap)
    hips_s, hips_t = world(src, smap["hips"][0], False), world(tgt, tmap["hips"][0], False)
    out = {}
    for slot in ("hand.L", "hand.R", "foot.L", "foot.R"):
        goal = hips_t + ratio * turn @ (world(src, smap[slot][0], True) - hips_s)
        out[slot] = float(np.linalg.norm(world(tgt, tmap[slot][0], True) - goal))
    return out


def _rest_and_mesh(tgt):
    rest = {b.name: np.array(b.matrix_local) for b in tgt.data.bones}
    meshes = {c.name: np.array([v.co for v in c.data.vertices]) for c in tgt.children
              if c.type == "MESH"}
    return rest, meshes


def _import_fbx(path):
    before = set(bpy.data.objects)
    bpy.ops.import_scene.fbx(filepath=str(path))
    return next(o for o in bpy.data.objects if o not in before and o.type == "ARMATURE")


def _own_export(lod1_result, lod1_rig, tmp_path, naming):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={
        "naming": naming, "pose": False, "camera": False, "collection_name": f"target_{naming}"})
    path = export_fbx(tmp_path / f"{naming}.fbx", [objs[0]], preset="unity")
    for o in objs:
        bpy.data.objects.remove(o)
    return _import_fbx(path)


def test_same_bones_same_proportions_within_2_degrees(source, lod1_result, lod1_rig, tmp_path):
    """Our UE-named export keeps every joint: the person's own proportions and bone counts."""
    target = _own_export(lod1_result, lod1_rig, tmp_path, "unreal")
    rest, meshes = _rest_and_mesh(target)
    assert meshes, "the exported character has its mesh"
    pose = scene_retarget.retarget_pose(bpy.context, source, target)
    errors = direction_errors(source, target)
    assert len(errors) >= 50 and max(errors.values()) < 2.0, sorted(errors.items(), key=lambda kv: -kv[1])[:4]
    assert pose.max_angle_deg < 2.0
    assert max(effector_errors(source, target).values()) < 0.05
    rest2, meshes2 = _rest_and_mesh(target)
    for name, m in rest.items():
        np.testing.assert_array_equal(rest2[name], m)
    for name, v in meshes.items():
        np.testing.assert_array_equal(meshes2[name], v)
    assert "worst direction error" in target[scene_retarget.REPORT_PROP]["lines"]


@pytest.mark.parametrize("ik", [False, True])
def test_mixamo_fbx_other_spine_count(source, lod1_result, lod1_rig, tmp_path, ik):
    target = _own_export(lod1_result, lod1_rig, tmp_path, "mixamo")
    pose = scene_retarget.retarget_pose(bpy.context, source, target, ik=ik)
    errors = direction_errors(source, target)
    limbs = {n: e for n, e in errors.items() if any(k in n for k in ("Arm", "Leg", "Foot"))}
    if ik:
        # IK bends elbows and knees to reach: only the hands and feet are held to the source
        assert max(effector_errors(source, target).values()) < 0.01
        assert max(pose.effector_error.values()) < 0.01
        others = {n: e for n, e in errors.items() if n not in limbs}
        assert max(others.values()) < 5.0, sorted(others.items(), key=lambda kv: -kv[1])[:4]
    else:
        assert max(errors.values()) < 5.0, sorted(errors.items(), key=lambda kv: -kv[1])[:4]
        assert max(limbs.values()) < 2.0


@pytest.fixture()
def metarig(source):
    addon_utils.enable("rigify", default_set=False)
    if not hasattr(bpy.ops.object, "armature_human_metarig_add"):
        pytest.skip("this bpy build ships no Rigify")
    bpy.ops.object.armature_human_metarig_add()
    rig = bpy.context.active_object
    rig.location = (1.5, 0.0, 0.0)
    bpy.context.view_layer.update()
    return rig


@pytest.mark.parametrize("ik", [False, True])
def test_rigify_metarig(source, metarig, ik):
    found, _ = bone_maps.detect_map([b.name for b in metarig.data.bones])
    assert found == "rigify"
    rest, _ = _rest_and_mesh(metarig)
    scene_retarget.retarget_pose(bpy.context, source, metarig, ik=ik)
    errors = direction_errors(source, metarig)
    if ik:
        assert max(effector_errors(source, metarig).values()) < 0.01
    else:
        assert max(errors.values()) < 5.0, sorted(errors.items(), key=lambda kv: -kv[1])[:4]
    rest2, _ = _rest_and_mesh(metarig)
    assert all(np.array_equal(rest2[n], m) for n, m in rest.items())
