"""Humanoid bone maps (addon/rig/bone_maps.py): presets, detection from names, map files."""
from __future__ import annotations

import json

import pytest

from addon.rig import bone_maps, naming

_SIDES = ("l", "r")
UE5_MANNY = ["root", "pelvis", *(f"spine_0{i}" for i in range(1, 6)), "neck_01", "neck_02", "head",
             *(n for s in _SIDES for n in (
                 f"clavicle_{s}", f"upperarm_{s}", f"lowerarm_{s}", f"hand_{s}",
                 f"upperarm_twist_01_{s}", f"lowerarm_twist_01_{s}",
                 f"thumb_01_{s}", f"thumb_02_{s}", f"thumb_03_{s}",
                 *(f"{f}_metacarpal_{s}" for f in ("index", "middle", "ring", "pinky")),
                 *(f"{f}_0{i}_{s}" for f in ("index", "middle", "ring", "pinky") for i in (1, 2, 3)),
                 f"thigh_{s}", f"calf_{s}", f"foot_{s}", f"ball_{s}", f"thigh_twist_01_{s}",
                 f"ik_foot_{s}")),
             "ik_foot_root", "ik_hand_root", "ik_hand_gun"]
MIXAMO = [f"mixamorig:{n}" for n in (
    "Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End",
    *(f"{s}{b}" for s in ("Left", "Right") for b in (
        "Shoulder", "Arm", "ForeArm", "Hand", "UpLeg", "Leg", "Foot", "ToeBase", "Toe_End",
        *(f"Hand{f}{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for i in (1, 2, 3, 4)))))]
RIGIFY_METARIG = ["spine", *(f"spine.{i:03d}" for i in range(1, 7)),
                  *(n for s in ("L", "R") for n in (
                      f"shoulder.{s}", f"upper_arm.{s}", f"forearm.{s}", f"hand.{s}",
                      f"thigh.{s}", f"shin.{s}", f"foot.{s}", f"toe.{s}", f"heel.02.{s}",
                      f"breast.{s}", f"pelvis.{s}", f"palm.01.{s}", f"palm.02.{s}",
                      *(f"thumb.0{i}.{s}" for i in (1, 2, 3)),
                      *(f"f_{f}.0{i}.{s}" for f in ("index", "middle", "ring", "pinky")
                        for i in (1, 2, 3))))]
UNITY = ["Hips", "Spine", "Chest", "UpperChest", "Neck", "Head",
         *(f"{s}{b}" for s in ("Left", "Right") for b in (
             "Shoulder", "UpperArm", "LowerArm", "Hand", "UpperLeg", "LowerLeg", "Foot", "Toes",
             *(f"{f}{k}" for f in ("Thumb", "Index", "Middle", "Ring", "Little")
               for k in ("Proximal", "Intermediate", "Distal"))))]


@pytest.mark.parametrize("names, preset, n_spine, n_thumb", [
    (UE5_MANNY, "unreal", 5, 3), (MIXAMO, "mixamo", 3, 3), (RIGIFY_METARIG, "rigify", 3, 3),
    (UNITY, "unity", 3, 3)])
def test_detects_each_convention_with_every_slot(names, preset, n_spine, n_thumb):
    found, mapping = bone_maps.detect_map(names)
    assert found == preset
    assert set(mapping) == set(bone_maps.SLOTS)
    assert len(mapping["spine"]) == n_spine and len(mapping["thumb.L"]) == n_thumb
    # metacarpals and helpers stay unmapped; every bone serves one slot
    used = [b for bones in mapping.values() for b in bones]
    assert len(used) == len(set(used))
    assert not any("metacarpal" in b or "twist" in b or b.startswith("ik_") for b in used)


def test_sides_are_not_swapped():
    _, m = bone_maps.detect_map(UE5_MANNY)
    assert m["hand.L"] == ["hand_l"] and m["hand.R"] == ["hand_r"]
    _, m = bone_maps.detect_map(MIXAMO)
    assert m["upper_arm.L"] == ["mixamorig:LeftArm"] and m["thigh.R"] == ["mixamorig:RightUpLeg"]


@pytest.mark.parametrize("preset", naming.PRESETS)
def test_our_own_armatures_are_detected(preset):
    plan = naming.bone_plan(naming.MHR_JOINT_NAMES, naming.MHR_JOINT_PARENTS, preset)
    found, mapping = bone_maps.detect_map(plan.names)
    assert found == preset
    assert set(mapping) == set(bone_maps.SLOTS)
    # MHR bends the ankle at talocrural, whatever the preset calls it
    foot = mapping["foot.L"][0]
    assert plan.source[list(plan.names).index(foot)] == naming.MHR_JOINT_NAMES.index("l_talocrural")


def test_fbx_namespaces_and_prefixes_are_ignored():
    names = [n.replace("mixamorig:", "mixamorig1:") for n in MIXAMO]
    found, m = bone_maps.detect_map(names)
    assert found == "mixamo" and m["hips"] == ["mixamorig1:Hips"]
    found, m = bone_maps.detect_map([f"Armature|{n[len('mixamorig:'):]}" for n in MIXAMO])
    assert found == "mixamo" and m["head"] == ["Armature|Head"]


def test_unknown_rig_is_refused_with_advice():
    with pytest.raises(ValueError, match="map file"):
        bone_maps.detect_map(["Bone", "Bone.001", "Bone.002"])
    with pytest.raises(ValueError, match="unknown bone-map preset"):
        bone_maps.map_bones(MIXAMO, "blender")


def test_chain_helpers():
    assert bone_maps.is_chain_slot("spine") and bone_maps.is_chain_slot("index.L")
    assert not bone_maps.is_chain_slot("hand.R")
    assert bone_maps.aim_slot("forearm.R") == "hand.R"
    assert bone_maps.aim_slot("neck") == "head" and bone_maps.aim_slot("toe.L") is None


def test_map_file_roundtrip(tmp_path):
    _, m = bone_maps.detect_map(UE5_MANNY)
    path = bone_maps.save_map(tmp_path / "manny.json", m, "unreal")
    doc = json.loads(open(path).read())
    assert doc["format"] == "sam3d-bone-map" and doc["preset"] == "unreal"
    assert bone_maps.load_map(path) == m


@pytest.mark.parametrize("doc, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not a bone map"),
    (json.dumps({"format": "sam3d-bone-map", "version": 9, "slots": {}}), "unsupported"),
    (json.dumps({"format": "sam3d-bone-map", "version": 1}), "no \"slots\""),
    (json.dumps({"format": "sam3d-bone-map", "version": 1, "slots": {"tail": ["a"]}}), "unknown slot"),
    (json.dumps({"format": "sam3d-bone-map", "version": 1, "slots": {"hand.L": ["a", "b"]}}),
     "takes one bone"),
    (json.dumps({"format": "sam3d-bone-map", "version": 1,
                 "slots": {"hand.L": ["a"], "hand.R": ["a"]}}), "in both"),
    (json.dumps({"format": "sam3d-bone-map", "version": 1, "slots": {"spine": []}}), "non-empty"),
])
def test_bad_map_files_name_the_problem(tmp_path, doc, message):
    p = tmp_path / "bad.json"
    p.write_text(doc)
    with pytest.raises(ValueError, match=message) as err:
        bone_maps.load_map(p)
    assert str(p) in str(err.value)


def test_single_names_are_normalised_to_lists():
    assert bone_maps.validate_map({"hips": "pelvis", "spine": ["a", "b"]}) == {
        "hips": ["pelvis"], "spine": ["a", "b"]}
