# SPDX-License-Identifier: GPL-3.0-or-later
"""Refine with keypoints: the MHR-70 table, the pixel <-> marker mapping (plain numpy and
through the camera apply_result builds), and the whole flow against a real server on the
fixture checkpoint (random weights)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from addon.scene import keypoints as kp
from addon.scene import tags
from tests.conftest import PARITY

K = np.array([[600.0, 0, 250.0], [0, 610.0, 260.0], [0, 0, 1]])


# --- plain numpy ---------------------------------------------------------------------------


def test_mhr70_names_match_the_documented_indices() -> None:
    assert len(kp.MHR70_NAMES) == len(set(kp.MHR70_NAMES)) == 70
    documented = {5: "left_shoulder", 6: "right_shoulder", 7: "left_elbow", 8: "right_elbow",
                  9: "left_hip", 10: "right_hip", 41: "right_wrist", 62: "left_wrist",
                  69: "neck", 0: "nose"}
    for index, name in documented.items():
        assert kp.MHR70_NAMES[index] == name
        assert kp.keypoint_label(name) == index
    assert all(n.startswith("right_") for n in kp.MHR70_NAMES[21:42])
    assert all(n.startswith("left_") for n in kp.MHR70_NAMES[42:63])
    with pytest.raises(ValueError, match="0..69"):
        kp.keypoint_label(70)
    with pytest.raises(ValueError, match="unknown"):
        kp.keypoint_label("left_tail")


@pytest.mark.parametrize("distance", [0.3, 1.0, 7.5])
def test_pixels_round_trip_at_any_depth(distance: float) -> None:
    pixels = np.random.default_rng(1).uniform([0, 0], [500, 520], (50, 2))
    local = kp.pixels_to_camera_local(pixels, K, distance)
    assert np.allclose(local[:, 2], -distance)
    np.testing.assert_allclose(kp.camera_local_to_pixels(local, K), pixels, atol=1e-9)
    # Along the view ray (a marker dragged in depth) the pixel stays.
    np.testing.assert_allclose(kp.camera_local_to_pixels(local * 2.5, K), pixels, atol=1e-9)
    # Pixel to the right -> +x, pixel further down -> -y (Blender camera: y up).
    a, b = kp.pixels_to_camera_local(np.array([[300.0, 300.0], [340.0, 330.0]]), K, distance)
    assert b[0] > a[0] and b[1] < a[1]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="behind the camera"):
        kp.camera_local_to_pixels(np.array([[0.0, 0.0, 1.0]]), K)
    with pytest.raises(ValueError, match="3x3 matrix"):
        kp.pixels_to_camera_local(np.zeros((1, 2)), [1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="positive"):
        kp.pixels_to_camera_local(np.zeros((1, 2)), K, 0.0)


def test_only_moved_markers_become_prompts() -> None:
    original = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    current = original + [[0.1, 0.0], [40.0, 0.0], [0.0, 0.0]]
    assert kp.moved_prompts([5, 41, 62], original, current) == [[60.0, 20.0, 41]]
    assert len(kp.moved_prompts([5, 41, 62], original, current, send_all=True)) == 3


# --- with Blender and a real server ---------------------------------------------------------

CHECKPOINT = PARITY / "checkpoints" / "dinov3_tiny"
PHOTO = PARITY / "images" / "astronaut.png"
WAIT_S = 120.0
RIGHT_WRIST = kp.KEYPOINT_INDEX["right_wrist"]


@pytest.fixture
def context(tmp_path: Path):
    pytest.importorskip("bpy")
    if not (CHECKPOINT / "model.ckpt").is_file() or not PHOTO.is_file():
        pytest.skip("fixture checkpoint not available")
    from addon_helpers import PACKAGE, enabled_addon

    for ctx in enabled_addon():
        prefs = ctx.preferences.addons[PACKAGE].preferences
        prefs.server_python = sys.executable
        prefs.checkpoint_source = "FOLDER"
        prefs.checkpoint_dir = str(CHECKPOINT)
        prefs.device = "cpu"
        settings = ctx.scene.sam3d_body
        settings.image_source = "FILE"
        settings.image_path = str(PHOTO)
        settings.mode = "body"
        yield ctx


def wait_until_idle(context) -> None:
    from addon.ui import session

    deadline = time.monotonic() + WAIT_S
    while session.drain_events(context):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)
    live = context.window_manager.sam3d_body_status
    assert live.last_error == "", live.last_error + "\n" + live.log_tail


def pose_array(arm) -> np.ndarray:
    return np.array([list(pb.rotation_quaternion) + list(pb.location) for pb in arm.pose.bones])


def evaluated_vertices(context, arm) -> np.ndarray:
    """The skinned mesh (armature space, metres) as Blender draws it."""
    (mesh_obj,) = [c for c in arm.children if c.type == "MESH"]
    evaluated = mesh_obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    return co.reshape(-1, 3).astype(np.float64)


def client_result(runner, request: dict) -> dict:
    client = runner.server.client(timeout=60.0)
    try:
        return client.reconstruct(**request, timeout=60.0)
    finally:
        client.close()


def test_refine_moves_markers_to_prompts_and_poses_in_place(context) -> None:
    import bpy
    from bpy_extras.object_utils import world_to_camera_view

    from addon.ui import refine
    from addon.ui import session

    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    wait_until_idle(context)
    (arm,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    camera = context.scene.camera
    bystander = bpy.data.objects.new("bystander", None)
    context.scene.collection.objects.link(bystander)
    bystander.location = (1.0, 2.0, 3.0)

    # Markers sit on the predicted keypoints as seen by the camera apply_result built.
    context.view_layer.objects.active = bystander
    with pytest.raises(RuntimeError, match="Select a reconstructed armature"):
        bpy.ops.sam3d_body.add_markers()
    context.view_layer.objects.active = arm
    assert bpy.ops.sam3d_body.add_markers() == {"FINISHED"}
    markers = refine.markers_of(arm)
    assert [int(m[refine.MARKER_INDEX]) for m in markers] == sorted(kp.MARKER_KEYPOINTS)
    width, height = (int(v) for v in arm[tags.PROP_IMAGE_SIZE])
    predicted = np.asarray(list(arm[tags.PROP_KEYPOINTS])).reshape(70, 2)
    for marker in markers:
        ndc = world_to_camera_view(context.scene, camera, marker.matrix_world.translation)
        pixel = np.array([ndc.x * width, (1.0 - ndc.y) * height])
        np.testing.assert_allclose(pixel, predicted[int(marker[refine.MARKER_INDEX])], atol=0.02)
        np.testing.assert_allclose(pixel, list(marker[refine.MARKER_PIXEL]), atol=0.02)

    with pytest.raises(RuntimeError, match="No marker was moved"):
        bpy.ops.sam3d_body.refine()

    # Drag the right wrist 40 px to the right.
    wrist = next(m for m in markers if int(m[refine.MARKER_INDEX]) == RIGHT_WRIST)
    target = predicted[RIGHT_WRIST] + [40.0, 0.0]
    distance = context.scene.sam3d_body.marker_distance
    wrist.location = kp.pixels_to_camera_local(target[None], list(arm[tags.PROP_CAM_INT]),
                                               distance)[0].tolist()
    context.view_layer.update()

    sent: list[dict] = []
    runner = session.SESSION.runner
    submit = runner.submit_reconstruct

    def spy(**request):
        sent.append(request)
        return submit(**request)

    runner.submit_reconstruct = spy
    rest = np.array([np.array(b.matrix_local) for b in arm.data.bones])
    pose = pose_array(arm)
    surface_before = evaluated_vertices(context, arm)
    location = tuple(arm.location)
    assert bpy.ops.sam3d_body.refine() == {"FINISHED"}
    wait_until_idle(context)

    (request,) = sent
    (prompt,) = request["prompts"]
    np.testing.assert_allclose(prompt[:2], target, atol=0.05)
    assert prompt[2] == RIGHT_WRIST
    assert request["fit_prompts"] is True  # Pin to Markers is on by default
    assert request["boxes"].shape == (1, 4) and len(request["intrinsics"]) == 4
    # The same armature changed pose only: rest, location and other objects stay.
    assert [o for o in bpy.data.objects if o.type == "ARMATURE"] == [arm]
    np.testing.assert_array_equal(np.array([np.array(b.matrix_local) for b in arm.data.bones]),
                                  rest)
    assert tuple(arm.location) == location
    assert tuple(bystander.location) == (1.0, 2.0, 3.0)
    assert np.abs(pose_array(arm) - pose).max() > 1e-5
    refined = np.asarray(list(arm[tags.PROP_KEYPOINTS])).reshape(70, 2)
    # The pose moved the way the marker was dragged: the wrist is now on its marker (40 px to
    # the right of where it was) and the other body joints stayed within a few pixels.
    moved = refined[RIGHT_WRIST] - predicted[RIGHT_WRIST]
    assert np.linalg.norm(refined[RIGHT_WRIST] - target) < 1.0, moved
    assert moved[0] > 38.0 and abs(moved[1]) < 2.0, moved
    others = [k for k in kp.MARKER_KEYPOINTS if k != RIGHT_WRIST]
    assert np.abs(refined[others] - predicted[others]).max() < 5.0
    assert "within" in context.window_manager.sam3d_body_status.message

    # The prompt is what changed the answer: the same request without it reproduces the
    # unprompted keypoints of that request, and differs from the prompted ones.
    client = runner.server.client(timeout=60.0)
    try:
        plain = dict(request, prompts=None)
        without = client.reconstruct(**plain, timeout=60.0)["pred_keypoints_2d"][0]
        prompted = client.reconstruct(**request, timeout=60.0)
    finally:
        client.close()
    with_prompt = prompted["pred_keypoints_2d"][0]
    np.testing.assert_allclose(with_prompt, refined, atol=1e-3)
    assert np.abs(with_prompt - without).max() > 1e-4
    # Unpinned, the random fixture weights treat the prompt as a small, undirected hint: the
    # pin is what brings the wrist onto the marker.
    hint = client_result(runner, dict(request, fit_prompts=False))["pred_keypoints_2d"][0]
    assert np.linalg.norm(hint[RIGHT_WRIST] - target) > 10.0
    np.testing.assert_allclose(prompted["fit_error_after_px"], [np.linalg.norm(with_prompt[RIGHT_WRIST] - target)],
                               atol=0.05)
    # The rig in place shows the refined surface (pose + refitted correctives).
    from addon.rig.axes import mhr_to_blender_points

    expected = mhr_to_blender_points(np.asarray(prompted["mhr_vertices"][0], np.float64))
    err = np.abs(evaluated_vertices(context, arm) - expected).max()
    assert err < 1e-5, err
    assert np.abs(surface_before - expected).max() > 10 * err  # the check can fail
