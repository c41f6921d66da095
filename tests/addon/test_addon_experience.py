# SPDX-License-Identifier: GPL-3.0-or-later
"""The in-Blender experience: person boxes, alpha masks, camera background, preferences
validation (managed / custom Python, precision, remote checks), Esc, the installer operators
over a local wheel folder, and the Check Access wording."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

from addon_helpers import PACKAGE, enabled_addon, write_photo  # noqa: E402

from addon.ui import installer as installer_ui
from addon.ui import paths as ui_paths
from addon.ui import session  # noqa: E402
from addon.scene import tags  # noqa: E402
from addon.protocol.client import Job, JobRunner  # noqa: E402


@pytest.fixture
def context():
    yield from enabled_addon()


def prefs(context):
    return context.preferences.addons[PACKAGE].preferences


def ops():
    return sys.modules[f"{PACKAGE}.ui.operators"]


def photo_with_alpha(path: Path, width: int = 40, height: int = 30) -> Path:
    from PIL import Image

    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = 128
    rgba[5:20, 10:25, 3] = 255  # the person: rows 5..19, columns 10..24
    Image.fromarray(rgba, "RGBA").save(path)
    return path


# --- inputs ------------------------------------------------------------------------------------


def test_box_mode_sends_one_box_and_checks_it(context, tmp_path: Path) -> None:
    photo = str(write_photo(tmp_path / "photo.png", 64, 48))
    settings = context.scene.sam3d_body
    settings.person_mode = "BOX"
    settings.person_box = (4, 2, 30, 40)
    request = ops().reconstruct_request(context, photo)
    np.testing.assert_array_equal(request["boxes"], [[4, 2, 30, 40]])
    settings.person_box = (4, 2, 70, 40)
    with pytest.raises(ops().InputError, match="x1 < x2 <= 64"):
        ops().reconstruct_request(context, photo)


def test_index_mode_needs_a_previous_reconstruction(context, tmp_path: Path) -> None:
    photo = str(write_photo(tmp_path / "photo.png", 64, 48))
    settings = context.scene.sam3d_body
    settings.person_mode = "INDEX"
    settings.person_index = 1
    with pytest.raises(ops().InputError, match="No person 1 in the last reconstruction"):
        ops().reconstruct_request(context, photo)
    coll = bpy.data.collections.new("photo")
    context.scene.collection.children.link(coll)
    arm = bpy.data.objects.new("photo_person1", bpy.data.armatures.new("a"))
    coll.objects.link(arm)
    arm["sam3d_person"] = 1
    arm[tags.PROP_BBOX] = [1.0, 2.0, 30.0, 40.0]
    settings.last_collection = coll.name
    np.testing.assert_array_equal(ops().reconstruct_request(context, photo)["boxes"],
                                  [[1, 2, 30, 40]])


def test_alpha_mask_becomes_mask_and_box(context, tmp_path: Path) -> None:
    settings = context.scene.sam3d_body
    settings.use_alpha_mask = True
    request = ops().reconstruct_request(context, str(photo_with_alpha(tmp_path / "cut.png")))
    (mask,) = request["masks"]
    assert mask.shape == (30, 40) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}  # the 0/255 scale of the alpha channel
    assert mask[5:20, 10:25].all() and mask.sum() == 15 * 15 * 255  # top row first
    np.testing.assert_array_equal(request["boxes"], [[10, 5, 25, 20]])
    opaque = str(write_photo(tmp_path / "opaque.png"))
    with pytest.raises(ops().InputError, match="fully opaque"):
        ops().reconstruct_request(context, opaque)


def test_soft_alpha_edges_are_cut_at_half_coverage(context, tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[5:20, 10:25, 3] = 255
    rgba[5:20, 25, 3] = 200  # anti-aliased edge: 78% coverage is person
    rgba[5:20, 9, 3] = 60  # 24%: background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "soft.png")
    context.scene.sam3d_body.use_alpha_mask = True
    (mask,) = ops().reconstruct_request(context, str(tmp_path / "soft.png"))["masks"]
    assert set(np.unique(mask)) == {0, 255}
    assert mask[5:20, 25].all() and not mask[:, 9].any() and mask.sum() == 15 * 16 * 255


def test_cli_mask_files_keep_their_values(tmp_path: Path) -> None:
    """python -m addon.cli --mask: 0/1 stays 0/1, 0/255 stays 0/255 (Blender's image loader)."""
    from PIL import Image

    from addon.cli.photo import UsageError, read_mask

    for top in (1, 255):
        m = np.zeros((24, 32), np.uint8)
        m[4:12, 6:20] = top
        Image.fromarray(m).save(tmp_path / f"m{top}.png")
        np.testing.assert_array_equal(read_mask(str(tmp_path / f"m{top}.png")), m)
    grey = np.zeros((24, 32), np.uint8)
    grey[4:12, 6:20] = 255
    grey[4:12, 20] = 128
    Image.fromarray(grey).save(tmp_path / "aa.png")
    with pytest.raises(UsageError, match="not binary"):
        read_mask(str(tmp_path / "aa.png"))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(UsageError, match="is empty"):
        read_mask(str(tmp_path / "empty.png"))


def test_camera_background_image_is_an_input(context, tmp_path: Path) -> None:
    settings = context.scene.sam3d_body
    settings.image_source = "CAMERA"
    with pytest.raises(ops().InputError, match="scene camera has no background image"):
        ops().resolve_image_path(context)
    photo = write_photo(tmp_path / "bg.png")
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    context.scene.collection.objects.link(cam)
    context.scene.camera = cam
    cam.data.background_images.new().image = bpy.data.images.load(str(photo))
    assert Path(ops().resolve_image_path(context)) == photo


def test_naming_preset_reaches_apply(context) -> None:
    context.scene.sam3d_body.naming_preset = "unreal"
    assert ops().apply_options(context)["naming"] == "unreal"


# --- preferences validation -------------------------------------------------------------------


def test_custom_python_must_be_an_executable(context, tmp_path: Path) -> None:
    p = prefs(context)
    p.python_source = "CUSTOM"
    not_exec = tmp_path / "python"
    not_exec.write_text("")
    not_exec.chmod(0o644)
    p.server_python = str(not_exec)
    if os.name != "nt":
        with pytest.raises(ops().InputError, match="not executable"):
            session.server_python(p)
    p.server_python = str(tmp_path)
    with pytest.raises(ops().InputError, match="Server Python not found"):
        session.server_python(p)


def test_managed_backend_not_installed_says_what_to_press(context, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui_paths, "ENV_DIR_OVERRIDE", str(tmp_path / "env"))
    p = prefs(context)
    p.python_source = "MANAGED"
    with pytest.raises(ops().InputError, match="environment is missing: press Install"):
        session.server_python(p)


def test_precision_is_passed_only_when_chosen(context, tmp_path: Path) -> None:
    p = prefs(context)
    p.server_python = sys.executable
    p.checkpoint_source = "FOLDER"
    p.checkpoint_dir = str(tmp_path)
    assert session.server_config(context)["extra_args"] == []
    p.precision = "fp32"
    config = session.server_config(context)
    assert config["extra_args"] == ["--precision", "fp32"]
    runner = session.make_runner(config)
    assert runner.server is not None
    assert runner.server.command[-2:] == ["--precision", "fp32"]


def test_connection_check_messages(context) -> None:
    # Nothing listens on this port: the message names the address.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = session.check_connection({"address": ("127.0.0.1", port, "x" * 16)}, timeout=2.0)
    assert text.startswith(f"Cannot reach 127.0.0.1:{port}")
    assert session.check_connection({"python": sys.executable}).startswith(
        "The local server is not running")


def test_connection_check_wrong_token_and_server_details(context, tmp_path: Path) -> None:
    from addon.protocol.client import ServerProcess

    server = ServerProcess(sys.executable, checkpoint=str(tmp_path), device="cpu",
                           extra_args=["--engine", "tests.addon.synthetic_engine:make_engine"])
    server.start()
    try:
        wrong = session.check_connection({"address": (server.host, server.port, "w" * 32)})
        assert wrong.startswith("Wrong token"), wrong
        right = session.check_connection({"address": (server.host, server.port, server.token)})
        assert right.startswith("Connected: ") and "device" in right, right
    finally:
        server.stop()


def test_describe_server_lists_gpu_memory() -> None:
    text = session.describe_server({"version": "1.2", "device": "cuda", "gpu_name": "H100",
                                    "gpu_memory_gb": 80, "model": "dinov3"})
    assert text == "Connected: version 1.2, device cuda, GPU H100, model dinov3, 80 GB"


# --- long work ---------------------------------------------------------------------------------


def test_second_reconstruct_is_refused_and_esc_cancels(context) -> None:
    runner = JobRunner(address=("127.0.0.1", 9, "unused"))
    job = Job(2, "reconstruct")
    session.SESSION.runner = runner
    session.SESSION.pending = session.PendingReconstruct(job, None, {})
    try:
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.sam3d_body.reconstruct()
        op = ops().SAM3D_OT_reconstruct
        other = SimpleNamespace(type="MOUSEMOVE", value="NOTHING")
        assert op.modal(None, context, other) == {"PASS_THROUGH"}
        assert not job.cancelled
        esc = SimpleNamespace(type="ESC", value="PRESS")
        assert op.modal(None, context, esc) == {"FINISHED"}
        assert job.cancelled
    finally:
        session.SESSION.runner = None
        session.SESSION.pending = None


# --- installer UI (local wheels, no network) ---------------------------------------------------


@pytest.fixture
def wheel_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from test_backend_install import TINY_MODULES, write_wheel

    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder, "tinya", "1.0")
    monkeypatch.setattr(ui_paths, "ENV_DIR_OVERRIDE", str(tmp_path / "server env"))
    monkeypatch.setattr(installer_ui, "PLAN_OVERRIDES", {
        "requirements": ["tinya"], "torch_variant": "none",
        "check_modules": {"tinya": TINY_MODULES["tinya"]}})
    return folder


def drain_install(context, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while installer_ui.drain_installer(context):
        assert time.monotonic() < deadline, "the installer did not finish"
        time.sleep(0.05)


def test_install_and_remove_from_a_wheel_folder(context, wheel_folder: Path) -> None:
    live = context.window_manager.sam3d_body_status
    p = prefs(context)
    p.install_base_python = sys.executable
    # Offline (the bpy module has no online access) an install needs a wheel folder.
    with pytest.raises(RuntimeError, match="Online Access is off"):
        bpy.ops.sam3d_body.backend_install()
    p.install_wheels = str(wheel_folder)
    assert bpy.ops.sam3d_body.backend_install() == {"FINISHED"}
    with pytest.raises(RuntimeError, match="already running"):
        bpy.ops.sam3d_body.backend_install()
    drain_install(context)
    assert live.install_state == "done", live.install_message + live.install_log_tail
    assert live.install_progress == 1.0
    env = installer_ui.managed_env_dir()
    p.python_source = "MANAGED"
    assert Path(session.server_python(p)).is_file()
    assert bpy.ops.sam3d_body.backend_remove() == {"FINISHED"}
    deadline = time.monotonic() + 30
    while installer_ui.bi.env_status(env) != "missing":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_cancelled_install_says_repair_finishes(context, wheel_folder: Path) -> None:
    live = context.window_manager.sam3d_body_status
    p = prefs(context)
    p.install_base_python = sys.executable
    p.install_wheels = str(wheel_folder)
    assert bpy.ops.sam3d_body.backend_install() == {"FINISHED"}
    assert bpy.ops.sam3d_body.backend_cancel() == {"FINISHED"}
    drain_install(context)
    assert live.install_state in {"cancelled", "done"}  # it may finish before the cancel lands
    if live.install_state == "cancelled":
        assert "Repair" in live.install_message


@pytest.mark.parametrize("line, expected", [
    ('{"status": "ok", "repo": "a/b", "detail": ""}', "OK"),
    ('{"status": "not_logged_in", "repo": "a/b", "detail": ""}', "Not logged in"),
    ('{"status": "no_access", "repo": "a/b", "detail": "request"}', "No access to the gated"),
    ('{"status": "offline", "repo": "a/b", "detail": "HF_HUB_OFFLINE is set"}', "Offline"),
])
def test_check_access_wording(line: str, expected: str) -> None:
    assert installer_ui.describe_hf_access("noise\n" + line).startswith(expected)


def test_check_access_runs_in_the_server_python_offline(context) -> None:
    text = installer_ui.run_hf_check(sys.executable, "facebook/sam-3d-body-dinov3",
                                     {"HF_HUB_OFFLINE": "1"})
    assert text.startswith("Offline"), text
    broken = installer_ui.describe_hf_access("", "Traceback...\nModuleNotFoundError: x")
    assert broken == "The check could not run in the server's Python: ModuleNotFoundError: x"


def test_failed_job_is_reported_when_the_modal_ends(context) -> None:
    live = context.window_manager.sam3d_body_status
    live.last_error = "The server stopped: boom"
    live.log_tail = "Traceback\nboom"
    reports: list = []
    fake = SimpleNamespace(report=lambda kind, text: reports.append((kind, text)))
    event = SimpleNamespace(type="TIMER", value="NOTHING")
    assert ops().SAM3D_OT_reconstruct.modal(fake, context, event) == {"FINISHED"}
    assert reports == [({"ERROR"}, "The server stopped: boom")]
    assert bpy.ops.sam3d_body.copy_log() == {"FINISHED"}  # (headless has no clipboard)
    live.last_error = live.log_tail = ""
    assert bpy.ops.sam3d_body.copy_log() == {"CANCELLED"}


def test_preferences_draw_the_installer_for_the_managed_backend(
        context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_addon_register import _RecordingLayout, _WithLayout

    monkeypatch.setattr(ui_paths, "ENV_DIR_OVERRIDE", str(tmp_path / "env"))
    p = prefs(context)
    p.python_source = "MANAGED"
    calls: list = []
    type(p).draw(_WithLayout(p, _RecordingLayout(calls)), context)
    operators = {c[1][0] for c in calls if c[0] == "operator"}
    assert {"sam3d_body.backend_install", "sam3d_body.backend_repair",
            "sam3d_body.backend_remove", "sam3d_body.check_hf_access",
            "sam3d_body.test_connection"} <= operators
    labels = [c[2].get("text", "") for c in calls if c[0] == "label"]
    assert any(text.startswith("Environment: missing") for text in labels)
    assert any("Online Access is off" in text for text in labels)
