"""Bone-naming presets, skeleton merging and weight merging (addon/rig/naming.py), checked on
the MHR stand-in's real joint names, parents and skin weights."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from addon.rig import axes, naming, skinning
from tests.conftest import ROOT

_MIXAMO_FINGERS = [f"Hand{f}{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky")
                   for i in (1, 2, 3)]
MIXAMO_REQUIRED = [f"{naming.MIXAMO_PREFIX}{n}" for n in (
    "Hips", "Spine", "Spine1", "Spine2", "Neck", "Head",
    *(f"{s}{b}" for s in ("Left", "Right") for b in (
        "Shoulder", "Arm", "ForeArm", "Hand", "UpLeg", "Leg", "Foot", "ToeBase",
        *_MIXAMO_FINGERS)))]


@functools.lru_cache(maxsize=2)
def _model_tables(path: str) -> dict:
    import torch
    m = torch.jit.load(path, map_location="cpu").eval()
    idx, w = m.get_lbsw()
    idx = idx.numpy().astype(np.int32)
    w = w.numpy().astype(np.float32)
    idx[w == 0] = 0
    lbs = m.character_torch.linear_blend_skinning
    return {
        "names": list(m.get_joint_names()),
        "parents": m.character_torch.skeleton.joint_parents.numpy().astype(np.int32),
        "skin_indices": idx, "skin_weights": w,
        "inverse_bind_pose": lbs.inverse_bind_pose.numpy().astype(np.float64),
        "rest_vertices": m.character_torch.mesh.rest_vertices.numpy().astype(np.float64),
    }


@pytest.fixture(scope="module")
def rig(standin_lod1) -> dict:
    return _model_tables(str(standin_lod1))


def _dense(idx: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((idx.shape[0], n))
    np.add.at(out, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()),
              w.ravel().astype(np.float64))
    return out


# --- names and presets ------------------------------------------------------------------------

def test_reference_tables_match_the_model(rig):
    assert list(naming.MHR_JOINT_NAMES) == rig["names"]
    assert list(naming.MHR_JOINT_PARENTS) == rig["parents"].tolist()


@pytest.mark.parametrize("preset", naming.PRESETS)
def test_preset_is_valid_on_the_real_skeleton(rig, preset):
    plan = naming.bone_plan(rig["names"], rig["parents"], preset)
    assert naming.plan_problems(plan, rig["names"], rig["parents"]) == []
    assert len(set(plan.names)) == len(plan.names)                      # unique
    assert all(0 < len(n.encode()) <= 63 for n in plan.names)
    assert np.all(plan.parents < np.arange(len(plan.names)))           # parents precede
    assert int(np.sum(plan.parents < 0)) == 1
    assert plan.bone_of_joint.shape == (127,) and plan.bone_of_joint.min() >= 0  # all mapped
    assert np.array_equal(plan.source[plan.bone_of_joint], plan.merge_target)
    assert set(plan.collections) <= set(naming.BONE_COLLECTIONS)
    # A kept joint's bone parent is the bone of its nearest kept ancestor.
    for b, j in enumerate(plan.source):
        p = rig["parents"][j]
        while p >= 0 and p not in plan.source:
            p = rig["parents"][p]
        assert plan.parents[b] == (-1 if p < 0 else int(np.flatnonzero(plan.source == p)[0]))


@pytest.mark.parametrize("preset", naming.PRESETS)
def test_left_right_names_mirror(rig, preset):
    plan = naming.bone_plan(rig["names"], rig["parents"], preset)
    by_joint = {rig["names"][j]: n for j, n in zip(plan.source, plan.names)}
    left_marker, right_marker = {"mhr": ("l_", "r_"), "unreal": ("_l", "_r"),
                                 "mixamo": ("Left", "Right")}[preset]
    pairs = 0
    for name in rig["names"]:
        if name.startswith("l_") and name in by_joint:
            twin = by_joint["r_" + name[2:]]
            assert left_marker in by_joint[name] and right_marker in twin
            assert by_joint[name].replace(left_marker, right_marker) == twin
            pairs += 1
        elif name.startswith(("c_", "body_world", "root")) and name in by_joint:
            assert naming.mirror_name(by_joint[name], preset) == by_joint[name]
    # Mixamo per side: 4 leg + 4 arm + 5x4 finger bones + the eye.
    assert pairs == {"mhr": 54, "unreal": 54, "mixamo": 29}[preset]


def test_mhr_preset_is_identity(rig):
    plan = naming.bone_plan(rig["names"], rig["parents"])
    assert plan.preset == naming.DEFAULT_PRESET == "mhr"
    assert list(plan.names) == rig["names"] and not plan.merges
    assert np.array_equal(plan.parents, rig["parents"])


def test_unreal_names(rig):
    plan = naming.bone_plan(rig["names"], rig["parents"], "unreal")
    name = dict(zip((rig["names"][j] for j in plan.source), plan.names))
    expected = {
        "body_world": "root", "root": "pelvis", "c_spine0": "spine_01", "c_spine3": "spine_04",
        "c_neck": "neck_01", "c_head": "head", "l_clavicle": "clavicle_l", "l_uparm": "upperarm_l",
        "l_lowarm": "lowerarm_l", "l_wrist": "hand_l", "r_upleg": "thigh_r", "r_lowleg": "calf_r",
        "r_talocrural": "foot_r", "r_ball": "ball_r", "l_index1": "index_01_l",
        "l_index3": "index_03_l", "l_thumb1": "thumb_01_l", "l_pinky0": "pinky_metacarpal_l",
        "l_uparm_twist0_proc": "upperarm_twist_01_l", "l_uparm_twist4_proc": "upperarm_twist_05_l",
        "l_lowarm_twist1_proc": "lowerarm_twist_01_l", "r_upleg_twist2_proc": "thigh_twist_03_r",
        "r_lowleg_twist4_proc": "calf_twist_04_r",
    }
    assert {k: name[k] for k in expected} == expected
    assert all(n == n.lower() for n in plan.names)


def test_mixamo_hierarchy(rig):
    plan = naming.bone_plan(rig["names"], rig["parents"], "mixamo")
    assert plan.merges and len(plan.names) == 65
    assert set(MIXAMO_REQUIRED) <= set(plan.names)
    assert all(n.startswith(naming.MIXAMO_PREFIX) for n in plan.names)
    parent = {n: (plan.names[p] if p >= 0 else None) for n, p in zip(plan.names, plan.parents)}
    p = naming.MIXAMO_PREFIX
    chains = [("Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End"),
              ("Spine2", "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftHandIndex1",
               "LeftHandIndex2", "LeftHandIndex3", "LeftHandIndex4"),
              ("LeftHand", "LeftHandThumb1"), ("LeftHand", "LeftHandPinky1"),
              ("Hips", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase")]
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            assert parent[p + b] == p + a, (a, b)
    assert parent[p + "Hips"] is None


def test_mixamo_merge_targets(rig):
    names = rig["names"]
    plan = naming.bone_plan(names, rig["parents"], "mixamo")
    target = {names[j]: plan.names[plan.bone_of_joint[j]] for j in range(127)}
    p = naming.MIXAMO_PREFIX
    for i in range(5):
        assert target[f"l_uparm_twist{i}_proc"] == p + "LeftArm"
        assert target[f"r_upleg_twist{i}_proc"] == p + "RightUpLeg"
    for i in range(1, 5):
        assert target[f"l_lowarm_twist{i}_proc"] == p + "LeftForeArm"
        assert target[f"r_lowleg_twist{i}_proc"] == p + "RightLeg"
    assert target["body_world"] == target["c_spine0"] == p + "Hips"
    assert target["l_wrist_twist"] == p + "LeftForeArm" and target["l_foot"] == p + "LeftLeg"
    assert target["r_subtalar"] == target["r_transversetarsal"] == p + "RightFoot"
    assert target["l_pinky0"] == target["l_thumb0"] == p + "LeftHand"
    assert target["c_neck_twist1_proc"] == p + "Neck"
    assert {target[n] for n in ("c_jaw", "c_teeth", "c_tongue4", "c_jaw_null")} == {p + "Head"}
    # Every merged joint except the root goes up its own chain to the nearest kept joint.
    kept = set(plan.source.tolist())
    for j in range(1, 127):
        if j not in kept:
            a = rig["parents"][j]
            while a not in kept:
                a = rig["parents"][a]
            assert plan.merge_target[j] == a


def test_bone_collections():
    c = naming.bone_collection
    assert [c(n) for n in ("root", "c_spine2", "l_uparm", "r_wrist", "l_wrist_twist", "r_ball")] \
        == ["Body"] * 6
    assert [c(n) for n in ("l_thumb0", "r_index2", "l_pinky3")] == ["Hands"] * 3
    assert [c(n) for n in ("c_jaw", "c_teeth", "c_tongue2", "l_eye")] == ["Face"] * 4
    assert [c(n) for n in ("l_uparm_twist0_proc", "c_neck_twist1_proc", "r_index_null",
                           "c_head_null", "l_eye_null")] == ["Helpers"] * 5
    counts = {k: [c(n) for n in naming.MHR_JOINT_NAMES].count(k) for k in naming.BONE_COLLECTIONS}
    # Helpers: 2x18 limb twist procs + 2 neck procs + 14 nulls; Hands: 2x(4+3+3+3+4) finger
    # joints; Face: jaw, teeth, 5 tongue, 2 eyes; Body: the remaining 32.
    assert counts == {"Body": 32, "Hands": 34, "Face": 9, "Helpers": 52}


def test_bad_inputs_are_rejected(rig):
    names, parents = rig["names"], rig["parents"]
    with pytest.raises(ValueError, match="unknown bone-naming preset"):
        naming.bone_plan(names, parents, "maya")
    with pytest.raises(ValueError, match="not one of the 127 MHR joint names"):
        naming.bone_collection("L_wrist")
    with pytest.raises(ValueError, match="lacks 1 MHR joints"):
        naming.bone_plan(names[:-1], parents[:-1])
    with pytest.raises(ValueError, match="duplicate joint names"):
        naming.bone_plan(names[:-1] + [names[0]], parents)
    with pytest.raises(ValueError, match="127 joints but 126 parents"):
        naming.bone_plan(names, parents[:-1])
    bad = parents.copy()
    bad[3] = 50
    with pytest.raises(ValueError, match="parents precede children"):
        naming.bone_plan(names, bad)
    with pytest.raises(ValueError, match="sequence of names"):
        naming.bone_names("root")


def test_plan_problems_catch_broken_plans(rig):
    names, parents = rig["names"], rig["parents"]
    plan = naming.bone_plan(names, parents, "unreal")
    dup = list(plan.names)
    dup[5] = dup[4]
    assert any("used by joints" in m for m in
               naming.plan_problems(dataclasses.replace(plan, names=tuple(dup)), names, parents))
    swapped = list(plan.names)
    i = plan.names.index("hand_l")
    swapped[i] = "hand_r_extra_l"
    broken = dataclasses.replace(plan, names=tuple(swapped))
    assert any("not mirrored" in m for m in naming.plan_problems(broken, names, parents))
    sided = list(plan.names)
    sided[plan.names.index("head")] = "head_l"
    assert any("centre joint" in m for m in
               naming.plan_problems(dataclasses.replace(plan, names=tuple(sided)), names, parents))
    mix = naming.bone_plan(names, parents, "mixamo")
    lop = mix.merge_target.copy()
    lop[names.index("l_foot")] = names.index("l_talocrural")  # right side still -> leg
    lob = mix.bone_of_joint.copy()
    lob[names.index("l_foot")] = mix.names.index("mixamorig:LeftFoot")
    problems = naming.plan_problems(dataclasses.replace(mix, merge_target=lop, bone_of_joint=lob),
                                    names, parents)
    assert any("merges into 'l_talocrural' but 'r_foot'" in m for m in problems)
    flipped = mix.parents.copy()
    flipped[1] = 5
    assert any("does not precede" in m for m in
               naming.plan_problems(dataclasses.replace(mix, parents=flipped), names, parents))


def test_merged_parents_and_targets_on_a_toy_tree():
    #      0
    #    1   4
    #   2 3   5 - 6
    parents = [-1, 0, 1, 1, 0, 4, 5]
    keep = np.array([False, True, False, True, True, False, True])
    assert naming.merged_parents(parents, keep).tolist() == [-1, 0, -1, 2]
    with pytest.raises(ValueError, match="2 kept roots below it"):
        naming.merge_targets(parents, keep)
    keep[0] = True
    assert naming.merge_targets(parents, keep).tolist() == [0, 1, 1, 3, 4, 4, 6]
    assert naming.merged_parents(parents, keep).tolist() == [-1, 0, 1, 0, 3]
    with pytest.raises(ValueError, match="bool mask"):
        naming.merged_parents(parents, keep.astype(int))


# --- skin weights -----------------------------------------------------------------------------

def test_merge_small_example_keeps_real_target_zero():
    idx = np.array([[1, 2, 3, 0], [3, 0, 0, 0]], np.int32)
    w = np.array([[0.5, 0.3, 0.2, 0.0], [1.0, 0, 0, 0]], np.float32)
    out_i, out_w = naming.merge_skin_weights(idx, w, np.array([0, 1, 1, 0]))
    assert out_i.dtype == np.int32 and out_w.dtype == np.float32
    assert out_i.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(out_w, [[0.8, 0.2, 0, 0], [1, 0, 0, 0]], atol=1e-7)


@pytest.mark.parametrize("preset", ["mixamo", "unreal"])
def test_merge_real_weights_moves_weight_exactly(rig, preset):
    plan = naming.bone_plan(rig["names"], rig["parents"], preset)
    idx, w = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"], plan.bone_of_joint)
    assert idx.shape == w.shape == rig["skin_indices"].shape
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.diff(w, axis=1) <= 0)                               # sorted, zeros last
    assert np.all(idx[w == 0] == 0)
    # Dense check: merged weights = original weights summed through the merge map.
    merge = np.zeros((127, len(plan.names)))
    merge[np.arange(127), plan.bone_of_joint] = 1.0
    expected = _dense(rig["skin_indices"], rig["skin_weights"], 127) @ merge
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_dense(idx, w, len(plan.names)), expected, atol=1e-6)
    if preset == "mixamo":
        totals = naming.joint_weight_totals(rig["skin_indices"], rig["skin_weights"], 127)
        arm = plan.names.index("mixamorig:LeftArm")
        moved = totals[plan.bone_of_joint == arm].sum()
        assert moved > 100 and totals[rig["names"].index("l_uparm")] == 0  # twist procs' weight
        merged_totals = naming.joint_weight_totals(idx, w, len(plan.names))
        assert merged_totals[arm] == pytest.approx(moved, rel=1e-5)


def test_merge_truncates_to_max_influences(rig):
    plan = naming.bone_plan(rig["names"], rig["parents"], "unreal")
    full_i, full_w = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"],
                                               plan.bone_of_joint)
    idx, w = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"],
                                       plan.bone_of_joint, max_influences=2)
    assert idx.shape == (rig["skin_indices"].shape[0], 2)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(idx[w > 0], full_i[:, :2][w > 0])             # the two largest
    kept = full_w[:, :2].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(w, full_w[:, :2] / kept, atol=1e-6)
    assert np.any((full_w[:, 2] > 0))                                   # truncation happened
    wide_i, wide_w = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"],
                                               plan.bone_of_joint, max_influences=10)
    assert wide_w.shape[1] == 10 and np.array_equal(wide_w[:, :8], full_w)


def test_merge_rejects_bad_tables():
    idx = np.zeros((3, 4), np.int32)
    w = np.full((3, 4), 0.25, np.float32)
    m = np.arange(5)
    with pytest.raises(ValueError, match="integer array"):
        naming.merge_skin_weights(idx.astype(float), w, m)
    with pytest.raises(ValueError, match="shape"):
        naming.merge_skin_weights(idx, w[:, :3], m)
    with pytest.raises(ValueError, match="lie in"):
        naming.merge_skin_weights(idx + 5, w, m)
    with pytest.raises(ValueError, match="non-negative"):
        naming.merge_skin_weights(idx, -w, m)
    with pytest.raises(ValueError, match="merge_map"):
        naming.merge_skin_weights(idx, w, m - 1)
    with pytest.raises(ValueError, match="max_influences"):
        naming.merge_skin_weights(idx, w, m, max_influences=0)


def test_merge_is_deterministic_and_slot_order_free(rig):
    plan = naming.bone_plan(rig["names"], rig["parents"], "mixamo")
    a = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"], plan.bone_of_joint)
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(8), (len(a[0]), 1)), axis=1)
    b = naming.merge_skin_weights(np.take_along_axis(rig["skin_indices"], perm, 1),
                                  np.take_along_axis(rig["skin_weights"], perm, 1),
                                  plan.bone_of_joint)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    again = naming.bone_plan(np.array(rig["names"]), rig["parents"], "mixamo")  # npz str array
    assert again.names == plan.names and np.array_equal(again.bone_of_joint, plan.bone_of_joint)


def _rotation(rng, max_angle):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = rng.uniform(0.2, 1.0) * max_angle
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return m


def _posed_skinning(rig, moving: np.ndarray, rng) -> np.ndarray:
    """FK from the bind pose with a random local rotation on joints in ``moving`` (identity on
    the others) and a random similarity on the root; returns the skinning matrices G·B⁻¹."""
    bind = axes.invert_similarity(axes.skel_state_to_matrices(rig["inverse_bind_pose"]))
    parents = rig["parents"]
    g = np.zeros_like(bind)
    for j in range(127):
        delta = _rotation(rng, 0.6) if moving[j] else np.eye(4)
        if parents[j] < 0:
            root = _rotation(rng, np.pi)
            root[:3, :3] *= 1.3
            root[:3, 3] = rng.normal(size=3) * 20
            g[j] = root @ bind[j]
        else:
            p = parents[j]
            g[j] = g[p] @ (axes.invert_similarity(bind[p]) @ bind[j]) @ delta
    return g @ axes.invert_similarity(bind)


def test_lbs_with_merged_weights_matches_when_merged_joints_follow_targets(rig):
    names, parents = rig["names"], rig["parents"]
    plan = naming.bone_plan(names, parents, "mixamo")
    w64 = rig["skin_weights"].astype(np.float64)
    w64 /= w64.sum(axis=1, keepdims=True)
    idx, w = naming.merge_skin_weights(rig["skin_indices"], w64, plan.bone_of_joint)
    assert w.dtype == np.float64
    kept = np.zeros(127, bool)
    kept[plan.source] = True
    # The root's own motion relative to body_world (which merges into it) must be identity too.
    moving = kept.copy()
    moving[names.index("root")] = False
    rest = rig["rest_vertices"]
    t = _posed_skinning(rig, moving, np.random.default_rng(7))
    original = skinning.linear_blend_skinning(rest, rig["skin_indices"], w64, t)
    merged = skinning.linear_blend_skinning(rest, idx, w, t[plan.source])
    assert np.abs(original - rest).max() > 5.0                          # the pose moves the body
    np.testing.assert_allclose(merged, original, atol=1e-9)
    # Control: once a merged twist helper moves on its own, the merged skin no longer matches.
    moving[names.index("l_uparm_twist2_proc")] = True
    t = _posed_skinning(rig, moving, np.random.default_rng(7))
    original = skinning.linear_blend_skinning(rest, rig["skin_indices"], w64, t)
    merged = skinning.linear_blend_skinning(rest, idx, w, t[plan.source])
    assert np.abs(merged - original).max() > 0.5


# --- deform flags -----------------------------------------------------------------------------

def test_deform_flags_on_real_weights(rig):
    names = rig["names"]
    flags = naming.deform_flags(names, rig["skin_indices"], rig["skin_weights"])
    non_deforming = {names[j] for j in np.flatnonzero(~flags)}
    assert non_deforming == {n for n in names if n.endswith("_null")}
    # Body joints without weight (the stand-in puts the upper arm's weight on twist helpers)
    # stay deforming; helpers with weight deform.
    assert not naming.is_deforming(names.index("l_uparm"), rig["skin_indices"], rig["skin_weights"])
    assert flags[names.index("l_uparm")] and flags[names.index("l_uparm_twist1_proc")]
    assert naming.is_deforming(names.index("l_uparm_twist1_proc"), rig["skin_indices"],
                               rig["skin_weights"])
    plan = naming.bone_plan(names, rig["parents"], "mixamo")
    idx, w = naming.merge_skin_weights(rig["skin_indices"], rig["skin_weights"], plan.bone_of_joint)
    merged_flags = naming.deform_flags([names[s] for s in plan.source], idx, w)
    off = {plan.names[b] for b in np.flatnonzero(~merged_flags)}
    p = naming.MIXAMO_PREFIX
    assert off == {p + "HeadTop_End"} | {f"{p}{s}Hand{f}4" for s in ("Left", "Right")
                                           for f in ("Thumb", "Index", "Middle", "Ring", "Pinky")}
    with pytest.raises(ValueError, match="joint_index"):
        naming.is_deforming(-1, rig["skin_indices"], rig["skin_weights"])


# --- docs -------------------------------------------------------------------------------------

def test_naming_doc_table_is_up_to_date():
    text = (ROOT / "docs" / "NAMING.md").read_text(encoding="utf-8")
    assert naming.generated_section(text) == naming.markdown_table(), (
        "docs/NAMING.md is stale: paste the output of `.venv/bin/python -m addon.rig.naming` "
        "between its BEGIN/END GENERATED markers")


def test_markdown_table_lists_every_joint_once():
    table = naming.markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 127
    assert [r.split("`")[1] for r in rows] == list(naming.MHR_JOINT_NAMES)
    assert table == naming.markdown_table()
