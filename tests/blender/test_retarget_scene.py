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
    # the FBX take is the rig's action: the pose must survive its re-evaluation
    assert target.animation_data is not None and target.animation_data.action is not None
    bpy.context.scene.frame_set(bpy.context.scene.frame_current + 5)
    bpy.context.scene.frame_set(bpy.context.scene.frame_current - 5)
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
    # the operator registers Rigify's preferences entry too: addon_utils.enable(default_set=False)
    # leaves it out, and Rigify then never registers its rig parameters, so generation fails
    if "rigify" not in bpy.context.preferences.addons:
        try:
            bpy.ops.preferences.addon_enable(module="rigify")
        except RuntimeError:
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


def _ue5_name(name: str) -> str:
    """tests/rig/humanoids.py slot names -> UE5 mannequin names."""
    parts = name.split(".")
    side = f"_{parts[-1].lower()}" if parts[-1] in ("L", "R") else ""
    base = parts[0]
    if base in ("spine", "neck"):
        return f"{base}_{int(parts[1]) + 1:02d}"
    if base in bone_maps.FINGERS:
        return f"{base}_{int(parts[1]) + 1:02d}{side}"
    return {"hips": "pelvis", "upper_arm": "upperarm", "forearm": "lowerarm", "shin": "calf",
            "toe": "ball"}.get(base, base) + side


def build_armature(name, skel, rename, extra=()):
    """A Blender armature from a numpy layout (heads, +Y axes with their rolls, lengths) plus
    unmapped extras (name, parent, head, tail)."""
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    eb = {}
    for i, n in enumerate(skel.names):
        b = data.edit_bones.new(rename(n))
        b.head = (0, 0, 0)
        b.tail = (0, skel.lengths[i], 0)
        b.matrix = Matrix(skel.rest[i].tolist())
        eb[n] = b
    for i, n in enumerate(skel.names):
        if skel.parents[i] >= 0:
            eb[n].parent = eb[skel.names[skel.parents[i]]]
    for child, parent, head, tail in extra:
        b = data.edit_bones.new(child)
        b.head, b.tail = head, tail
        b.parent = data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    obj.matrix_world = Matrix(skel.world.tolist())
    bpy.context.view_layer.update()
    return obj


@pytest.fixture()
def ue5_rig(source):
    """UE5-mannequin names: 5 spine and 2 neck bones, 3-bone thumbs, a root bone above the
    pelvis, twist and IK helper bones, A-pose, long arms; turned 90 degrees and at 1/100 scale
    like an engine import (centimetre bones)."""
    from tests.rig.humanoids import humanoid, object_matrix

    skel, _ = humanoid(spine=5, neck=2, thumb=3, a_pose=True, arm_scale=1.1, leg_scale=0.95,
                       roll_seed=4)
    cm = skel.rest.copy()
    cm[:, :3, 3] *= 100.0
    from addon.rig.retarget import Skeleton
    skel_cm = Skeleton(skel.names, skel.parents, cm, skel.lengths * 100.0,
                       object_matrix(90, 0.01, (2.0, 1.0, 0.0)))
    obj = build_armature("Manny", skel_cm, _ue5_name, extra=[
        ("root", "pelvis", (0, 0, 0), (0, 20, 0)),
        ("upperarm_twist_01_l", "upperarm_l", (30, 0, 145), (40, 0, 145)),
        ("ik_foot_l", "pelvis", (10, 0, 5), (10, 20, 5))])
    # put the root above the pelvis, as in the mannequin
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    obj.data.edit_bones["pelvis"].parent = None
    obj.data.edit_bones["root"].parent = None
    obj.data.edit_bones["pelvis"].parent = obj.data.edit_bones["root"]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


@pytest.mark.parametrize("ik", [False, True])
def test_ue5_layout_turned_and_scaled(source, ue5_rig, ik):
    found, mapping = bone_maps.detect_map([b.name for b in ue5_rig.data.bones])
    assert found == "unreal" and len(mapping["spine"]) == 5 and len(mapping["thumb.L"]) == 3
    rest, _ = _rest_and_mesh(ue5_rig)
    scene_retarget.retarget_pose(bpy.context, source, ue5_rig, ik=ik)
    turn = np.array(ue5_rig.matrix_world.to_3x3().normalized())
    errors = direction_errors(source, ue5_rig, turn)
    effectors = effector_errors(source, ue5_rig, turn)
    if ik:
        assert max(effectors.values()) < 0.01, effectors
    else:
        assert max(errors.values()) < 5.0, sorted(errors.items(), key=lambda kv: -kv[1])[:4]
        assert max(effectors.values()) > 0.01  # other proportions: FK alone cannot reach
    # helpers keep their rest relation to their parents; the rest pose is untouched
    assert np.allclose(np.array(ue5_rig.pose.bones["ik_foot_l"].matrix_basis), np.eye(4))
    rest2, _ = _rest_and_mesh(ue5_rig)
    assert all(np.array_equal(rest2[n], m) for n, m in rest.items())


def test_rotation_modes_are_kept_and_keys_inserted(source, metarig):
    pbs = metarig.pose.bones
    pbs["upper_arm.L"].rotation_mode = "XZY"
    pbs["forearm.R"].rotation_mode = "AXIS_ANGLE"
    bpy.context.scene.frame_set(7)
    scene_retarget.retarget_pose(bpy.context, source, metarig, keyframe=True)
    assert pbs["upper_arm.L"].rotation_mode == "XZY" and pbs["forearm.R"].rotation_mode == "AXIS_ANGLE"
    errors = direction_errors(source, metarig)
    assert errors["upper_arm.L"] < 0.01 and errors["forearm.R"] < 0.01
    fcurves = _fcurves(metarig)
    paths = {fc.data_path for fc in fcurves}
    assert 'pose.bones["upper_arm.L"].rotation_euler' in paths
    assert 'pose.bones["forearm.R"].rotation_axis_angle' in paths
    assert all(kp.co[0] == 7 for fc in fcurves for kp in fc.keyframe_points)


def _fcurves(obj):
    action = obj.animation_data.action
    if hasattr(action, "layers") and len(action.layers):
        return list(action.layers[0].strips[0].channelbag(obj.animation_data.action_slot).fcurves)
    return list(action.fcurves)


def test_a_clip_becomes_an_action_on_the_target(source, lod1_result, lod1_rig, metarig):
    """Three source frames (person 0's pose, the rest pose, person 1's pose) baked onto the
    metarig; each frame matches a single-pose transfer of that frame and its old action stays."""
    other = apply_result(bpy.context, lod1_result, lod1_rig, options={
        "camera": False, "mesh": False, "collection_name": "other"})[0]
    names = [pb.name for pb in source.pose.bones]
    poses = [[pb.matrix_basis.copy() for pb in source.pose.bones],
             [Matrix.Identity(4) for _ in names],
             [other.pose.bones[n].matrix_basis.copy() for n in names]]
    for frame, basis in zip((1, 2, 3), poses):
        for pb, m in zip(source.pose.bones, basis):
            pb.matrix_basis = m
            pb.keyframe_insert("location", frame=frame)
            pb.keyframe_insert("rotation_quaternion", frame=frame)
            pb.keyframe_insert("scale", frame=frame)
    old = bpy.data.actions.new("users_own")
    metarig.animation_data_create().action = old
    action, stats = scene_retarget.retarget_clip(bpy.context, source, metarig)
    assert stats["frames"] == 3 and metarig.animation_data.action == action
    assert old.name in bpy.data.actions and old.use_fake_user
    worst = 0.0
    for frame in (1, 2, 3):
        bpy.context.scene.frame_set(frame)
        worst = max(worst, max(direction_errors(source, metarig).values()))
    assert worst < 5.0
    assert stats["max_angle_deg"] < 5.0


def test_bad_requests_are_refused_clearly(source, metarig, tmp_path):
    before = {pb.name: np.array(pb.matrix_basis) for pb in metarig.pose.bones}
    empty = bpy.data.objects.new("empty", None)
    bpy.context.scene.collection.objects.link(empty)
    with pytest.raises(ValueError, match="must be an armature"):
        scene_retarget.retarget_pose(bpy.context, source, empty)
    with pytest.raises(ValueError, match="same armature"):
        scene_retarget.retarget_pose(bpy.context, source, source)
    with pytest.raises(ValueError, match="unknown bone map"):
        scene_retarget.retarget_pose(bpy.context, source, metarig, target_map="maya")
    with pytest.raises(FileNotFoundError, match="bone-map file not found"):
        scene_retarget.retarget_pose(bpy.context, source, metarig, target_map=str(tmp_path / "x.json"))
    path = bone_maps.save_map(tmp_path / "wrong.json", {"hips": ["pelvis"]})
    with pytest.raises(ValueError, match="lacks"):
        scene_retarget.retarget_pose(bpy.context, source, metarig, target_map=path)
    with pytest.raises(ValueError, match="only"):
        scene_retarget.retarget_pose(bpy.context, source, metarig, target_map="mixamo")
    # nothing was posed by the refused requests
    assert all(np.array_equal(np.array(pb.matrix_basis), before[pb.name]) for pb in metarig.pose.bones)


def test_a_map_file_drives_a_rig_no_preset_knows(source, metarig, tmp_path):
    _, mapping = bone_maps.detect_map([b.name for b in metarig.data.bones])
    renamed = {}
    for bone in list(metarig.data.bones):
        renamed[bone.name] = f"bn_{len(renamed):03d}"
    for old, new in renamed.items():
        metarig.data.bones[old].name = new
    with pytest.raises(ValueError, match="no bone-map preset"):
        scene_retarget.retarget_pose(bpy.context, source, metarig)
    path = bone_maps.save_map(tmp_path / "mine.json",
                              {s: [renamed[b] for b in bones] for s, bones in mapping.items()})
    pose = scene_retarget.retarget_pose(bpy.context, source, metarig, target_map=path)
    assert pose.max_angle_deg < 5.0 and len(pose.mapped) == sum(len(v) for v in mapping.values())


def test_load_target_from_blend_and_fbx(scene, lod1_result, lod1_rig, tmp_path):
    name = _own_export(lod1_result, lod1_rig, tmp_path, "mixamo").name
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "rig.blend"))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objs = scene_retarget.load_target(bpy.context, tmp_path / "rig.blend")
    assert objs[0].type == "ARMATURE" and objs[0].name == name
    assert any(o.type == "MESH" and o.parent == objs[0] for o in objs)
    with pytest.raises(ValueError, match=".fbx or .blend"):
        scene_retarget.load_target(bpy.context, bone_maps.save_map(tmp_path / "m.json", {"hips": "x"}))
    with pytest.raises(FileNotFoundError):
        scene_retarget.load_target(bpy.context, tmp_path / "none.fbx")


@pytest.fixture()
def generated_rigify(metarig):
    try:
        bpy.ops.pose.rigify_generate()
    except (RuntimeError, AttributeError) as exc:
        pytest.skip(f"Rigify cannot generate here: {exc}")
    rig = next(o for o in bpy.data.objects if o.type == "ARMATURE" and o is not metarig
               and "ORG-spine" in o.data.bones)
    metarig.hide_set(True)
    bpy.context.view_layer.update()
    return rig


def _deform_view(names):
    """The DEF- bones of a generated rig under the metarig's slot map (DEF chains split a
    metarig bone in two: both pieces keep the slot)."""
    return {slot: [d for b in bones for d in (f"DEF-{b}", f"DEF-{b}.001") if d in names]
            for slot, bones in bone_maps.map_bones([n[4:] for n in names if n.startswith("DEF-")],
                                                   "rigify").items()}


@pytest.mark.parametrize("ik", [False, True])
def test_generated_rigify_rig_through_its_fk_controls(source, generated_rigify, ik, monkeypatch):
    rig = generated_rigify
    names = [b.name for b in rig.data.bones]
    assert bone_maps.detect_map(names)[0] == "rigify_fk"
    rest, _ = _rest_and_mesh(rig)
    report = scene_retarget.retarget_pose(bpy.context, source, rig, ik=ik)
    # editable result: limbs switched to FK, the FK controls carry the pose
    switches = [pb for pb in rig.pose.bones if "IK_FK" in pb.keys()]
    assert len(switches) == 4 and all(pb["IK_FK"] == 1.0 for pb in switches)
    assert not np.allclose(np.array(rig.pose.bones["upper_arm_fk.L"].matrix_basis), np.eye(4))
    if not ik:  # keyed on the controls the animator edits
        scene_retarget.retarget_pose(bpy.context, source, rig, keyframe=True)
        paths = {fc.data_path for fc in _fcurves(rig)}
        assert {'pose.bones["upper_arm_fk.L"].rotation_quaternion', 'pose.bones["torso"].location',
                'pose.bones["spine_fk.002"].rotation_quaternion'} <= paths
    deform = _deform_view(names)
    real_detect = bone_maps.detect_map
    monkeypatch.setattr(bone_maps, "detect_map", lambda n: ("rigify", deform) if "DEF-spine" in set(n)
                        else real_detect(n))
    errors = direction_errors(source, rig)
    assert set(errors) >= {"DEF-upper_arm.L", "DEF-forearm.R", "DEF-shin.L", "DEF-spine.003"}
    if ik:
        assert max(effector_errors(source, rig).values()) < 0.01
    else:
        assert max(errors.values()) < 5.0, sorted(errors.items(), key=lambda kv: -kv[1])[:4]
    assert ik or report.max_angle_deg < 5.0
    if ik:
        assert max(report.effector_error.values()) < 0.01
    rest2, _ = _rest_and_mesh(rig)
    assert all(np.array_equal(rest2[n], m) for n, m in rest.items())


def test_a_clip_bakes_onto_a_generated_rigify_rig_through_its_controls(source, lod1_result, lod1_rig,
                                                                      generated_rigify, monkeypatch):
    rig = generated_rigify
    other = apply_result(bpy.context, lod1_result, lod1_rig, options={
        "camera": False, "mesh": False, "collection_name": "other"})[0]
    names = [pb.name for pb in source.pose.bones]
    poses = [[pb.matrix_basis.copy() for pb in source.pose.bones],
             [other.pose.bones[n].matrix_basis.copy() for n in names]]
    for frame, basis in zip((1, 2), poses):
        for pb, m in zip(source.pose.bones, basis):
            pb.matrix_basis = m
            for channel in ("location", "rotation_quaternion", "scale"):
                pb.keyframe_insert(channel, frame=frame)
    action, stats = scene_retarget.retarget_clip(bpy.context, source, rig)
    assert stats["frames"] == 2 and rig.animation_data.action == action
    paths = {fc.data_path for fc in _fcurves(rig)}
    assert 'pose.bones["hand_fk.R"].rotation_quaternion' in paths
    assert not any("ORG-" in p or "DEF-" in p for p in paths)  # keys live on the controls
    deform = _deform_view([b.name for b in rig.data.bones])
    real_detect = bone_maps.detect_map
    monkeypatch.setattr(bone_maps, "detect_map", lambda n: ("rigify", deform) if "DEF-spine" in set(n)
                        else real_detect(n))
    for frame in (1, 2):
        bpy.context.scene.frame_set(frame)
        errors = direction_errors(source, rig)
        assert max(errors.values()) < 5.0, (frame, sorted(errors.items(), key=lambda kv: -kv[1])[:3])
