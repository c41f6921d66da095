# SPDX-License-Identifier: GPL-3.0-or-later
"""`python -m addon.cli`: the saved-result path (--from-result) and the scene options both
paths share (--proportions, --naming, --no-mesh, --preset, --glb)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")

import synthetic_engine as synthetic  # noqa: E402
from addon_helpers import write_photo  # noqa: E402

from addon.cli import photo as cli
from addon.cli import from_result as cli_from_result  # noqa: E402
from addon.protocol.result_file import with_rig_arrays  # noqa: E402


def saved_result(tmp_path: Path) -> str:
    path = tmp_path / "RESULT.npz"
    arrays = with_rig_arrays(synthetic.result(), synthetic.rig_data())
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return str(path)


def scene_summary() -> tuple[list[str], dict]:
    kinds = sorted(o.type for o in bpy.data.objects)
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    return kinds, {"proportions": arm["sam3d_proportions"], "naming": arm["sam3d_naming"]}


@pytest.fixture(autouse=True)
def clean_scene():
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_from_result_flag_selects_the_saved_result_command() -> None:
    assert cli.from_result_argv(["photo.jpg", "--blend", "o.blend"]) is None
    assert cli.from_result_argv(["--blend", "o.blend", "--from-result", "r.npz", "--no-mesh"]) \
        == ["r.npz", "--blend", "o.blend", "--no-mesh"]
    assert cli.from_result_argv(["--from-result=r.npz", "--blend", "o.blend"]) == [
        "r.npz", "--blend", "o.blend"]
    # Both commands parse the scene options with the same definitions.
    photo = cli.build_parser().parse_args(["p.jpg", "--blend", "o.blend"])
    saved = cli_from_result.build_parser().parse_args(["r.npz", "--blend", "o.blend"])
    assert cli_from_result.apply_options(photo) == cli_from_result.apply_options(saved) == {
        "correctives": True, "camera": True, "naming": "mhr", "proportions": "baked",
        "mesh": True}


def test_from_result_in_process_passes_the_build_options(tmp_path: Path) -> None:
    result = saved_result(tmp_path)
    blend = tmp_path / "rig_only.blend"
    code = cli.main(["--from-result", result, "--blend", str(blend), "--no-mesh",
                     "--proportions", "exact", "--naming", "unreal", "--no-camera"])
    assert code == 0 and blend.stat().st_size > 0
    assert scene_summary() == (["ARMATURE"], {"proportions": "exact", "naming": "unreal"})
    code = cli.main(["--from-result", result, "--blend", str(blend)])
    assert code == 0
    assert scene_summary() == (["ARMATURE", "CAMERA", "MESH"],
                               {"proportions": "baked", "naming": "mhr"})


def test_from_result_usage_and_build_errors(tmp_path: Path, capsys) -> None:
    result = saved_result(tmp_path)
    assert cli.main(["--from-result", str(tmp_path / "none.npz"), "--blend",
                     str(tmp_path / "o.blend")]) == 2
    assert "RESULT.npz file not found" in capsys.readouterr().err
    assert cli.main(["--from-result", result, "--blend", str(tmp_path / "o.blend"),
                     "--glb", str(tmp_path / "o.gltf")]) == 2
    assert "--glb must end in .glb" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: a photo makes no sense here
        cli.main(["--from-result", result, "photo.jpg", "--blend", str(tmp_path / "o.blend")])
    assert exit_info.value.code == 2
    plain = tmp_path / "plain.npz"
    np.savez(plain, **synthetic.result())
    assert cli.main(["--from-result", str(plain), "--blend", str(tmp_path / "o.blend")]) == 1
    assert "no rig_ arrays" in capsys.readouterr().err


def test_from_result_subprocess_writes_fbx_and_glb(tmp_path: Path) -> None:
    result = saved_result(tmp_path)
    out = {ext: tmp_path / f"person.{ext}" for ext in ("blend", "fbx", "glb")}
    proc = subprocess.run(
        [sys.executable, "-m", "addon.cli", "--from-result", result, "--blend", str(out["blend"]),
         "--fbx", str(out["fbx"]), "--preset", "unreal", "--glb", str(out["glb"]),
         "--naming", "mixamo"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out["fbx"].read_bytes()[:18] == b"Kaydara FBX Binary"
    assert out["glb"].read_bytes()[:4] == b"glTF"
    assert out["blend"].stat().st_size > 0
    assert all(f"wrote {path}" in proc.stderr for path in out.values())


def test_photo_path_passes_the_scene_options(tmp_path: Path, monkeypatch) -> None:
    photo = write_photo(tmp_path / "p.png", 64, 48)
    monkeypatch.setattr(cli, "run_jobs", lambda runner, request, timeout=None: (
        synthetic.rig_data(), synthetic.result()))
    blend = tmp_path / "o.blend"
    code = cli.main([str(photo), "--checkpoint", str(tmp_path), "--blend", str(blend),
                     "--no-mesh", "--proportions", "exact", "--naming", "mixamo"])
    assert code == 0 and blend.stat().st_size > 0
    assert scene_summary() == (["ARMATURE", "CAMERA"], {"proportions": "exact",
                                                         "naming": "mixamo"})
    assert cli.main([str(photo), "--blend", str(blend), "--fbx", str(tmp_path / "o.obj")]) == 2
    with pytest.raises(SystemExit):
        cli.main([str(photo), "--blend", str(blend), "--proportions", "loose"])
