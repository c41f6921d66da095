"""``--retarget-to``: the saved-result command line poses the user's rig, saves it in the .blend
and exports it as FBX that an independent reader (assimp) loads; bad options exit 2 before any
work is done."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import bpy

from addon.cli import from_result as cli
from addon.protocol.result_file import with_rig_arrays
from addon.rig import bone_maps
from addon.scene.apply import apply_result
from addon.scene.export import export_fbx
from tests.blender.test_retarget_scene import direction_errors


@pytest.fixture()
def files(scene, lod1_result, lod1_rig, tmp_path):
    result = tmp_path / "RESULT.npz"
    np.savez(result, **{k: np.asarray(v) for k, v in with_rig_arrays(lod1_result, lod1_rig).items()})
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={
        "naming": "mixamo", "pose": False, "camera": False, "proportions": "baked"})
    target = export_fbx(tmp_path / "my_rig.fbx", [o for o in objs if o.type in {"ARMATURE", "MESH"}][:2],
                        preset="unity")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return str(result), target, tmp_path


def test_cli_poses_the_target_and_exports_it(files, capsys):
    result, target, tmp = files
    out, fbx = tmp / "out" / "posed.blend", tmp / "out" / "posed.fbx"
    rc = cli.main([result, "--blend", str(out), "--fbx", str(fbx), "--retarget-to", target,
                   "--no-camera"])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "worst direction error" in err and "posed" in err
    bpy.ops.wm.open_mainfile(filepath=str(out))
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    source = next(o for o in arms if "sam3d_person" in o and o["sam3d_person"] == 0)
    posed = next(o for o in arms if "sam3d_retarget" in o)
    assert bone_maps.detect_map([b.name for b in posed.data.bones])[0] == "mixamo"
    assert max(direction_errors(source, posed).values()) < 5.0
    moved = [pb for pb in posed.pose.bones if not np.allclose(np.array(pb.matrix_basis), np.eye(4))]
    assert len(moved) > 40
    if shutil.which("assimp"):
        run = subprocess.run(["assimp", "info", str(fbx)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        counts = {k: int(v) for k, v in re.findall(r"^(\w[\w ]*?):\s+(\d+)\s*$", run.stdout, flags=re.M)}
        assert counts["Meshes"] == 1 and counts["Bones"] == len(posed.data.bones)
        assert counts["Animations"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--retarget-to", "nowhere.fbx"], "file not found"),
    (["--retarget-to", "RESULT.npz"], ".fbx or .blend"),
    (["--bone-map", "maya"], "--bone-map must be"),
    (["--bone-map", "missing.json"], "--bone-map file not found"),
])
def test_cli_bad_retarget_options_exit_2(files, capsys, extra, message):
    result, target, tmp = files
    args = [result, "--blend", str(tmp / "o.blend")]
    if "--retarget-to" not in extra:
        args += ["--retarget-to", target]
    args += [a.replace("RESULT.npz", result) for a in extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp / "o.blend").exists()


def test_cli_person_out_of_range_exits_1(files, capsys):
    result, target, tmp = files
    rc = cli.main([result, "--blend", str(tmp / "o.blend"), "--retarget-to", target,
                   "--retarget-person", "5", "--no-camera"])
    assert rc == 1 and "has 2 reconstructed people" in capsys.readouterr().err
