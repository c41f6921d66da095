"""Apply Pose to Rig: read two armatures, retarget (addon/rig/retarget.py), write the target's pose.

Plain functions the operator, the CLI and the tests call. The source is any armature with a
humanoid map (normally one of ours); the target is the user's rig. Only the target's pose bones
change (and its action for a clip): its rest pose, constraints, meshes and other bones stay.
Writes go through builder.py.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..rig import bone_maps, motion
from ..rig.axes import matrix_to_quat_wxyz
from ..rig.retarget import Retargeter, RetargetPose, Skeleton

REPORT_PROP = "sam3d_retarget"  # on the target object: the last transfer's quality lines
AUTO = "auto"


def _check_armature(obj: Any, what: str) -> None:
    if obj is None or getattr(obj, "type", None) != "ARMATURE":
        raise ValueError(f"the {what} must be an armature object, got "
                         f"{getattr(obj, 'name', obj)!r}")
    if obj.pose is None:
        raise ValueError(f"the {what} {obj.name!r} has no pose")


def _matrices(collection: Any, attr: str) -> np.ndarray:
    flat = np.empty(len(collection) * 16, dtype=np.float32)
    collection.foreach_get(attr, flat)
    return flat.reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)  # column-major in bpy


def skeleton_of(obj: Any) -> Skeleton:
    """An armature object's rest (bone order of ``obj.data.bones``) and world matrix."""
    _check_armature(obj, "armature")
    bones = obj.data.bones
    names = [b.name for b in bones]
    parents = np.array([-1 if b.parent is None else bones.find(b.parent.name) for b in bones])
    return Skeleton(tuple(names), parents, _matrices(bones, "matrix_local"),
                    np.array([b.length for b in bones]), np.array(obj.matrix_world),
                    np.array([b.use_inherit_rotation for b in bones]))


def pose_matrices(obj: Any, names: Sequence[str]) -> np.ndarray:
    """Armature-space pose matrices (``pose_bone.matrix``) in ``names`` order."""
    mats = _matrices(obj.pose.bones, "matrix")
    order = [obj.pose.bones.find(n) for n in names]
    return mats[order]


def pose_bases(obj: Any, names: Sequence[str]) -> np.ndarray:
    mats = _matrices(obj.pose.bones, "matrix_basis")
    return mats[[obj.pose.bones.find(n) for n in names]]


def bone_map_for(obj: Any, spec: str | os.PathLike | Mapping[str, Any] | None = AUTO
                 ) -> tuple[str, dict[str, list[str]]]:
    """(preset, map) for an armature: ``auto`` detects from its bone names; a preset name uses
    that preset; a ``.json`` path loads a map file; a mapping is used as given. Every bone the
    map names must exist on the armature."""
    names = [b.name for b in obj.data.bones]
    if spec is None or spec == AUTO:
        preset, mapping = bone_maps.detect_map(names)
    elif isinstance(spec, Mapping):
        preset, mapping = "custom", bone_maps.validate_map(spec)
    elif str(spec) in bone_maps.PRESETS:
        preset, mapping = str(spec), bone_maps.map_bones(names, str(spec))
        if sum(len(v) for v in mapping.values()) < bone_maps.MIN_DETECTED_BONES:
            raise ValueError(f"the {spec!r} preset finds only {sum(len(v) for v in mapping.values())} "
                             f"bones on {obj.name!r}; pick another preset or a map file")
    elif str(spec).lower().endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"bone-map file not found: {spec}")
        preset, mapping = "file", bone_maps.load_map(spec)
    else:
        raise ValueError(f"unknown bone map {spec!r}: use 'auto', one of {list(bone_maps.PRESETS)} "
                         "or a .json map file")
    missing = sorted({b for bones in mapping.values() for b in bones} - set(names))
    if missing:
        raise ValueError(f"the bone map names bones {obj.name!r} lacks: {missing[:8]}")
    return preset, mapping


def _retargeter(source: Any, target: Any, source_map: Any, target_map: Any,
                root_motion: bool) -> tuple[Retargeter, str, str]:
    _check_armature(source, "source")
    _check_armature(target, "target")
    if source == target:
        raise ValueError("the source and target are the same armature")
    s_preset, smap = bone_map_for(source, source_map)
    t_preset, tmap = bone_map_for(target, target_map)
    rt = Retargeter(skeleton_of(source), smap, skeleton_of(target), tmap, root_motion=root_motion)
    return rt, s_preset, t_preset


def _store_report(target: Any, pose: RetargetPose, t_preset: str, frames: int = 1) -> None:
    target[REPORT_PROP] = {"map": t_preset, "bones": len(pose.mapped), "frames": frames,
                           "max_angle_deg": pose.max_angle_deg,
                           "lines": "\n".join(pose.summary())}


def _write(target: Any, rt: Retargeter, pose: RetargetPose, keyframe: int | None) -> None:
    from . import builder

    names = [rt.target.names[b] for b in pose.mapped]
    bases = pose.basis[list(pose.mapped)]
    builder.set_bone_bases(target, names, bases[:, :3, 3], matrix_to_quat_wxyz(bases[:, :3, :3]),
                           keyframe)


def retarget_pose(context: Any, source: Any, target: Any, source_map: Any = AUTO,
                  target_map: Any = AUTO, ik: bool = False, root_motion: bool = True,
                  keyframe: bool = False) -> RetargetPose:
    """Pose ``target`` like ``source`` at the current frame (keyed there with ``keyframe``).
    Returns the transfer with its quality numbers, also stored on the target
    (``target["sam3d_retarget"]``)."""
    if _drives_generated_rigify(target, target_map):
        return _retarget_generated_rigify(context, source, target, source_map, ik, root_motion,
                                          keyframe)
    rt, _, t_preset = _retargeter(source, target, source_map, target_map, root_motion)
    context.view_layer.update()
    pose = rt.pose(pose_matrices(source, rt.source.names), np.array(source.matrix_world),
                   pose_bases(target, rt.target.names), ik=ik)
    # An animated rig (an FBX import carries its take) re-applies its action on the next frame
    # change or file load, which would silently drop the pose: key it there instead.
    animated = animates(target, [rt.target.names[b] for b in pose.mapped])
    _write(target, rt, pose, context.scene.frame_current if keyframe or animated else None)
    context.view_layer.update()
    _store_report(target, pose, t_preset)
    if animated and not keyframe:
        target[REPORT_PROP]["lines"] += (f"\nkeyed at frame {context.scene.frame_current}: "
                                         "the rig's action animates these bones")
    return pose


def animates(obj: Any, names: Sequence[str]) -> bool:
    """Whether the object's action has F-curves on any of these pose bones."""
    anim = obj.animation_data
    action = anim.action if anim else None
    if action is None:
        return False
    if hasattr(action, "layers"):
        slot = getattr(anim, "action_slot", None)
        curves = [fc for layer in action.layers for strip in layer.strips
                  for fc in (strip.channelbag(slot).fcurves if slot is not None and
                             strip.channelbag(slot) is not None else [])]
    else:
        curves = list(action.fcurves)
    wanted = {f'pose.bones["{n}"]' for n in names}
    return any(fc.data_path.rsplit(".", 1)[0] in wanted for fc in curves)


def _action_frames(obj: Any, scene: Any) -> tuple[int, int]:
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        return scene.frame_start, scene.frame_end
    start, end = action.frame_range
    return int(round(start)), int(round(end))


def retarget_clip(context: Any, source: Any, target: Any, frames: tuple[int, int] | None = None,
                  source_map: Any = AUTO, target_map: Any = AUTO, ik: bool = False,
                  root_motion: bool = True, action_name: str | None = None) -> tuple[Any, dict[str, float]]:
    """Bake the source's animation onto ``target`` as a new action (every frame of ``frames``,
    default the source action's range). Root motion is measured from the first frame. Returns the
    action and the worst quality numbers over the clip."""
    from . import builder

    scene = context.scene
    first, last = frames if frames is not None else _action_frames(source, scene)
    if last < first:
        raise ValueError(f"empty frame range {first}..{last}")
    if _drives_generated_rigify(target, target_map):
        return _bake_generated_rigify(context, source, target, (first, last), source_map, ik,
                                      root_motion, action_name)
    keep = scene.frame_current
    scene.frame_set(first)
    try:
        rt, _, t_preset = _retargeter(source, target, source_map, target_map, root_motion)
        start_basis = pose_bases(target, rt.target.names)
        keys = np.arange(first, last + 1)
        poses = []
        for f in keys:
            scene.frame_set(int(f))
            poses.append(rt.pose(pose_matrices(source, rt.source.names),
                                 np.array(source.matrix_world), start_basis, ik=ik))
    finally:
        scene.frame_set(keep)
    mapped = list(poses[0].mapped)
    bases = np.stack([p.basis[mapped] for p in poses])
    quat = matrix_to_quat_wxyz(bases[..., :3, :3])
    quat = motion.quat_continuity(quat[..., [1, 2, 3, 0]])[..., [3, 0, 1, 2]]  # no flips between keys
    action = builder.key_bone_bases(target, [rt.target.names[b] for b in mapped], keys,
                                    bases[..., :3, 3], quat,
                                    action_name or f"{target.name}_{source.name}")
    scene.frame_set(keep)
    worst = max(poses, key=lambda p: np.nan_to_num(p.max_angle_deg, nan=-1))
    stats = {"frames": float(len(keys)), "max_angle_deg": float(worst.max_angle_deg),
             "max_effector_error": max((max(p.effector_error.values(), default=0.0) for p in poses),
                                       default=0.0)}
    _store_report(target, worst, t_preset, frames=len(keys))
    return action, stats


def load_target(context: Any, path: str | os.PathLike) -> list[Any]:
    """Bring a rig into the scene from an ``.fbx`` (Blender's importer) or a ``.blend`` (its
    armatures and their meshes appended). Returns the new objects, the armature that looks
    most like a humanoid first; ValueError when the file holds no armature."""
    import bpy

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"target rig not found: {p}")
    before = set(bpy.data.objects)
    suffix = os.path.splitext(p)[1].lower()
    if suffix == ".fbx":
        result: Any = bpy.ops.import_scene.fbx(filepath=p)
        if "FINISHED" not in result:
            raise ValueError(f"Blender's FBX importer could not read {p}")
        new = [o for o in bpy.data.objects if o not in before]
    elif suffix == ".blend":
        libraries: Any = bpy.data.libraries  # the 4.2 stubs type load() as returning None
        with libraries.load(p, link=False) as (src, dst):
            dst.objects = list(src.objects)
        wanted = [o for o in dst.objects if o is not None and (
            o.type == "ARMATURE" or (o.parent is not None and o.parent.type == "ARMATURE"))]
        collection = bpy.data.collections.new(os.path.splitext(os.path.basename(p))[0])
        context.scene.collection.children.link(collection)
        for obj in wanted:
            collection.objects.link(obj)
        for obj in dst.objects:
            if obj is not None and obj not in wanted and obj.users == 0:
                bpy.data.objects.remove(obj)
        new = wanted
    else:
        raise ValueError(f"the target rig must be an .fbx or .blend file, got {p}")
    armatures = [o for o in new if o.type == "ARMATURE"]
    if not armatures:
        raise ValueError(f"{p} holds no armature to pose")

    def score(obj: Any) -> int:
        try:
            return sum(len(v) for v in bone_maps.detect_map([b.name for b in obj.data.bones])[1].values())
        except ValueError:
            return -1
    armatures.sort(key=score, reverse=True)
    context.view_layer.update()
    return armatures + [o for o in new if o.type != "ARMATURE"]


def _drives_generated_rigify(target: Any, target_map: Any) -> bool:
    if not (target_map in (None, AUTO, "rigify_fk") and getattr(target, "type", None) == "ARMATURE"):
        return False
    names = [b.name for b in target.data.bones]
    if not bone_maps.is_generated_rigify(names):
        return False
    return target_map == "rigify_fk" or bone_maps.detect_map(names)[0] == "rigify_fk"


def _depth(obj: Any, name: str) -> int:
    bone, depth = obj.data.bones[name], 0
    while bone.parent is not None:
        bone, depth = bone.parent, depth + 1
    return depth


def org_skeleton(obj: Any) -> Skeleton:
    """The ORG bones of a generated Rigify rig as a plain hierarchy, the metarig's. An ORG bone
    takes the first ORG bone above it, or the ORG bone of the first deform bone above it (the
    palms hang off ``DEF-hand``); the spine's ORG bones hang off tweak and FK bones instead,
    so each takes the ORG bone whose tail its head sits on (the metarig's connected chain)."""
    bones = obj.data.bones
    names = [b.name for b in bones if b.name.startswith("ORG-")]
    index = {n: i for i, n in enumerate(names)}
    tails = {n: np.array(bones[n].tail_local) for n in names}
    parents: list[int] = []
    for n in names:
        parent, bone = -1, bones[n].parent
        while bone is not None and parent == -1:
            hit = bone.name if bone.name in index else _org_of_deform(bone.name, index)
            if hit is not None and hit != n:
                parent = index[hit]
            bone = bone.parent
        if parent == -1:
            head = np.array(bones[n].head_local)
            near = [m for m in names if m != n and np.linalg.norm(tails[m] - head) < 1e-5
                    and not _org_below(bones, m, n)]
            if near:
                parent = index[near[0]]
        parents.append(parent)
    mats = np.array([np.array(bones[n].matrix_local) for n in names])
    return Skeleton(tuple(names), np.array(parents), mats, np.array([bones[n].length for n in names]),
                    np.array(obj.matrix_world))


def _org_of_deform(name: str, org: dict[str, int]) -> str | None:
    """``DEF-forearm.L.001`` -> ``ORG-forearm.L`` (Rigify splits deform bones into segments)."""
    if not name.startswith("DEF-"):
        return None
    stem = name[4:]
    for candidate in (f"ORG-{stem}", f"ORG-{stem.rsplit('.', 1)[0]}"):
        if candidate in org:
            return candidate
    return None


def _org_below(bones: Any, name: str, ancestor: str) -> bool:
    """Whether ``ancestor`` is above ``name`` in the real hierarchy (a cycle guard)."""
    bone = bones[name].parent
    while bone is not None:
        if bone.name == ancestor:
            return True
        bone = bone.parent
    return False


# Depth order settles the stock rig in one pass; the second covers controls whose MCH parents
# follow controls placed later (parent switches, custom follow settings).
RIGIFY_FK_PASSES = 2


def _retarget_generated_rigify(context: Any, source: Any, target: Any, source_map: Any, ik: bool,
                               root_motion: bool, keyframe: bool) -> RetargetPose:
    """A generated Rigify rig: compute on its ORG skeleton (the clean hierarchy), switch the
    limbs to FK, then put each FK control where its ORG bone must go, letting Blender solve
    the controls' bases through the constraint-driven parents. The controls stay editable."""
    from . import builder

    _check_armature(source, "source")
    names = [b.name for b in target.data.bones]
    controls = bone_maps.map_bones(names, "rigify_fk")
    org = bone_maps.rigify_org_map(names)
    _, smap = bone_map_for(source, source_map)
    rt = Retargeter(skeleton_of(source), smap, org_skeleton(target), org, root_motion=root_motion)
    context.view_layer.update()
    pose = rt.pose(pose_matrices(source, rt.source.names), np.array(source.matrix_world), ik=ik)
    for pb in target.pose.bones:
        if "IK_FK" in pb.keys():  # Rigify's limb switch: 1 = FK
            builder.set_custom_property(target, pb.name, "IK_FK", 1.0)
    rest = {n: np.array(target.data.bones[n].matrix_local) for n in names}
    pairs = [(c, o) for slot in controls if slot in org for c, o in zip(controls[slot], org[slot])]
    if "spine_fk" in names and "ORG-spine" in names:
        # the hips' ORG bone follows the downward FK bone under the spine, not the torso
        pairs.append(("spine_fk", "ORG-spine"))
    if "tweak_spine.005" in names and "ORG-spine.005" in names:
        # one neck control bends both neck bones alike; the tweak between them bends them apart
        pairs.append(("tweak_spine.005", "ORG-spine.005"))
    pairs.sort(key=lambda co: _depth(target, co[0]))
    for _ in range(RIGIFY_FK_PASSES):
        for c, o in pairs:
            m = pose.posed[rt.target.index(o)] @ np.linalg.inv(rest[o]) @ rest[c]
            builder.set_bone_matrix(target, c, m)
            context.view_layer.update()
    evaluated = pose_matrices(target, rt.target.names)
    angles, errors = rt.measure(evaluated, rt.last_source_world)
    result = RetargetPose(pose.basis, evaluated, pose.mapped, angles, errors)
    if keyframe or animates(target, [c for c, _ in pairs]):
        control_names = [c for c, _ in pairs]
        bases = pose_bases(target, control_names)
        builder.set_bone_bases(target, control_names, bases[:, :3, 3],
                               matrix_to_quat_wxyz(bases[:, :3, :3]), context.scene.frame_current)
    _store_report(target, result, "rigify_fk (via ORG bones)")
    return result


def _bake_generated_rigify(context: Any, source: Any, target: Any, frames: tuple[int, int],
                           source_map: Any, ik: bool, root_motion: bool,
                           action_name: str | None) -> tuple[Any, dict[str, float]]:
    """A clip onto a generated Rigify rig: each frame placed through the FK controls (their
    constraint-driven parents need Blender's evaluation) and keyed on them, in a new action."""
    import bpy

    scene = context.scene
    keep = scene.frame_current
    anim = target.animation_data or target.animation_data_create()
    old = anim.action
    if old is not None:
        old.use_fake_user = True  # the rig's own animation stays in the file
    anim.action = bpy.data.actions.new(action_name or f"{target.name}_{source.name}")
    poses = []
    try:
        for f in range(frames[0], frames[1] + 1):
            scene.frame_set(f)
            poses.append(_retarget_generated_rigify(context, source, target, source_map, ik,
                                                    root_motion, keyframe=True))
    finally:
        scene.frame_set(keep)
    worst = max(poses, key=lambda p: np.nan_to_num(p.max_angle_deg, nan=-1))
    stats = {"frames": float(len(poses)), "max_angle_deg": float(worst.max_angle_deg),
             "max_effector_error": max((max(p.effector_error.values(), default=0.0) for p in poses),
                                       default=0.0)}
    _store_report(target, worst, "rigify_fk (via ORG bones)", frames=len(poses))
    return anim.action, stats
