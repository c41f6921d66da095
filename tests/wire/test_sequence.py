"""One image sequence among other files of a folder, named by a pattern (addon/protocol/sequence.py):
the server reads its frames only, the client uploads its frames only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addon.protocol.sequence import (clip_title, first_frame_file, is_clip_source, is_sequence_pattern,
                                     pattern_of, sequence_files)


@pytest.fixture
def render_folder(tmp_path: Path) -> Path:
    """beauty_0001..0003 (24x16), a depth pass beside it and a thumbnail."""
    for k in (1, 2, 3):
        Image.new("RGB", (24, 16), (10 * k, 0, 0)).save(tmp_path / f"beauty_{k:04d}.png")
        Image.new("RGB", (24, 16)).save(tmp_path / f"depth_{k:04d}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "thumb.png")
    return tmp_path


def test_patterns_name_one_frame_field() -> None:
    for text in ("a/walk_####.png", "a/walk.%04d.exr", "walk%d.jpg", "a/#.png"):
        assert is_sequence_pattern(text), text
    for text in ("a/walk_0001.png", "a/walk.png", "a/##_##.png", "a/walk_%04d_%02d.png", "a/####/x.png"):
        assert not is_sequence_pattern(text), text


def test_the_frames_of_a_pattern_in_frame_order(render_folder: Path, tmp_path: Path) -> None:
    names = [p.name for p in sequence_files(render_folder / "beauty_####.png")]
    assert names == ["beauty_0001.png", "beauty_0002.png", "beauty_0003.png"]
    assert [p.name for p in sequence_files(render_folder / "beauty_%04d.png")] == names
    Image.new("RGB", (24, 16)).save(render_folder / "beauty_10000.png")  # past the padding still counts
    Image.new("RGB", (24, 16)).save(render_folder / "beauty_12.png")  # too few digits for ####
    assert [p.name for p in sequence_files(render_folder / "beauty_####.png")][-1] == "beauty_10000.png"
    assert "beauty_12.png" not in [p.name for p in sequence_files(render_folder / "beauty_####.png")]
    assert [p.name for p in sequence_files(render_folder / "beauty_%d.png")][:2] == ["beauty_0001.png", "beauty_0002.png"]
    with pytest.raises(ValueError, match="no file of .* matches"):
        sequence_files(render_folder / "normal_####.png")
    with pytest.raises(ValueError, match="does not exist"):
        sequence_files(tmp_path / "gone" / "beauty_####.png")
    with pytest.raises(ValueError, match="not an image-sequence pattern"):
        sequence_files(render_folder / "beauty_0001.png")


def test_a_frame_file_gives_its_pattern(render_folder: Path) -> None:
    assert pattern_of(render_folder / "depth_0002.png") == str(render_folder / "depth_####.png")
    assert pattern_of("shot.v2.0100.exr") == "shot.v2.####.exr"
    with pytest.raises(ValueError, match="no frame number"):
        pattern_of("slate.png")
    assert first_frame_file(render_folder / "depth_####.png") == str(render_folder / "depth_0001.png")
    assert first_frame_file(render_folder) == str(render_folder / "beauty_0001.png")
    assert is_clip_source(render_folder / "depth_####.png") and is_clip_source(render_folder)
    assert not is_clip_source(render_folder / "thumb.png")
    assert clip_title(render_folder / "depth_####.png") == "depth"
    assert clip_title(render_folder / "%04d.png") == render_folder.name
    assert clip_title("/clips/run.mp4") == "run" and clip_title(render_folder) == render_folder.name


def test_the_server_reads_and_the_client_uploads_the_sequence_only(render_folder: Path) -> None:
    from addon.protocol.client import clip_files
    from server.video.source import open_clip

    source = open_clip(render_folder / "beauty_####.png", step=2)
    assert len(source) == 2 and source.size == (24, 16)
    reds = [int(np.asarray(image)[0, 0, 0]) for _, image in source]
    assert reds == [10, 30]  # beauty_0001 and beauty_0003, never a depth frame
    assert [p.name for p in clip_files(render_folder / "beauty_####.png")] == [
        "beauty_0001.png", "beauty_0002.png", "beauty_0003.png"]


def test_both_command_lines_take_a_pattern_as_a_clip(render_folder: Path) -> None:
    from addon.cli.clip import is_clip_argv
    from server.video.cli import is_clip_input

    pattern = str(render_folder / "beauty_####.png")
    assert is_clip_argv([pattern, "--blend", "o.blend"]) and is_clip_input(pattern)
    assert not is_clip_argv([str(render_folder / "thumb.png"), "--blend", "o.blend"])  # a photo


def test_from_result_finds_the_sequence_it_was_made_from(render_folder: Path, tmp_path: Path) -> None:
    from addon.cli.from_result import _recorded_clip

    pattern = str(render_folder / "beauty_####.png")
    np.savez(tmp_path / "clip.npz", kind=np.array("clip"), source_path=np.array(pattern))
    assert _recorded_clip(str(tmp_path / "clip.npz")) == pattern
    np.savez(tmp_path / "gone.npz", kind=np.array("clip"), source_path=np.array(str(tmp_path / "x_####.png")))
    assert _recorded_clip(str(tmp_path / "gone.npz")) is None
