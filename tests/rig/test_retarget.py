"""Pose transfer between humanoid rigs (addon/rig/retarget.py) on synthetic skeletons whose
layouts differ the way real rigs do (tests/rig/humanoids.py). Directions are measured here from
forward kinematics of the returned bases, and compared with the source's in a frame given by the
known object turn, not by the retargeter's own alignment."""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import bone_maps
from addon.rig.retarget import Retargeter, Skeleton, forward_kinematics
from tests.rig.humanoids import humanoid, object_matrix, random_bases, rot_z


def _world(skel: Skeleton, mats: np.ndarray) -> np.ndarray:
    w = skel.world
    scale = np.linalg.norm(w[:3, 0])
    out = mats.copy()
    out[:, :3, :3] = (w[:3, :3] / scale) @ mats[:, :3, :3]
    out[:, :3, 3] = mats[:, :3, 3] @ w[:3, :3].T + w[:3, 3]
    return out


def _segment_dirs(skel: Skeleton, mapping: dict, posed: np.ndarray) -> dict[str, np.ndarray]:
    """World direction of every mapped bone: head -> next head in its chain, else the aim slot's
    head, else its tail (the same convention as the bone maps)."""
    w = _world(skel, posed)
    scale = np.linalg.norm(skel.world[:3, 0])
    out = {}
    for slot, bones in mapping.items():
        aim = bone_maps.aim_slot(slot)
        for k, name in enumerate(bones):
            i = skel.index(name)
            if k + 1 < len(bones):
                end = w[skel.index(bones[k + 1])][:3, 3]
            elif aim is not None and aim in mapping:
                end = w[skel.index(mapping[aim][0])][:3, 3]
            else:
                end = w[i][:3, 3] + w[i][:3, 1] * skel.lengths[i] * scale
            d = end - w[i][:3, 3]
            out[name] = d / np.linalg.norm(d)
    return out


def _angle(a, b):
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1))))


@pytest.fixture(scope="module")
def source():
    skel, m = humanoid(spine=4, neck=1, thumb=4, roll_seed=0)
    return skel, m, forward_kinematics(skel, random_bases(skel, 7, max_deg=30))


@pytest.mark.parametrize("a_pose", [False, True])
def test_same_layout_matches_every_direction(source, a_pose):
    """Same bone counts, other rest pose (A vs T), rolls, facing, scale and place: exact."""
    src, smap, pose = source
    tgt, tmap = humanoid(spine=4, neck=1, thumb=4, a_pose=a_pose, roll_seed=5,
                         world=object_matrix(90, 0.01, (3.0, -1.0, 0.5)))
    r = Retargeter(src, smap, tgt, tmap).pose(pose)
    got = _segment_dirs(tgt, tmap, forward_kinematics(tgt, r.basis))
    want = _segment_dirs(src, smap, pose)
    turn = rot_z(np.radians(90))
    for slot, bones in tmap.items():
        for t_name, s_name in zip(bones, smap[slot]):
            assert _angle(got[t_name], turn @ want[s_name]) < 1e-4, t_name
    assert r.max_angle_deg < 1e-4
    assert len(r.mapped) == sum(len(v) for v in tmap.values())


def test_identical_rig_reproduces_the_pose_bases(source):
    src, smap, pose = source
    bases = random_bases(src, 7, max_deg=30)
    r = Retargeter(src, smap, src, smap).pose(pose)
    np.testing.assert_allclose(r.basis, bases, atol=1e-9)


def _polyline(skel: Skeleton, mapping: dict, slot: str, mats: np.ndarray) -> np.ndarray:
    w = _world(skel, mats)
    anchor = bone_maps.anchor_slot(slot)
    start = [mapping[anchor][0]] if anchor in mapping else []
    pts = [w[skel.index(b)][:3, 3] for b in start + mapping[slot]]
    aim = bone_maps.aim_slot(slot)
    if aim is not None and aim in mapping:
        pts.append(w[skel.index(mapping[aim][0])][:3, 3])
    else:
        last = skel.index(mapping[slot][-1])
        pts.append(w[last][:3, 3] + w[last][:3, 1] * skel.lengths[last] * np.linalg.norm(skel.world[:3, 0]))
    return np.array(pts)


def _at_fraction(pts: np.ndarray, fracs: np.ndarray, f: float) -> np.ndarray:
    return np.array([np.interp(f, fracs, pts[:, k]) for k in range(3)])


def _fracs(pts: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    return np.concatenate([[0], np.cumsum(seg)]) / seg.sum()


@pytest.mark.parametrize("bend_deg", [6.0, 25.0])
def test_chains_of_other_lengths_follow_the_source_chord(source, bend_deg):
    """5 spine bones for 4, 2 neck bones for 1, 3 thumb bones for 4: each target bone lies along
    the source's chain over the same fraction of its length; with a gently bent source (6 degrees
    a joint) the spine, neck and same-count fingers are also within 5 degrees of the source bone
    covering that stretch (a 4-bone thumb's rest curve alone differs more from a 3-bone one's)."""
    src, smap, _ = source
    pose = forward_kinematics(src, random_bases(src, 3, max_deg=bend_deg))
    tgt, tmap = humanoid(spine=5, neck=2, thumb=3, roll_seed=9, world=object_matrix(-30))
    r = Retargeter(src, smap, tgt, tmap).pose(pose)
    posed = forward_kinematics(tgt, r.basis)
    turn = rot_z(np.radians(-30))
    for slot in ("spine", "neck", "thumb.L", "thumb.R", "index.L"):
        t_rest = _polyline(tgt, tmap, slot, tgt.rest)
        t_pose = _polyline(tgt, tmap, slot, posed)
        s_rest, s_pose = _polyline(src, smap, slot, src.rest), _polyline(src, smap, slot, pose)
        tf, sf = _fracs(t_rest), _fracs(s_rest)
        o = 1 if bone_maps.anchor_slot(slot) in tmap else 0  # the anchor's segment is no bone
        for k in range(o, len(t_pose) - 1):
            got = t_pose[k + 1] - t_pose[k]
            chord = _at_fraction(s_pose, sf, tf[k + 1]) - _at_fraction(s_pose, sf, tf[k])
            assert _angle(got / np.linalg.norm(got), turn @ chord / np.linalg.norm(chord)) < 1e-3
            if bend_deg <= 6 and slot in ("spine", "neck", "index.L"):
                i = max(min(np.searchsorted(sf, 0.5 * (tf[k] + tf[k + 1])) - 1, len(sf) - 2), o)
                cover = s_pose[i + 1] - s_pose[i]
                assert _angle(got / np.linalg.norm(got), turn @ cover / np.linalg.norm(cover)) < 5.0
    assert r.max_angle_deg < 1e-3


def test_root_motion_scales_with_leg_length(source):
    src, smap, pose = source
    tgt, tmap = humanoid(spine=4, thumb=4, leg_scale=0.6, arm_scale=0.6,
                         world=object_matrix(180, 1.0, (0, 2.0, 0)))
    rt = Retargeter(src, smap, tgt, tmap)
    assert rt.ratio == pytest.approx(0.6, rel=1e-6)
    posed = _world(tgt, forward_kinematics(tgt, rt.pose(pose).basis))
    moved_t = posed[tgt.index("hips")][:3, 3] - _world(tgt, tgt.rest)[tgt.index("hips")][:3, 3]
    moved_s = pose[src.index("hips")][:3, 3] - src.rest[src.index("hips")][:3, 3]
    np.testing.assert_allclose(moved_t, 0.6 * rot_z(np.pi) @ moved_s, atol=1e-9)
    still = Retargeter(src, smap, tgt, tmap, root_motion=False).pose(pose)
    hips = tgt.index("hips")
    np.testing.assert_allclose(forward_kinematics(tgt, still.basis)[hips][:3, 3],
                               tgt.rest[hips][:3, 3], atol=1e-12)


def test_ik_puts_hands_and_feet_on_the_source_effectors(source):
    """Other proportions (long arms, short legs): hands and feet within 1 cm with IK, keeping
    the hand and foot world rotations and the side the elbows and knees bend to."""
    src, smap, _ = source
    pose = forward_kinematics(src, random_bases(src, 11, max_deg=20))
    tgt, tmap = humanoid(spine=3, arm_scale=1.15, leg_scale=0.9, roll_seed=2)
    rt = Retargeter(src, smap, tgt, tmap)
    fk_only, with_ik = rt.pose(pose), rt.pose(pose, ik=True)
    assert max(fk_only.effector_error.values()) > 0.02  # the proportions really differ
    assert max(with_ik.effector_error.values()) < 0.01, with_ik.summary()
    posed = forward_kinematics(tgt, with_ik.basis)
    base = forward_kinematics(tgt, fk_only.basis)
    for side in "LR":
        for end, (up, mid) in (("hand", ("upper_arm", "forearm")), ("foot", ("thigh", "shin"))):
            e = tgt.index(f"{end}.{side}")
            np.testing.assert_allclose(posed[e][:3, :3], base[e][:3, :3], atol=1e-9)
            goal = rt.effector_goal(pose[src.index(f"{end}.{side}")][:3, 3])
            assert np.linalg.norm(posed[e][:3, 3] - goal) < 0.01
            a, b, c = (posed[tgt.index(f"{n}.{side}")][:3, 3] for n in (up, mid, end))
            a0, b0, c0 = (base[tgt.index(f"{n}.{side}")][:3, 3] for n in (up, mid, end))
            assert np.dot(np.cross(b - a, c - b), np.cross(b0 - a0, c0 - b0)) > 0


def test_unmapped_bones_keep_their_basis(source):
    src, smap, pose = source
    tgt, tmap = humanoid(spine=3)
    dropped = tmap.pop("toe.L")
    keep = np.tile(np.eye(4), (len(tgt.names), 1, 1))
    toe = tgt.index(dropped[0])
    keep[toe] = random_bases(tgt, 1)[toe]
    keep[toe, :3, 3] = 0
    r = Retargeter(src, smap, tgt, tmap).pose(pose, target_basis=keep)
    np.testing.assert_array_equal(r.basis[toe], keep[toe])
    assert tgt.index(dropped[0]) not in r.mapped


def test_bad_inputs_are_refused_clearly(source):
    src, smap, pose = source
    tgt, tmap = humanoid()
    with pytest.raises(ValueError, match="hips"):
        Retargeter(src, {k: v for k, v in smap.items() if k != "hips"}, tgt, tmap)
    with pytest.raises(ValueError, match="lacks"):
        Retargeter(src, smap, tgt, {**tmap, "head": ["no_such_bone"]})
    with pytest.raises(ValueError, match="share no slot"):
        Retargeter(src, {"hips": ["hips"]}, tgt, {"head": ["head"]})
    with pytest.raises(ValueError, match="which way"):
        Retargeter(src, {"hips": ["hips"], "head": ["head"]}, tgt, {"hips": ["hips"], "head": ["head"]})
    squashed = np.diag([1.0, 1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="non-uniform scale"):
        humanoid(world=squashed)
    rt = Retargeter(src, smap, tgt, tmap)
    with pytest.raises(ValueError, match="shape"):
        rt.pose(pose[:-1])
    bad = pose.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        rt.pose(bad)
