# SPDX-License-Identifier: GPL-3.0-or-later
"""A video clip through the panel's Reconstruct with a real server process and the tiny fixture
checkpoint: the operator returns at once, progress is per frame, the result becomes a keyed
character; Cancel mid-clip leaves the scene untouched; a studio server gets the clip uploaded."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.video.clip_data import ASTRONAUT_BOX, panned_clip, write_movie

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

from addon_helpers import PACKAGE, enabled_addon  # noqa: E402

WAIT_S = 180.0


@pytest.fixture
def context(parity_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SAM3D_BODY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for ctx in enabled_addon():
        prefs = ctx.preferences.addons[PACKAGE].preferences
        prefs.server_python = sys.executable
        prefs.checkpoint_source = "FOLDER"
        prefs.checkpoint_dir = str(parity_dir / "checkpoints" / "dinov3_tiny")
        prefs.device = "cpu"
        settings = ctx.scene.sam3d_body
        settings.image_source = "FILE"
        frames, _ = panned_clip(parity_dir / "images", n_frames=5)
        settings.image_path = str(write_movie(tmp_path / "walk.mp4", frames))
        settings.mode = "body"
        settings.person_mode = "BOX"
        settings.person_box = tuple(float(v) for v in ASTRONAUT_BOX)
        yield ctx
        sys.modules[f"{PACKAGE}.ui.session"].SESSION.stop()


def _drain(context, until=lambda: False) -> list[str]:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    live = context.window_manager.sam3d_body_status
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while ops.drain_events(context):
        if live.message and (not seen or seen[-1] != live.message):
            seen.append(live.message)
        if until():
            break
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)
    return seen


def _image_sequence(parity_dir: Path, folder: Path, stem: str) -> Path:
    """Three panned frames as numbered PNGs (stem_0001.png ...)."""
    from PIL import Image

    frames, _ = panned_clip(parity_dir / "images", n_frames=3)
    folder.mkdir()
    for k, rgb in enumerate(frames, start=1):
        Image.fromarray(rgb).save(folder / f"{stem}_{k:04d}.png")
    return folder


def test_a_clip_becomes_a_keyed_character(context) -> None:
    live = context.window_manager.sam3d_body_status
    context.scene.sam3d_body.clip_step = 2
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    assert live.job_running
    seen = _drain(context)
    assert live.last_error == "", live.last_error + live.log_tail
    assert any(m.startswith("frame ") and "/3 (" in m and "frames/s" in m for m in seen), seen
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    action = arm.animation_data.action
    assert action is not None and context.scene.frame_start == 1 and context.scene.frame_end == 5
    assert "Animated 1 character(s) over 3 frames" in live.message


def test_a_studio_server_gets_the_clip_uploaded(context, parity_dir: Path) -> None:
    """With a studio server in the preferences the clip's file travels over the socket (the
    server need not see this machine's disk) and the character is built as with a local one."""
    from addon.protocol.client import ServerProcess

    server = ServerProcess(sys.executable, checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"),
                           device="cpu")
    server.start()
    try:
        prefs = context.preferences.addons[PACKAGE].preferences
        prefs.server_mode = "REMOTE"
        prefs.remote_host, prefs.remote_port, prefs.remote_token = server.host, server.port, server.token
        live = context.window_manager.sam3d_body_status
        assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
        seen = _drain(context)
        assert live.last_error == "", live.last_error + live.log_tail
        assert any(m.startswith("uploading the clip") for m in seen), seen
        assert "Animated 1 character(s) over 5 frames" in live.message
    finally:
        server.stop()


def test_cancel_mid_clip_leaves_the_scene_untouched(context) -> None:
    live = context.window_manager.sam3d_body_status
    before = set(bpy.data.objects.keys())
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    _drain(context, until=lambda: live.message.startswith("frame 1/"))
    assert bpy.ops.sam3d_body.cancel() == {"FINISHED"}
    _drain(context)
    assert live.message == "Cancelled" and set(bpy.data.objects.keys()) == before


def test_clip_options_that_only_fit_photos_are_refused(context) -> None:
    settings = context.scene.sam3d_body
    settings.use_alpha_mask = True
    with pytest.raises(RuntimeError, match="applies to photos"):
        bpy.ops.sam3d_body.reconstruct()


def test_a_movie_clip_datablock_image_sequence(context, tmp_path: Path, parity_dir: Path) -> None:
    """Image: Movie Clip reads the clip's frames from disk (here an image sequence, the case a
    file path cannot name); the build stage shows before the character is built."""
    from PIL import Image

    folder = _image_sequence(parity_dir, tmp_path / "seq", "walk")
    for k in range(1, 5):  # another pass of the render beside it, and a thumbnail: not the clip's
        Image.new("RGB", (512, 512)).save(folder / f"depth_{k:04d}.png")
    Image.new("RGB", (64, 64)).save(folder / "thumb.png")
    clip = bpy.data.movieclips.load(str(folder / "walk_0001.png"))
    assert clip.source == "SEQUENCE"
    settings = context.scene.sam3d_body
    settings.image_source = "CLIP"
    settings.movie_clip = clip
    live = context.window_manager.sam3d_body_status
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    seen = _drain(context)
    assert live.last_error == "", live.last_error + live.log_tail
    assert "Building the animation" in seen, seen
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    assert arm.animation_data.action is not None
    assert "Animated 1 character(s) over 3 frames" in live.message


def test_movie_clip_source_errors(context, tmp_path: Path) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    settings = context.scene.sam3d_body
    settings.image_source = "CLIP"
    with pytest.raises(RuntimeError, match="No clip: choose a Movie Clip"):
        bpy.ops.sam3d_body.reconstruct()
    movie = Path(settings.image_path)
    clip = bpy.data.movieclips.load(str(movie))
    assert ops.movie_clip_path(clip) == str(movie)
    clip.filepath = str(tmp_path / "gone.mp4")
    settings.movie_clip = clip
    with pytest.raises(RuntimeError, match="movie file not found or not a video"):
        bpy.ops.sam3d_body.reconstruct()
    assert not context.window_manager.sam3d_body_status.job_running


def test_a_frame_range_of_the_clip(context) -> None:
    settings = context.scene.sam3d_body
    settings.clip_start, settings.clip_end = 4, 2
    with pytest.raises(RuntimeError, match="before First Frame"):
        bpy.ops.sam3d_body.reconstruct()
    settings.clip_start, settings.clip_end, settings.clip_max_people = 2, 4, 1
    live = context.window_manager.sam3d_body_status
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    _drain(context)
    assert live.last_error == "", live.last_error + live.log_tail
    assert "Animated 1 character(s) over 3 frames" in live.message
    assert (context.scene.frame_start, context.scene.frame_end) == (2, 4)  # the clip's own numbers


def test_an_image_sequence_as_the_camera_background_is_a_clip(context, tmp_path: Path,
                                                              parity_dir: Path) -> None:
    folder = _image_sequence(parity_dir, tmp_path / "bg_seq", "shot")
    image = bpy.data.images.load(str(folder / "shot_0001.png"))
    image.source = "SEQUENCE"
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    context.scene.collection.objects.link(cam)
    context.scene.camera = cam
    bg = cam_data.background_images.new()
    bg.image = image
    settings = context.scene.sam3d_body
    settings.image_source = "CAMERA"
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    assert ops.resolve_image_path(context) == str(folder / "shot_####.png")  # its frames, not the folder
    live = context.window_manager.sam3d_body_status
    assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
    _drain(context)
    assert live.last_error == "", live.last_error + live.log_tail
    assert "Animated 1 character(s) over 3 frames" in live.message
    context.scene.camera = cam  # the build made the clip's own camera the scene's
    image.filepath = str(tmp_path / "gone" / "shot_0001.png")
    with pytest.raises(RuntimeError, match="image-sequence folder not found"):
        bpy.ops.sam3d_body.reconstruct()
