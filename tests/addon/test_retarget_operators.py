# SPDX-License-Identifier: GPL-3.0-or-later
"""The "Pose Your Rig" panel's operators in the enabled add-on: Apply Pose to Rig (undoable),
Bake Animation to Rig, the bone-map editor (fill from the rig, edit, save, load)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

from addon_helpers import enabled_addon  # noqa: E402

from addon.rig import bone_maps  # noqa: E402
from addon.scene.apply import apply_result  # noqa: E402


@pytest.fixture
def context():
    yield from enabled_addon()


@pytest.fixture
def rigs(context, standin_lod1, mhr_samples):
    from tests.blender.test_retarget_scene import _ue5_name, build_armature
    from tests.rig.humanoids import humanoid
    from tests.rig.standin_data import standin_result, standin_rig

    rig = standin_rig(str(standin_lod1))
    result = standin_result(str(standin_lod1), mhr_samples, n_persons=1)
    source = apply_result(context, result, rig, options={"camera": False, "mesh": False})[0]
    skel, _ = humanoid(spine=5, neck=2, thumb=3, roll_seed=1)
    target = build_armature("Manny", skel, _ue5_name)
    context.view_layer.objects.active = source
    return source, target


def _posed(obj) -> list[str]:
    return [pb.name for pb in obj.pose.bones if not np.allclose(np.array(pb.matrix_basis), np.eye(4))]


def test_apply_pose_to_rig(context, rigs) -> None:
    source, target = rigs
    from addon.ui.retarget import SAM3D_OT_retarget_pose

    assert "UNDO" in SAM3D_OT_retarget_pose.bl_options  # Ctrl+Z takes the pose back
    settings = context.scene.sam3d_retarget
    with pytest.raises(RuntimeError, match="Target Rig"):
        bpy.ops.sam3d_body.retarget_pose()
    settings.target = target
    assert bpy.ops.sam3d_body.retarget_pose() == {"FINISHED"}
    assert len(_posed(target)) >= 50
    assert "worst direction error" in target["sam3d_retarget"]["lines"]
    settings.source = target
    with pytest.raises(RuntimeError, match="same armature"):
        bpy.ops.sam3d_body.retarget_pose()


def test_bone_map_editor_round_trip(context, rigs, tmp_path) -> None:
    source, target = rigs
    settings = context.scene.sam3d_retarget
    settings.target = target
    assert bpy.ops.sam3d_body.bone_map_fill() == {"FINISHED"}
    assert settings.bone_map == "CUSTOM" and len(settings.slots) == len(bone_maps.SLOTS)
    rows = {row.slot: row for row in settings.slots}
    assert rows["spine"].bones == "spine_01, spine_02, spine_03, spine_04, spine_05"
    rows["toe.L"].bones = ""  # leave the left toe alone
    path = tmp_path / "manny.json"
    assert bpy.ops.sam3d_body.bone_map_save(filepath=str(path)) == {"FINISHED"}
    assert "toe.L" not in bone_maps.load_map(path)
    settings.slots.clear()
    assert bpy.ops.sam3d_body.bone_map_load(filepath=str(path)) == {"FINISHED"}
    assert {row.slot: row.bones for row in settings.slots}["toe.L"] == ""
    target.pose.bones["ball_l"].rotation_quaternion = (0.9, 0.1, 0.0, 0.0)
    before = target.pose.bones["ball_l"].matrix_basis.copy()
    assert bpy.ops.sam3d_body.retarget_pose() == {"FINISHED"}
    assert np.allclose(np.array(target.pose.bones["ball_l"].matrix_basis), np.array(before))
    assert "ball_r" in _posed(target)
    rows = {row.slot: row for row in settings.slots}
    rows["hand.L"].bones = "hand_l, index_01_l"
    with pytest.raises(RuntimeError, match="takes one bone"):
        bpy.ops.sam3d_body.retarget_pose()


def test_bake_animation_to_rig(context, rigs) -> None:
    source, target = rigs
    for frame, scale in ((1, 1.0), (4, 0.0)):
        for pb in source.pose.bones:
            pb.rotation_quaternion = pb.rotation_quaternion.slerp((1, 0, 0, 0), 1 - scale) \
                if scale < 1 else pb.rotation_quaternion
            pb.keyframe_insert("rotation_quaternion", frame=frame)
    settings = context.scene.sam3d_retarget
    settings.target = target
    assert bpy.ops.sam3d_body.retarget_clip() == {"FINISHED"}
    action = target.animation_data.action
    assert action is not None and target["sam3d_retarget"]["frames"] == 4
