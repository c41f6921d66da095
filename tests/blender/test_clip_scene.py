"""apply_clip: a clip result of the tiny fixture -> keyed armatures that play the per-frame poses,
the scene's frame range and fps, the background movie, re-keying, FBX with the animation."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bpy

from addon.protocol.clip_result import check_clip, track_rows
from addon.protocol.result_file import split_rig_arrays
from addon.scene.animation import apply_clip
from tests.video.clip_data import panned_clip, write_movie


@pytest.fixture(scope="module")
def clip_files(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from server.__main__ import main

    folder = tmp_path_factory.mktemp("clip_scene")
    frames, boxes = panned_clip(parity_dir / "images")
    movie = write_movie(folder / "pan.mp4", frames)
    (folder / "boxes.json").write_text(json.dumps({str(t): b.tolist() for t, b in enumerate(boxes)}))
    out = folder / "pan.npz"
    assert main(["reconstruct", str(movie), "--out", str(out), "--checkpoint",
                 str(parity_dir / "checkpoints" / "dinov3_tiny"), "--device", "cpu", "--mode", "body",
                 "--detector", "none", "--track-boxes", str(folder / "boxes.json")]) == 0
    return movie, out


def _load(path: Path):
    with np.load(path, allow_pickle=False) as data:
        clip, rig = split_rig_arrays({k: data[k] for k in data.files})
    return check_clip(clip), rig


def _fcurves(obj):
    action = obj.animation_data.action
    if hasattr(action, "layers") and len(action.layers):
        return list(action.layers[0].strips[0].channelbag(obj.animation_data.action_slot).fcurves)
    return list(action.fcurves)


def _joint_world(arm, names: list[str]) -> np.ndarray:
    return np.array([list(arm.matrix_world @ arm.pose.bones[n].head) for n in names])


def test_every_frame_is_keyed_and_plays_the_reconstructed_pose(scene, clip_files) -> None:
    movie, result = clip_files
    clip, rig = _load(result)
    objs = apply_clip(bpy.context, clip, rig, movie_path=str(movie), options={"smoothing": 0.0, "foot_lock": False})
    arm = objs[0]
    rows = track_rows(clip, 0)
    assert scene.frame_start == 1 and scene.frame_end == len(rows) and scene.render.fps == 12
    curves = _fcurves(arm)
    assert curves and all(len(fc.keyframe_points) == len(rows) for fc in curves)
    assert sorted({kp.co[0] for kp in curves[0].keyframe_points}) == [float(f + 1) for f in clip["frame"][rows]]
    cam = next(o for o in objs if o.type == "CAMERA")
    assert cam.data.background_images[0].source == "MOVIE_CLIP"
    # At each frame the evaluated joints are the reconstruction's (camera frame, relative to
    # the first frame's placement), i.e. the keys reproduce the per-frame skeleton.
    from addon.rig.axes import mhr_to_blender_points, person_offset_blender

    names = [b.name for b in arm.pose.bones]
    index = {n: i for i, n in enumerate(rig.joint_names)}
    t0 = clip["pred_cam_t"][rows[0]]
    for k in (0, len(rows) // 2, len(rows) - 1):
        scene.frame_set(int(clip["frame"][rows[k]]) + 1)
        got = _joint_world(arm, names)
        want = (mhr_to_blender_points(clip["mhr_skel_state"][rows[k]][[index[n] for n in names], :3])
                + person_offset_blender(clip["pred_cam_t"][rows[k]], t0))
        assert np.abs(got - want).max() < 1e-4, k  # metres


def test_smoothing_reduces_jitter_and_rekeying_replaces_the_action(scene, clip_files) -> None:
    from addon.scene import builder

    _, result = clip_files
    clip, rig = _load(result)
    arm = apply_clip(bpy.context, clip, rig, options={"smoothing": 2.0, "camera": False, "mesh": False})[0]
    stats = arm["sam3d_clip_stats"].to_dict()
    assert stats["jitter"] < stats["jitter_raw"]
    first = arm.animation_data.action.name
    n = len(track_rows(clip, 0))
    names = [b.name for b in arm.pose.bones]
    builder.key_animation(arm, names, np.arange(1, n + 1), np.zeros((n, len(names), 3)),
                          np.tile([1.0, 0, 0, 0], (n, len(names), 1)), np.ones((n, len(names), 3)),
                          np.zeros((n, 3)), "again")
    assert arm.animation_data.action.name.startswith("again") and first not in bpy.data.actions


@pytest.mark.skipif(shutil.which("assimp") is None, reason="assimp (assimp-utils) not on PATH")
def test_fbx_carries_one_animation_of_the_clip(scene, clip_files, tmp_path: Path) -> None:
    from addon.scene.export import export_fbx

    _, result = clip_files
    clip, rig = _load(result)
    objs = apply_clip(bpy.context, clip, rig, options={"camera": False})
    path = export_fbx(tmp_path / "clip.fbx", [o for o in objs if o.type in {"ARMATURE", "MESH"}])
    info = subprocess.run(["assimp", "info", str(path)], capture_output=True, text=True, timeout=120).stdout
    assert "Animations:" in info
    assert int(info.split("Animations:")[1].split()[0]) == 1
    # Blender re-imports it with a key on every frame of the clip.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(path))
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    curves = _fcurves(arm)
    n = len(track_rows(clip, 0))
    assert curves and max(len(fc.keyframe_points) for fc in curves) == n


def test_rerunning_a_clip_updates_its_characters_in_place(scene, clip_files) -> None:
    """The same clip again (other smoothing) rebuilds into the objects of the first run: same
    armature, mesh and camera objects, the user's additions kept, the old action gone; with
    replace off it builds new characters."""
    movie, result = clip_files
    clip, rig = _load(result)
    first = apply_clip(bpy.context, clip, rig, movie_path=str(movie), options={"smoothing": 0.0})
    arm, mesh, cam = first[0], first[1], first[-1]
    assert (arm.type, mesh.type, cam.type) == ("ARMATURE", "MESH", "CAMERA")
    pointers = [o.as_pointer() for o in first]
    arm["animator_note"] = "keep me"
    prop = bpy.data.objects.new("prop", None)
    scene.collection.objects.link(prop)
    prop.parent = arm
    names = [b.name for b in arm.pose.bones]
    rows = track_rows(clip, 0)
    mid = int(clip["frame"][rows[len(rows) // 2]]) + 1
    scene.frame_set(mid)
    raw = _joint_world(arm, names)
    old_action = arm.animation_data.action.name
    counts = [len(pool) for pool in (bpy.data.objects, bpy.data.armatures, bpy.data.meshes,
                                     bpy.data.cameras, bpy.data.collections, bpy.data.actions)]

    second = apply_clip(bpy.context, clip, rig, movie_path=str(movie), options={"smoothing": 4.0})
    assert [o.as_pointer() for o in second] == pointers
    assert arm["animator_note"] == "keep me" and prop.parent == arm
    assert [len(pool) for pool in (bpy.data.objects, bpy.data.armatures, bpy.data.meshes,
                                   bpy.data.cameras, bpy.data.collections, bpy.data.actions)] == counts
    assert old_action not in bpy.data.actions or arm.animation_data.action.name == old_action
    assert mesh.parent == arm and any(m.type == "ARMATURE" and m.object == arm for m in mesh.modifiers)
    assert len(cam.data.background_images) == 1 and scene.camera == cam
    scene.frame_set(mid)
    assert np.abs(_joint_world(arm, names) - raw).max() > 1e-4  # smoothed now
    apply_clip(bpy.context, clip, rig, movie_path=str(movie), options={"smoothing": 0.0})
    scene.frame_set(mid)
    assert np.abs(_joint_world(arm, names) - raw).max() < 1e-6  # the raw keys again

    third = apply_clip(bpy.context, clip, rig, movie_path=str(movie),
                       options={"smoothing": 0.0, "replace": False})
    assert third[0].as_pointer() not in pointers
    assert sum(o.type == "ARMATURE" for o in bpy.data.objects) == 2


def _mesh_world(mesh) -> np.ndarray:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = mesh.evaluated_get(depsgraph)
    me = evaluated.to_mesh()
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    world = np.asarray(mesh.matrix_world)
    return co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]


def test_pose_correctives_are_keyed_shape_keys(scene, clip_files, parity_dir: Path) -> None:
    """Every frame's mesh is MHR's (correctives included) through a few keyed shape keys; without
    them only linear blend skinning remains. The exact proportions form, where the rig's skinning
    is MHR's (the baked form adds its own LBS-of-LBS approximation, docs/RIG.md)."""
    import torch

    from addon.rig.axes import mhr_to_blender_points, person_offset_blender
    from server.mhr.rig_data import person_rig_state

    movie, result = clip_files
    clip, rig = _load(result)
    assert int(clip["track_corrective_count"][0]) >= 1
    rows = track_rows(clip, 0)
    module = torch.jit.load(str(parity_dir / "checkpoints" / "dinov3_tiny" / "assets" / "mhr_model.pt"))
    mhr = person_rig_state(module, clip["mhr_model_params"][rows], clip["shape_params"][rows],
                           clip["expr_params"][rows])["mhr_vertices"]
    t0 = clip["pred_cam_t"][rows[0]]

    def errors(options):
        objs = apply_clip(bpy.context, clip, rig, movie_path=str(movie),
                          options={"smoothing": 0.0, "foot_lock": False, "camera": False, "proportions": "exact", **options})
        mesh = objs[1]
        out = []
        for k, row in enumerate(rows):
            scene.frame_set(int(clip["frame"][row]) + 1)
            want = mhr_to_blender_points(mhr[k]) + person_offset_blender(clip["pred_cam_t"][row], t0)
            out.append(np.abs(_mesh_world(mesh) - want).max())
        return mesh, np.array(out)

    mesh, with_keys = errors({})
    keys = [kb.name for kb in mesh.data.shape_keys.key_blocks]
    assert keys[0] == "Basis" and len(keys) == 1 + int(clip["track_corrective_count"][0])
    assert mesh.data.shape_keys.animation_data.action is not None
    stats = mesh.parent["sam3d_clip_stats"].to_dict()
    assert stats["corrective_keys"] == len(keys) - 1 and stats["corrective_error_mm"] < 1e-3
    _, lbs_only = errors({"correctives": False, "replace": False})
    # metres: measured 1.2e-6 (Blender's float32 skinning); the stand-in's correctives are ~0.1 mm
    assert with_keys.max() < 5e-6, with_keys
    assert lbs_only.max() > 5e-5, lbs_only
