"""Exported FBX files in an independent reader (assimp) and the static-pose clip."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import bpy

from addon.scene.apply import apply_result
from addon.scene.export import export_fbx
from addon.rig import naming
from tests.blender.helpers import evaluated_world_vertices


def _assimp_counts(path) -> dict[str, int]:
    run = subprocess.run(["assimp", "info", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    counts = dict(re.findall(r"^(\w[\w ]*?):\s+(\d+)\s*$", run.stdout, flags=re.M))
    return {k: int(v) for k, v in counts.items()}


@pytest.mark.skipif(shutil.which("assimp") is None, reason="assimp (assimp-utils) not on PATH")
@pytest.mark.parametrize("preset,naming_preset", [("unity", "mixamo"), ("unreal", "unreal"),
                                                  ("blender", "mhr")])
def test_fbx_loads_in_assimp_with_all_bones_and_meshes(scene, lod1_result, lod1_rig, tmp_path,
                                                       preset, naming_preset):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"naming": naming_preset})
    characters = [o for o in objs if o.type in {"ARMATURE", "MESH"}]
    path = export_fbx(tmp_path / "people.fbx", characters, preset=preset)
    n_bones = len(naming.bone_plan(lod1_rig["joint_names"], lod1_rig["joint_parents"],
                                   naming_preset).names)
    counts = _assimp_counts(path)
    assert counts["Meshes"] == 2
    assert counts["Bones"] == 2 * n_bones  # every bone is a skin cluster of its person's mesh
    assert counts["Faces"] == 2 * lod1_rig["faces"].shape[0]
    assert counts["Animations"] == 1  # the static pose travels as a clip
    assert counts["Cameras"] == 0


def test_static_pose_is_a_two_frame_clip_and_scene_range_is_kept(scene, lod1_result, lod1_rig,
                                                                   tmp_path):
    objs = apply_result(bpy.context, lod1_result, lod1_rig)
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 1, 250
    before = evaluated_world_vertices(objs[1])
    path = export_fbx(tmp_path / "unity.fbx", objs[:1], preset="unity")
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (1, 250)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=path, automatic_bone_orientation=False, anim_offset=0.0)
    arm = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
    mesh = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    action = arm.animation_data.action
    assert action is not None and tuple(action.frame_range) == (1.0, 2.0)
    for frame in (1, 2):  # both keys hold the pose
        bpy.context.scene.frame_set(frame)
        assert np.abs(evaluated_world_vertices(mesh) - before).max() < 1e-4
