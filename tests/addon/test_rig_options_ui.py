# SPDX-License-Identifier: GPL-3.0-or-later
"""The rig options in the UI: apply_result's `mesh` option, the Character / Export settings,
the Import Result operator (File > Import) and the glTF export operator."""
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
from addon_helpers import PACKAGE, enabled_addon, write_photo  # noqa: E402
from test_addon_register import _draw_panel, _snapshot  # noqa: E402

from addon.scene.apply import apply_result  # noqa: E402
from addon.protocol.result_file import with_rig_arrays  # noqa: E402

PER_PERSON = ("pred_cam_t", "focal_length", "bbox", "pred_vertices", "mhr_skel_state",
              "mhr_rest_skel_state", "mhr_vertices", "mhr_rest_vertices")


def two_people() -> dict[str, np.ndarray]:
    """The synthetic result with a second person 1 m to the side."""
    one = synthetic.result()
    out = dict(one)
    for key in PER_PERSON:
        out[key] = np.concatenate([one[key], one[key]])
    out["pred_cam_t"][1, 0] += 1.0
    out["pred_keypoints_2d"] = np.linspace(0, 40, 2 * 70 * 2, dtype=np.float32).reshape(2, 70, 2)
    return out


def save_result(path: Path, result: dict, rig: dict | None = None) -> str:
    arrays = with_rig_arrays(result, rig) if rig is not None else result
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return str(path)


def pose_matrices(arm) -> np.ndarray:
    return np.array([np.array(pb.matrix) for pb in arm.pose.bones])


@pytest.fixture
def context():
    yield from enabled_addon()


# --- apply_result(mesh=False) -----------------------------------------------------------------


@pytest.mark.parametrize("proportions", ["baked", "exact"])
def test_rig_only_build_has_the_same_posed_armatures(proportions) -> None:
    rig = synthetic.rig_data()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    full = apply_result(bpy.context, two_people(), rig, options={"proportions": proportions})
    want = [(o.location.copy(), pose_matrices(o)) for o in full if o.type == "ARMATURE"]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objs = apply_result(bpy.context, two_people(), rig,
                        options={"proportions": proportions, "mesh": False})
    assert [o.type for o in objs] == ["ARMATURE", "ARMATURE", "CAMERA"]
    assert not bpy.data.meshes and not any(o.type == "MESH" for o in bpy.data.objects)
    arms = objs[:2]
    for arm, (location, matrices) in zip(arms, want):
        assert arm["sam3d_proportions"] == proportions
        assert not arm.children
        assert np.allclose(arm.location, location)
        assert np.abs(pose_matrices(arm) - matrices).max() < 1e-6
    # The pose is really there (the synthetic person is turned 30 degrees about Y).
    assert np.abs(pose_matrices(arms[0])[0][:3, :3] - np.eye(3)).max() > 0.1
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objs = apply_result(bpy.context, two_people(), rig, options={"mesh": False, "camera": False})
    assert [o.type for o in objs] == ["ARMATURE", "ARMATURE"]
    bpy.ops.wm.read_factory_settings(use_empty=True)


# --- settings -> apply options, panels --------------------------------------------------------


def test_character_settings_reach_apply_options(context) -> None:
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    settings = context.scene.sam3d_body
    options = ops.apply_options(context)
    assert (options["proportions"], options["mesh"], options["naming"]) == ("baked", True, "mhr")
    settings.proportions = "exact"
    settings.build_mesh = False
    settings.naming_preset = "mixamo"
    options = ops.apply_options(context)
    assert (options["proportions"], options["mesh"], options["naming"]) == ("exact", False,
                                                                          "mixamo")
    from addon.scene.apply import DEFAULT_OPTIONS
    assert set(options) <= set(DEFAULT_OPTIONS)  # apply_result accepts every one of them
    tip = type(settings).bl_rna.properties["proportions"].enum_items["exact"].description
    assert "Clear Pose" in tip


def test_panels_draw_the_new_settings_without_writing(context) -> None:
    settings = context.scene.sam3d_body
    before = _snapshot(settings)
    calls = [c for name in ("SAM3D_PT_input", "SAM3D_PT_character", "SAM3D_PT_export")
             for c in _draw_panel(getattr(bpy.types, name), context)]
    assert _snapshot(settings) == before
    props = {c[1][1] for c in calls if c[0] == "prop"}
    assert {"proportions", "build_mesh", "naming_preset", "export_preset", "glb_path"} <= props
    operators = {c[1][0] for c in calls if c[0] == "operator"}
    assert {"sam3d_body.import_result", "sam3d_body.export_glb",
            "sam3d_body.export_fbx"} <= operators


def test_import_menu_entry_follows_registration() -> None:
    gen = enabled_addon()
    next(gen)
    ops = sys.modules[f"{PACKAGE}.ui.operators"]
    try:
        assert ops.menu_import in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    finally:
        next(gen, None)
    assert ops.menu_import not in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()


# --- Import Result operator --------------------------------------------------------------------


def test_import_result_operator_builds_with_the_scene_settings(context, tmp_path: Path) -> None:
    path = save_result(tmp_path / "saved.npz", two_people(), synthetic.rig_data())
    photo = write_photo(tmp_path / "photo.png", 64, 48)
    settings = context.scene.sam3d_body
    settings.proportions = "exact"
    settings.build_mesh = False
    assert bpy.ops.sam3d_body.import_result(filepath=path, image_path=str(photo)) == {"FINISHED"}
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    assert len(arms) == 2 and not any(o.type == "MESH" for o in bpy.data.objects)
    assert all(a["sam3d_proportions"] == "exact" for a in arms)
    assert settings.last_collection == "photo"  # named after the photo, as a live result
    cam = context.scene.camera
    assert cam is not None and cam.data.background_images[0].image.filepath == str(photo)
    # The bbox and intrinsics Refine needs are on the armatures, as after Reconstruct.
    assert list(arms[0]["sam3d_bbox"]) == [0, 0, 64, 48]
    assert arms[0]["sam3d_image"] == str(photo)
    assert np.allclose(arms[1]["sam3d_keypoints_2d"], two_people()["pred_keypoints_2d"][1].ravel())

    settings.build_mesh = True
    assert bpy.ops.sam3d_body.import_result(filepath=path) == {"FINISHED"}
    assert settings.last_collection == "saved"
    assert len([o for o in bpy.data.collections["saved"].objects if o.type == "MESH"]) == 2


def test_import_result_operator_reports_bad_inputs(context, tmp_path: Path) -> None:
    no_rig = save_result(tmp_path / "plain.npz", synthetic.result())
    cases = [
        ({"filepath": str(tmp_path / "missing.npz")}, "Result file not found"),
        ({"filepath": str(write_photo(tmp_path / "p.png"))}, "ends in .npz"),
        ({"filepath": no_rig}, "no rig_ arrays"),
        ({"filepath": no_rig, "rig_path": str(tmp_path / "mhr_model.pt")}, "rig .npz"),
        ({"filepath": no_rig, "rig_path": str(tmp_path / "none.npz")}, "Rig file not found"),
        ({"filepath": no_rig, "image_path": str(tmp_path / "none.png")}, "Photo not found"),
    ]
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    cases.append(({"filepath": str(junk)}, "not a readable"))
    for kwargs, message in cases:
        with pytest.raises(RuntimeError, match=message):
            bpy.ops.sam3d_body.import_result(**kwargs)
    assert not bpy.data.objects

    from addon.protocol.results import save_rig_npz
    rig_path = tmp_path / "rig.npz"
    save_rig_npz(str(rig_path), synthetic.rig_data())
    assert bpy.ops.sam3d_body.import_result(filepath=no_rig, rig_path=str(rig_path)) == {
        "FINISHED"}
    assert len([o for o in bpy.data.objects if o.type == "ARMATURE"]) == 1


# --- Export operators --------------------------------------------------------------------------


def test_export_fbx_operator_uses_the_preset(context, tmp_path: Path, monkeypatch) -> None:
    import addon.scene.export as export

    seen = []
    real = export.export_fbx
    monkeypatch.setattr(export, "export_fbx",
                        lambda path, objs, preset, context=None: seen.append(preset)
                        or real(path, objs, preset, context=context))
    path = save_result(tmp_path / "r.npz", synthetic.result(), synthetic.rig_data())
    assert bpy.ops.sam3d_body.import_result(filepath=path) == {"FINISHED"}
    settings = context.scene.sam3d_body
    settings.export_preset = "unreal"
    out = tmp_path / "out.fbx"
    assert bpy.ops.sam3d_body.export_fbx(filepath=str(out)) == {"FINISHED"}
    assert seen == ["unreal"] and out.read_bytes()[:18] == b"Kaydara FBX Binary"
    with pytest.raises(RuntimeError, match="Folder does not exist"):
        bpy.ops.sam3d_body.export_glb(filepath=str(tmp_path / "nodir" / "x.glb"))
    settings.glb_path = "//x.glb"  # relative, but the .blend was never saved
    with pytest.raises(RuntimeError, match="Save the .blend first"):
        bpy.ops.sam3d_body.export_glb()


def test_export_glb_operator_in_a_fresh_process(tmp_path: Path) -> None:
    """In a fresh interpreter: with torch loaded (this test session), importing Blender's glTF
    exporter makes the process hang at exit (bpy 4.5.4)."""
    path = save_result(tmp_path / "r.npz", synthetic.result(), synthetic.rig_data())
    out = tmp_path / "person.glb"
    script = (
        "import sys, bpy, addon_utils\n"
        "bpy.ops.wm.read_factory_settings(use_empty=True)\n"
        f"addon_utils.enable({PACKAGE!r}, default_set=True)\n"
        f"assert bpy.ops.sam3d_body.import_result(filepath={path!r}) == {{'FINISHED'}}\n"
        "bpy.context.scene.sam3d_body.glb_path = sys.argv[1][:-4]  # the suffix is added\n"
        "assert bpy.ops.sam3d_body.export_glb() == {'FINISHED'}\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:4] == b"glTF"
