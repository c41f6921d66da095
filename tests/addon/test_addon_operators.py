# SPDX-License-Identifier: GPL-3.0-or-later
"""Operator input validation and the main-thread drain (events -> status -> apply_result)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

import synthetic_engine as synthetic  # noqa: E402
from addon_helpers import PACKAGE, enabled_addon, write_photo  # noqa: E402

from addon.protocol.client import Job, JobEvent, JobRunner  # noqa: E402

A = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)  # MHR -> Blender axes


@pytest.fixture
def context():
    yield from enabled_addon()


def ops_module():
    return sys.modules[f"{PACKAGE}.ui.operators"]


def reconstruct_error(context) -> str:
    with pytest.raises(RuntimeError) as info:
        bpy.ops.sam3d_body.reconstruct()
    return str(info.value)


def prefs(context):
    return context.preferences.addons[PACKAGE].preferences


# --- validation --------------------------------------------------------------------------------


def test_no_image_in_an_image_editor_is_a_clear_error(context) -> None:
    assert context.scene.sam3d_body.image_source == "EDITOR"
    message = reconstruct_error(context)
    assert "No image" in message and "Image Editor" in message
    assert ops_module().SESSION.runner is None  # nothing was started


def test_no_image_file_is_a_clear_error(context) -> None:
    context.scene.sam3d_body.image_source = "FILE"
    assert "No image: choose an image file" in reconstruct_error(context)


def test_missing_image_file_is_named(context, tmp_path: Path) -> None:
    settings = context.scene.sam3d_body
    settings.image_source = "FILE"
    settings.image_path = str(tmp_path / "nope.png")
    message = reconstruct_error(context)
    assert "Image file not found" in message and "nope.png" in message


def test_server_python_must_be_set(context, tmp_path: Path) -> None:
    settings = context.scene.sam3d_body
    settings.image_source = "FILE"
    settings.image_path = str(write_photo(tmp_path / "photo.png"))
    assert "Server Python" in reconstruct_error(context)
    prefs(context).server_python = str(tmp_path / "no-python")
    assert "Server Python not found" in reconstruct_error(context)
    prefs(context).server_python = sys.executable
    prefs(context).checkpoint_source = "FOLDER"
    prefs(context).checkpoint_dir = str(tmp_path / "missing-ckpt")
    assert "Checkpoint folder not found" in reconstruct_error(context)
    prefs(context).checkpoint_source = "REPO"
    prefs(context).checkpoint_repo = "not-a-repo-id"
    assert "owner/name" in reconstruct_error(context)
    assert ops_module().SESSION.runner is None


def test_remote_server_needs_online_access(context, tmp_path: Path) -> None:
    settings = context.scene.sam3d_body
    settings.image_source = "FILE"
    settings.image_path = str(write_photo(tmp_path / "photo.png"))
    p = prefs(context)
    p.server_mode = "REMOTE"
    p.remote_host = "render-farm.example.com"
    p.remote_token = "secret"
    assert not bpy.app.online_access  # the bpy module starts offline
    assert "Online access is off" in reconstruct_error(context)


def test_remote_server_needs_tls_off_this_machine(context) -> None:
    ops = ops_module()
    p = prefs(context)
    p.server_mode = "REMOTE"
    p.remote_host = "10.1.2.3"
    p.remote_token = "secret"
    # bpy.app.online_access is read-only (False here), so the TLS rule is checked directly.
    with pytest.raises(ops.InputError, match="CA certificate or certificate fingerprint"):
        ops._tls_settings(p, "10.1.2.3")
    p.remote_pin = "not-hex"
    with pytest.raises(ops.InputError, match="SHA-256"):
        ops._tls_settings(p, "10.1.2.3")
    p.remote_pin = "AB:" * 31 + "AB"
    tls = ops._tls_settings(p, "10.1.2.3")
    assert tls is not None and tls.pin_sha256 == "ab" * 32
    p.remote_pin = ""
    p.remote_allow_plain = True
    assert ops._tls_settings(p, "10.1.2.3") is None
    p.remote_allow_plain = False
    assert ops._tls_settings(p, "127.0.0.1") is None  # loopback needs no TLS
    # A loopback studio server passes every check; the runner gets the address and TLS.
    p.remote_host = "127.0.0.1"
    config = ops.server_config(context)
    assert config == {"address": ("127.0.0.1", p.remote_port, "secret"), "tls": None}


def test_image_editor_image_is_used(context, tmp_path: Path) -> None:
    ops = ops_module()
    photo = write_photo(tmp_path / "editor.png")
    image = bpy.data.images.load(str(photo))
    area = context.screen.areas[0]
    area.type = "IMAGE_EDITOR"
    area.spaces.active.image = image
    assert ops.editor_image(context) == image
    assert Path(ops.resolve_image_path(context)) == photo
    # An image with no file of its own (generated) is written to the cache folder first.
    generated = bpy.data.images.new("generated", 8, 6)
    area.spaces.active.image = generated
    path = Path(ops.resolve_image_path(context))
    assert path.is_file() and path.suffix == ".png" and path.parent == Path(ops.cache_dir())


def test_focal_length_becomes_intrinsics(context, tmp_path: Path) -> None:
    ops = ops_module()
    photo = write_photo(tmp_path / "photo.png", 64, 48)
    settings = context.scene.sam3d_body
    settings.mode = "body"
    assert ops.reconstruct_request(context, str(photo)) == {"image_path": str(photo),
                                                            "mode": "body"}
    settings.use_focal_length = True
    settings.focal_length_px = 700.0
    request = ops.reconstruct_request(context, str(photo))
    assert request["intrinsics"] == [700.0, 700.0, 32.0, 24.0]
    # A studio server does not share our disk: it gets the file's bytes instead of the path.
    remote = ops.reconstruct_request(context, str(photo), send_bytes=True)
    assert "image_path" not in remote and remote["image_bytes"] == photo.read_bytes()


# --- drain_events ------------------------------------------------------------------------------


def _fake_session(ops, image_path: str | None, options: dict | None = None):
    """A session whose runner never connects: the test plays the background threads."""
    runner = JobRunner(address=("127.0.0.1", 9, "unused"))
    session = ops.SESSION
    session.runner = runner
    session.config = {"address": ("127.0.0.1", 9, "unused")}
    session.rig_job = Job(1, "rig")
    session.pending = ops.PendingReconstruct(Job(2, "reconstruct"), image_path,
                                             options or {"correctives": True})
    ops.status(bpy.context).job_running = True
    return runner.events


def test_drain_events_applies_the_result(context, tmp_path: Path) -> None:
    ops = ops_module()
    photo = str(write_photo(tmp_path / "photo.png", 64, 48))
    events = _fake_session(ops, photo)
    live = context.window_manager.sam3d_body_status
    bpy.ops.ed.undo_push(message="before Reconstruct")

    events.put(JobEvent(2, "progress", 0.5, "halfway"))
    assert ops.drain_events(context) is True
    assert live.progress == pytest.approx(0.5) and live.message == "halfway"
    assert live.job_running and live.server_state in {"BUSY", "STARTING"}

    # The result may arrive before the rig: nothing is built until both are there.
    events.put(JobEvent(2, "result", 1.0, "done", data=synthetic.result(64, 48)))
    assert ops.drain_events(context) is True
    assert not [o for o in bpy.data.objects]
    events.put(JobEvent(1, "result", 1.0, "done", data=synthetic.rig_data()))
    # One tick shows the build stage (Blender repaints between ticks), the next one builds.
    assert ops.drain_events(context) is True
    assert live.message == "Building the character" and live.job_running
    assert not [o for o in bpy.data.objects]
    assert ops.drain_events(context) is False

    assert not live.job_running and live.last_error == ""
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    cameras = [o for o in bpy.data.objects if o.type == "CAMERA"]
    assert len(armatures) == 1 and len(meshes) == 1 and len(cameras) == 1
    assert len(armatures[0].data.bones) == synthetic.JOINTS
    assert context.scene.sam3d_body.last_collection == armatures[0].users_collection[0].name
    # The built character is the reconstruction: posed vertices in Blender metres.
    depsgraph = context.evaluated_depsgraph_get()
    mesh = meshes[0].evaluated_get(depsgraph).to_mesh()
    co = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    world = np.asarray(meshes[0].matrix_world)
    got = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    expected = synthetic.posed_vertices_cm() @ A.T / 100.0
    assert np.abs(got - expected).max() < 1e-5
    # Later events of a finished job are ignored.
    events.put(JobEvent(2, "progress", 0.9, "late"))
    assert ops.drain_events(context) is False and live.message != "late"

    # Export FBX with nothing selected takes the last reconstruction.
    for obj in context.view_layer.objects:
        obj.select_set(False)
    fbx = tmp_path / "character.fbx"
    assert bpy.ops.sam3d_body.export_fbx(filepath=str(fbx)) == {"FINISHED"}
    assert fbx.is_file() and fbx.read_bytes()[:18] == b"Kaydara FBX Binary"
    with pytest.raises(RuntimeError, match="Folder does not exist"):
        bpy.ops.sam3d_body.export_fbx(filepath=str(tmp_path / "nodir" / "c.fbx"))

    # The whole build is one undo step: one undo removes every object, redo brings them back.
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert len(bpy.data.objects) == 0
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert len(bpy.data.objects) == 3


def test_export_without_a_character_is_a_clear_error(context, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="Nothing to export"):
        bpy.ops.sam3d_body.export_fbx(filepath=str(tmp_path / "c.fbx"))
    context.scene.sam3d_body.export_path = "//relative.fbx"
    with pytest.raises(RuntimeError, match="Save the .blend first"):
        bpy.ops.sam3d_body.export_fbx()


def test_drain_events_reports_a_server_death_with_the_log(context) -> None:
    ops = ops_module()
    events = _fake_session(ops, None)
    events.put(JobEvent(2, "died", message="the server process exited with code 1: boom",
                        code="server_died", log_tail="Traceback ...\nMemoryError"))
    assert ops.drain_events(context) is True  # the rig job is still out
    live = context.window_manager.sam3d_body_status
    assert not live.job_running
    assert "server stopped" in live.last_error and "boom" in live.last_error
    assert "MemoryError" in live.log_tail
    assert ops.SESSION.pending is None and not bpy.data.objects


def test_drain_events_reports_a_bad_result(context) -> None:
    ops = ops_module()
    events = _fake_session(ops, None)
    broken = synthetic.result()
    broken["mhr_skel_state"] = broken["mhr_skel_state"][:, :10]
    events.put(JobEvent(1, "result", data=synthetic.rig_data()))
    events.put(JobEvent(2, "result", data=broken))
    assert ops.drain_events(context) is True
    assert ops.drain_events(context) is False
    live = context.window_manager.sam3d_body_status
    assert live.last_error.startswith("Could not build the character")
    assert "mhr_skel_state" in live.last_error


def test_cancel_operator_and_cancelled_event(context) -> None:
    ops = ops_module()
    events = _fake_session(ops, None)
    job = ops.SESSION.pending.job
    assert bpy.ops.sam3d_body.cancel() == {"FINISHED"}
    assert job.cancelled
    events.put(JobEvent(2, "error", message="cancelled", code="cancelled"))
    ops.drain_events(context)
    live = context.window_manager.sam3d_body_status
    assert not live.job_running and live.message == "Cancelled" and live.last_error == ""
    assert not bpy.ops.sam3d_body.cancel.poll()


def test_server_start_stages_show_while_a_reconstruction_waits(context) -> None:
    ops = ops_module()
    events = _fake_session(ops, None)
    live = context.window_manager.sam3d_body_status
    events.put(JobEvent(1, "progress", 0.0, "starting the server: loading the weights"))
    assert ops.drain_events(context) is True
    assert live.message == "starting the server: loading the weights"
    events.put(JobEvent(1, "result", data=synthetic.rig_data()))
    events.put(JobEvent(2, "progress", 0.3, "person 1/1"))
    events.put(JobEvent(1, "progress", 0.0, "a late stage"))
    assert ops.drain_events(context) is True
    assert live.message == "person 1/1"  # once the server is up, the job's own progress


def test_cancel_after_the_result_arrived_builds_nothing(context) -> None:
    ops = ops_module()
    events = _fake_session(ops, None)
    events.put(JobEvent(1, "result", data=synthetic.rig_data()))
    events.put(JobEvent(2, "result", data=synthetic.result()))
    assert ops.drain_events(context) is True  # the build stage is on screen
    assert bpy.ops.sam3d_body.cancel() == {"FINISHED"}
    assert ops.drain_events(context) is False
    live = context.window_manager.sam3d_body_status
    assert live.message == "Cancelled" and not live.job_running and not bpy.data.objects
