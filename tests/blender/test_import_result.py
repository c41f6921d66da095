"""Import a saved RESULT.npz (no model run): same scene as a live result, CLI included."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import bpy

from addon.scene.import_result import import_result
from addon.protocol.result_file import (RIG_PREFIX, load_result_file, split_rig_arrays,
                                 with_rig_arrays)
from addon.protocol.results import save_rig_npz
from addon.rig import axes
from tests.blender.helpers import evaluated_world_vertices
from tests.conftest import ROOT


def _save(path, arrays) -> str:
    with open(path, "wb") as handle:  # as `python -m server reconstruct` writes it
        np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})
    return str(path)


def _check_scene(objs, result) -> None:
    arms = [o for o in objs if o.type == "ARMATURE"]
    meshes = [o for o in objs if o.type == "MESH"]
    assert len(arms) == len(meshes) == result["pred_cam_t"].shape[0]
    for i, (arm, mesh) in enumerate(zip(arms, meshes)):
        got = evaluated_world_vertices(mesh) - np.array(arm.matrix_world)[:3, 3]
        want = axes.mhr_to_blender_points(result["mhr_vertices"][i])
        assert np.abs(got - want).max() < 1e-4


def test_self_contained_result_file_imports_with_numpy_only(scene, lod1_result, lod1_rig,
                                                             tmp_path):
    path = _save(tmp_path / "RESULT.npz", with_rig_arrays(lod1_result, lod1_rig))
    result, rig = load_result_file(path)
    assert rig is not None and rig.n_joints == 127
    assert not any(k.startswith(RIG_PREFIX) for k in result.arrays)
    objs = import_result(bpy.context, path)
    _check_scene(objs, lod1_result)
    assert objs[0].users_collection[0].name == "RESULT"
    assert [o.type for o in objs][-1] == "CAMERA"


def test_rig_from_npz_or_mhr_file(scene, standin_lod1, lod1_result, lod1_rig, tmp_path):
    path = _save(tmp_path / "plain.npz", lod1_result)
    with pytest.raises(ValueError, match="no rig_ arrays"):
        import_result(bpy.context, path)
    rig_path = str(tmp_path / "rig.npz")
    save_rig_npz(rig_path, lod1_rig)
    _check_scene(import_result(bpy.context, path, rig=rig_path), lod1_result)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    _check_scene(import_result(bpy.context, path, rig=str(standin_lod1)), lod1_result)


def test_bad_result_files_are_rejected(scene, lod1_result, lod1_rig, tmp_path):
    with pytest.raises(FileNotFoundError):
        import_result(bpy.context, tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_result_file(junk)
    partial = with_rig_arrays(lod1_result, lod1_rig)
    del partial["rig_skin_weights"]
    with pytest.raises(ValueError, match="rig_skin_weights"):
        split_rig_arrays(partial)
    with pytest.raises(ValueError, match="already has rig arrays"):
        with_rig_arrays(with_rig_arrays(lod1_result, lod1_rig), lod1_rig)
    with pytest.raises(FileNotFoundError, match="rig file"):
        import_result(bpy.context, _save(tmp_path / "r.npz", lod1_result),
                      rig=str(tmp_path / "nope.npz"))
    assert not bpy.data.objects


def test_cli_from_result_with_mhr(standin_lod1, lod1_result, tmp_path):
    path = _save(tmp_path / "RESULT.npz", lod1_result)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "addon.cli.from_result", path, "--mhr", str(standin_lod1),
           "--blend", str(tmp_path / "out.blend"), "--fbx", str(tmp_path / "out.fbx"),
           "--preset", "unity"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out.blend").stat().st_size > 0 and (tmp_path / "out.fbx").stat().st_size > 0
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "missing.npz"), "--blend", "x.blend"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr


def _official_only_file(tmp_path, standin_lod1, mhr_samples, name: str) -> tuple[str, dict]:
    """One real 3DB sample as Meta's demo saves a person: official names only, no person axis,
    with pred_vertices from the stand-in forward (the real ones belong to the real MHR)."""
    from tests.rig.standin_data import SAMPLE_FOCAL, SAMPLE_IMAGE_SIZE, load_module, sample, standin_rig
    from server.mhr.rig_data import person_rig_state

    s = sample(mhr_samples, name)
    state = person_rig_state(load_module(str(standin_lod1)), s["mhr_model_params"][None],
                             s["shape_params"][None], s["expr_params"][None])
    s["pred_vertices"] = (state["mhr_vertices"][0] * np.array([1, -1, -1]) / 100.0).astype(np.float32)
    s["faces"] = standin_rig(str(standin_lod1))["faces"]
    w, h = SAMPLE_IMAGE_SIZE
    s["cam_int"] = np.array([[SAMPLE_FOCAL, 0, w / 2], [0, SAMPLE_FOCAL, h / 2], [0, 0, 1]], np.float32)
    assert not any(k.startswith("mhr_") and k != "mhr_model_params" for k in s)
    return _save(tmp_path / f"{name}_official.npz", s), s


def _camera_frame(points_world: np.ndarray, camera) -> np.ndarray:
    """Blender world points -> the photo camera's OpenCV frame (x right, y down, z forward)."""
    inv = np.linalg.inv(np.array(camera.matrix_world))
    local = points_world @ inv[:3, :3].T + inv[:3, 3]
    return local * np.array([1.0, -1.0, -1.0])


@pytest.mark.parametrize("name", ["img_subj00", "img_subj01"])
def test_official_only_result_with_mhr(scene, standin_lod1, mhr_samples, tmp_path, name):
    path, s = _official_only_file(tmp_path, standin_lod1, mhr_samples, name)
    with pytest.raises(ValueError, match=r"only Meta's official outputs.*--mhr"):
        import_result(bpy.context, path)
    objs = import_result(bpy.context, path, rig=str(standin_lod1))
    mesh = next(o for o in objs if o.type == "MESH")
    camera = next(o for o in objs if o.type == "CAMERA")
    got = _camera_frame(evaluated_world_vertices(mesh), camera)
    want = s["pred_vertices"].astype(np.float64) + s["pred_cam_t"].astype(np.float64)
    err = np.abs(got - want).max()
    print(f"{name}: official-only import, mesh vs pred_vertices + pred_cam_t: {err:.2e} m")
    assert err < 2e-4


def test_official_only_result_through_the_cli(standin_lod1, mhr_samples, tmp_path):
    path, _ = _official_only_file(tmp_path, standin_lod1, mhr_samples, "img_subj00")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "addon.cli", "--from-result", path, "--blend", str(tmp_path / "o.blend")]
    bare = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0 and "--mhr" in bare.stderr and not (tmp_path / "o.blend").exists()
    ckpt = tmp_path / "checkpoint" / "assets"  # a checkpoint folder works as --mhr too
    ckpt.mkdir(parents=True)
    os.symlink(standin_lod1, ckpt / "mhr_model.pt")
    done = subprocess.run(base + ["--mhr", str(ckpt.parent)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o.blend").stat().st_size > 100_000
