# SPDX-License-Identifier: GPL-3.0-or-later
"""Reconstruct through a real server process (with the synthetic test-double engine): the
operator returns at once, drain_events builds the scene; and the headless CLI."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

import synthetic_engine as synthetic  # noqa: E402
from addon_helpers import PACKAGE, enabled_addon, write_photo  # noqa: E402

ENGINE = ["--engine", "tests.addon.synthetic_engine:make_engine"]
WAIT_S = 60.0


@pytest.fixture
def context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for ctx in enabled_addon():
        ops = sys.modules[f"{PACKAGE}.ui.operators"]
        monkeypatch.setattr(sys.modules[f"{PACKAGE}.ui.session"], "EXTRA_SERVER_ARGS", ENGINE)
        prefs = ctx.preferences.addons[PACKAGE].preferences
        prefs.server_python = sys.executable
        prefs.checkpoint_source = "FOLDER"
        prefs.checkpoint_dir = str(tmp_path)
        prefs.device = "cpu"
        yield ctx


def wait_until_idle(context) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    deadline = time.monotonic() + WAIT_S
    while ops.drain_events(context):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)


def test_reconstruct_operator_with_a_server_process(context, tmp_path: Path) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    live = context.window_manager.sam3d_body_status
    settings = context.scene.sam3d_body
    settings.image_source = "FILE"
    settings.image_path = str(write_photo(tmp_path / "photo.png", 64, 48))

    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    assert live.job_running  # returned before the server even started
    with pytest.raises(RuntimeError, match="already running"):  # one job at a time
        bpy.ops.sam3d_body.reconstruct()
    assert live.job_running
    wait_until_idle(context)
    assert live.last_error == "", live.last_error + live.log_tail
    assert not live.job_running and live.server_state == "READY"
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    assert len(armatures) == 1 and len(armatures[0].pose.bones) == synthetic.JOINTS
    camera = context.scene.camera
    assert camera is not None and context.scene.render.resolution_x == 64
    server = ops.SESSION.runner.server
    pid = server.process.pid

    # A server-side failure comes back as a clear error; the server stays up for the next job.
    settings.image_path = str(write_photo(tmp_path / "narrow.png", synthetic.FAIL_WIDTH, 9))
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    wait_until_idle(context)
    assert "No person was found" in live.last_error and "no_person" in live.last_error
    assert server.process.pid == pid and server.alive()

    assert bpy.ops.sam3d_body.server_stop() == {"FINISHED"}
    assert not server.alive() and ops.SESSION.runner is None
    assert live.server_state == "STOPPED"


def test_start_server_operator_loads_the_rig(context) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    assert bpy.ops.sam3d_body.server_start() == {"FINISHED"}
    wait_until_idle(context)
    live = context.window_manager.sam3d_body_status
    assert live.server_state == "READY", live.last_error + live.log_tail
    assert ops.SESSION.rig is not None and len(ops.SESSION.rig["joint_names"]) == synthetic.JOINTS


def test_a_server_that_cannot_start_reports_its_log(context, tmp_path: Path) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    sys.modules[f"{PACKAGE}.ui.session"].EXTRA_SERVER_ARGS = ["--engine",
                                                           "no_such_module:make_engine"]
    settings = context.scene.sam3d_body
    settings.image_source = "FILE"
    settings.image_path = str(write_photo(tmp_path / "photo.png"))
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    wait_until_idle(context)
    live = context.window_manager.sam3d_body_status
    assert live.last_error and not live.job_running
    assert "no_such_module" in live.log_tail


# --- python -m addon.cli -----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "addon.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_builds_and_saves_a_blend(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "photo.png", 64, 48)
    blend = tmp_path / "out.blend"
    fbx = tmp_path / "out.fbx"
    proc = run_cli(str(photo), "--checkpoint", str(tmp_path), "--mode", "body",
                   "--blend", str(blend), "--fbx", str(fbx), "--preset", "unity",
                   *[f"--server-arg={a}" for a in ENGINE])
    assert proc.returncode == 0, proc.stderr
    assert blend.is_file() and blend.stat().st_size > 0
    assert fbx.is_file() and fbx.read_bytes()[:18] == b"Kaydara FBX Binary"
    # Read the file back in a fresh process: the character is there, in metres.
    check = ("import bpy, sys; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]); "
             "arms = [o for o in bpy.data.objects if o.type == 'ARMATURE']; "
             "print(len(arms), len(arms[0].data.bones), bpy.context.scene.unit_settings.scale_length, "
             "round(max(v.co.z for v in [o for o in bpy.data.objects if o.type == 'MESH'][0].data.vertices), 4))")
    out = subprocess.run([sys.executable, "-c", check, str(blend)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n_arm, n_bones, scale, top = out.stdout.strip().splitlines()[-1].split()
    assert (int(n_arm), int(n_bones), float(scale)) == (1, synthetic.JOINTS, 1.0)
    rest_top_cm = float(synthetic.rig_data()["template_vertices"][:, 1].max())
    assert float(top) == pytest.approx(rest_top_cm / 100.0, abs=1e-4)


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = run_cli(str(tmp_path / "missing.png"), "--blend", str(tmp_path / "o.blend"))
    assert proc.returncode == 2
    assert "image not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    photo = write_photo(tmp_path / "p.png")
    (tmp_path / "a_file").write_text("not a folder")
    proc = run_cli(str(photo), "--blend", str(tmp_path / "a_file" / "o.blend"))
    assert proc.returncode == 2 and "cannot create the folder of --blend" in proc.stderr
    proc = run_cli(str(photo), "--blend", str(tmp_path / "o.blend"), "--box", "5,5,1,1")
    assert proc.returncode == 2 and "x2 > x1" in proc.stderr


def test_cli_server_failure_exits_1(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "narrow.png", synthetic.FAIL_WIDTH, 9)
    blend = tmp_path / "out.blend"
    proc = run_cli(str(photo), "--checkpoint", str(tmp_path), "--blend", str(blend),
                   *[f"--server-arg={a}" for a in ENGINE])
    assert proc.returncode == 1
    assert "error: reconstruction failed: No person was found" in proc.stderr
    assert not blend.exists()


def test_cli_turns_arguments_into_the_request(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from addon.cli import photo as cli

    photo = write_photo(tmp_path / "p.png", 8, 6)
    mask = np.zeros((6, 8), np.uint8)
    mask[:, :3] = 255
    mask_path = tmp_path / "m.png"
    Image.fromarray(mask).save(mask_path)
    seen: dict = {}

    def fake_run_jobs(runner, request, timeout=None):
        seen.update(request)
        seen["server_command"] = runner.server.command
        raise cli.RunError("stop here")

    monkeypatch.setattr(cli, "run_jobs", fake_run_jobs)
    code = cli.main([str(photo), "--repo", "someone/model", "--mode", "body",
                     "--box", "1,1,7,5", "--mask", str(mask_path), "--prompt", "2,3,9",
                     "--intrinsics", "100,101,4,3", "--device", "cpu",
                     "--blend", str(tmp_path / "o.blend")])
    assert code == 1
    assert seen["image_path"] == str(photo) and seen["mode"] == "body"
    assert seen["boxes"].tolist() == [[1, 1, 7, 5]]
    assert seen["prompts"] == [[2.0, 3.0, 9]] and seen["intrinsics"] == [100, 101, 4, 3]
    (got_mask,) = seen["masks"]
    assert got_mask.dtype == np.uint8 and np.array_equal(got_mask, mask)  # 0/255 kept as read
    command = seen["server_command"]
    assert command[1:4] == ["-m", "server", "serve"]
    assert command[command.index("--repo") + 1] == "someone/model"
    assert command[command.index("--device") + 1] == "cpu"
    # A mask count that does not match the boxes is a usage error.
    assert cli.main([str(photo), "--mask", str(mask_path),
                     "--blend", str(tmp_path / "o.blend")]) == 2
