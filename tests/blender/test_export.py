"""FBX / glb export: round trip through Blender's own importer."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

import bpy

from addon.scene.apply import apply_result
from addon.scene.export import export_fbx, export_glb, fbx_settings
from tests.blender.helpers import evaluated_world_vertices
from tests.conftest import ROOT


def _snapshot(objs):
    """World-space bone rest matrices, parents and evaluated vertices per person."""
    snap = {}
    for arm in (o for o in objs if o.type == "ARMATURE"):
        mesh = next(c for c in arm.children if c.type == "MESH")
        bones = {b.name: (np.array(arm.matrix_world @ b.matrix_local),
                          b.parent.name if b.parent else None) for b in arm.data.bones}
        snap[arm.name] = (bones, evaluated_world_vertices(mesh), mesh.data.shape_keys is not None)
    return snap


def test_fbx_settings_follow_the_reference():
    s = fbx_settings("unity")
    assert s["add_leaf_bones"] is False and s["bake_anim_simplify_factor"] == 0.0
    assert (s["primary_bone_axis"], s["secondary_bone_axis"]) == ("Y", "X")
    assert (s["axis_forward"], s["axis_up"]) == ("-Z", "Y")
    assert s["apply_scale_options"] == "FBX_SCALE_ALL"
    assert fbx_settings("blender")["apply_scale_options"] == "FBX_SCALE_NONE"
    with pytest.raises(ValueError, match="unknown FBX preset"):
        fbx_settings("maya")


@pytest.mark.parametrize("correctives", [False, True])
def test_fbx_round_trip(scene, lod1_result, lod1_rig, tmp_path, correctives):
    objs = apply_result(bpy.context, lod1_result, lod1_rig,
                        options={"correctives": correctives})
    before = _snapshot(objs)
    path = export_fbx(tmp_path / "people.fbx", [o for o in objs if o.type == "ARMATURE"])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=path, automatic_bone_orientation=False, anim_offset=0.0,
                             primary_bone_axis="Y", secondary_bone_axis="X")
    imported = list(bpy.context.scene.objects)
    assert not any(o.type == "CAMERA" for o in imported)
    after = _snapshot(imported)
    assert sorted(after) == sorted(before)
    for name, (bones, verts, has_keys) in before.items():
        bones2, verts2, has_keys2 = after[name]
        assert bones2.keys() == bones.keys()  # no leaf bones added
        for b, (mat, parent) in bones.items():
            assert bones2[b][1] == parent, b
            # heads exact; axes to 1e-3: Blender rebuilds rest matrices from head/tail/roll,
            # and its roll is ill-conditioned for bones along -Y (the eye end sites)
            assert np.abs(bones2[b][0][:3, 3] - mat[:3, 3]).max() < 1e-5, b
            assert np.abs(bones2[b][0][:3, :3] - mat[:3, :3]).max() < 1e-3, b
        assert has_keys2 == has_keys
        err = np.abs(verts2 - verts).max()
        assert err < 1e-4, f"{name}: {err} m"


def test_glb_export_writes_a_skinned_file(scene, lod1_result, lod1_rig, tmp_path):
    """Exported in a fresh interpreter: with torch loaded (as in this test session), importing
    Blender's glTF exporter makes the process hang at exit (bpy 4.5.4, observed here)."""
    objs = apply_result(bpy.context, lod1_result, lod1_rig)
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out = tmp_path / "people.glb"
    script = (
        "import sys, bpy\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"bpy.ops.wm.open_mainfile(filepath={str(blend)!r})\n"
        "from addon.scene.export import export_glb\n"
        f"export_glb({str(out)!r}, [bpy.data.objects[{objs[0].name!r}]])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = out.read_bytes()
    assert data[:4] == b"glTF"
    n = struct.unpack("<I", data[12:16])[0]
    doc = json.loads(data[20:20 + n])
    assert len(doc["skins"]) == 1 and len(doc["skins"][0]["joints"]) == 127
    assert any("targets" in p for m in doc["meshes"] for p in m["primitives"])  # correctives key
    assert not doc.get("cameras")


def test_export_rejects_bad_requests(scene, tmp_path):
    with pytest.raises(ValueError, match="nothing to export"):
        export_fbx(tmp_path / "x.fbx", [])
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    with pytest.raises(ValueError, match="nothing to export"):
        export_glb(tmp_path / "x.glb", [cam])
    arm = bpy.data.objects.new("arm", bpy.data.armatures.new("arm"))
    bpy.context.scene.collection.objects.link(arm)
    with pytest.raises(ValueError, match=".fbx"):
        export_fbx(tmp_path / "x.obj", [arm])
    with pytest.raises(FileNotFoundError):
        export_fbx(tmp_path / "missing" / "x.fbx", [arm])


@pytest.mark.parametrize("preset", ["unity", "unreal"])
def test_engine_presets_export_the_full_skeleton(scene, lod1_result, lod1_rig, tmp_path, preset):
    objs = apply_result(bpy.context, lod1_result, lod1_rig)
    before = evaluated_world_vertices(objs[1])
    path = export_fbx(tmp_path / f"{preset}.fbx", objs[:1], preset=preset)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=path, automatic_bone_orientation=False, anim_offset=0.0)
    arms = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    assert len(arms) == 1 and len(arms[0].data.bones) == 127 and len(meshes) == 1
    # units are baked into the data instead of the objects; the world-space result is the same
    assert np.abs(evaluated_world_vertices(meshes[0]) - before).max() < 1e-4


def test_exporting_the_mesh_brings_its_armature(scene, lod1_result, lod1_rig, tmp_path):
    objs = apply_result(bpy.context, lod1_result, lod1_rig)
    path = export_fbx(tmp_path / "mesh_only.fbx", [objs[1]])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=path, automatic_bone_orientation=False, anim_offset=0.0)
    kinds = sorted(o.type for o in bpy.context.scene.objects)
    assert kinds == ["ARMATURE", "MESH"]


def test_mixamo_preset_sends_the_named_character_without_takes(scene, lod1_result, lod1_rig, tmp_path):
    objs = apply_result(bpy.context, lod1_result, lod1_rig, options={"naming": "mixamo"})
    path = export_fbx(tmp_path / "mixamo.fbx", objs[:1], preset="mixamo")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=path, automatic_bone_orientation=False, anim_offset=0.0)
    arms = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    assert len(arms) == 1 and len([o for o in bpy.context.scene.objects if o.type == "MESH"]) == 1
    names = [b.name for b in arms[0].data.bones]
    assert names and all(n.startswith("mixamorig:") for n in names)
    assert "mixamorig:Hips" in names and "mixamorig:LeftHand" in names
    assert len(bpy.data.actions) == 0
