"""Bone rest matrices and pose bases from the stand-in skeleton (numpy rig math, no bpy).

The chain check (compose_pose) re-implements Blender's inheritance rule (rotation, FULL scale,
no connect), so "Blender's deformation == MHR LBS" is verified here in numpy and again in bpy
under tests/blender.
"""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import axes, skeleton, skinning
from tests.rig.standin_data import load_module, sample, standin_result, standin_rig


@pytest.fixture(scope="module")
def rig(standin_lod1):
    return standin_rig(str(standin_lod1))


@pytest.fixture(scope="module")
def result(standin_lod1, mhr_samples):
    return standin_result(str(standin_lod1), mhr_samples, n_persons=2)


@pytest.fixture(scope="module")
def rest(rig):
    return skeleton.rest_bones(rig["bind_skel_state"], rig["joint_parents"], rig["joint_names"])


def test_rest_bones_heads_orthonormal_min_length(rig, rest):
    j = len(rig["joint_names"])
    assert rest.matrices.shape == (j, 4, 4)
    rot = rest.matrices[:, :3, :3]
    assert np.allclose(rot @ np.swapaxes(rot, 1, 2), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(rot), 1.0)
    assert np.allclose(rest.heads, axes.mhr_to_blender_points(rig["bind_skel_state"][:, :3]))
    assert np.all(rest.lengths >= skeleton.MIN_BONE_LENGTH_CM / 100 - 1e-12)
    assert np.all(np.linalg.norm(rest.tails - rest.heads, axis=1) > 0.005)


def test_bones_point_at_their_main_child(rig, rest):
    names = rig["joint_names"]
    pos = axes.mhr_to_blender_points(rig["bind_skel_state"][:, :3])
    for joint, child in [("l_upleg", "l_lowleg"), ("r_lowleg", "r_foot"), ("c_spine3", "c_neck"),
                         ("l_uparm", "l_lowarm"), ("r_clavicle", "r_uparm"), ("root", "c_spine0"),
                         ("l_index1", "l_index2"), ("c_neck", "c_head")]:
        j, c = names.index(joint), names.index(child)
        d = pos[c] - pos[j]
        cos = rest.matrices[j, :3, 1] @ d / np.linalg.norm(d)
        assert np.isclose(np.arccos(min(cos, 1.0)), skeleton.AIM_TILT_RAD, atol=1e-6), joint
        assert np.isclose(rest.lengths[j], np.linalg.norm(d)), joint
    # A coincident child (wrist at the wrist-twist joint) never yields a zero-length bone; the
    # twist bone continues the forearm direction instead.
    tw, la = names.index("l_wrist_twist"), names.index("l_lowarm")
    assert rest.matrices[tw, :3, 1] @ rest.matrices[la, :3, 1] > np.cos(3 * skeleton.AIM_TILT_RAD)


def test_humanoid_directions(rig, rest):
    names = rig["joint_names"]
    y = rest.matrices[:, :3, 1]
    assert y[names.index("c_spine1")][2] > 0.9        # spine points up (Blender +Z)
    assert y[names.index("l_lowleg")][2] < -0.9       # shins point down
    assert y[names.index("l_uparm")][0] > 0.5         # left arm toward +X (character's left)
    assert y[names.index("r_uparm")][0] < -0.5


def test_pose_basis_reproduces_targets_through_blender_chain(rig, rest, result):
    skel = result["mhr_skel_state"][0]
    basis = skeleton.pose_basis(rest, rig["joint_parents"], skel)
    assert np.allclose(np.linalg.norm(basis.quaternion_wxyz, axis=1), 1.0)
    chain = skeleton.compose_pose(rest.matrices, rig["joint_parents"], basis.location,
                                  basis.quaternion_wxyz, basis.scale)
    assert np.allclose(chain, basis.targets, atol=1e-9)
    # Scale parameters show up as pose-bone scale (uniform per bone), not in the rest.
    assert np.allclose(basis.scale[:, 0], basis.scale[:, 1]) and np.allclose(basis.scale[:, 0],
                                                                             basis.scale[:, 2])
    assert np.ptp(basis.scale) > 1e-3


def test_deform_matrices_equal_mhr_skinning_transforms(rig, rest, result):
    skel = result["mhr_skel_state"][1]
    targets = skeleton.pose_targets(rest, skel)
    deform = skeleton.deform_matrices(rest, targets)
    mhr = skinning.skinning_transforms(skel, rig["bind_skel_state"])
    a4 = np.eye(4)
    a4[:3, :3] = axes.A
    units = np.diag([100.0, 100.0, 100.0, 1.0])
    expect = a4 @ np.linalg.inv(units) @ mhr @ units @ a4.T
    assert np.allclose(deform, expect, atol=1e-5)


def test_rig_math_lbs_equals_mhr_skinning_without_correctives(standin_lod1, mhr_samples, rig, rest):
    """MHR's forward has no correctives when no joint rotation channel (other than the root's)
    moves: root rotation/translation and scale parameters (minus the knee knock, which drives a
    rotation channel). Then the TorchScript vertices are pure LBS, and the rig math must match."""
    import torch

    module = load_module(str(standin_lod1))
    s = sample(mhr_samples, "img_subj00")
    params = s["mhr_model_params"].astype(np.float32).copy()
    names = list(module.get_parameter_names())
    params[6:136] = 0.0
    params[names.index("scale_knee_knock")] = 0.0
    params[0:3] = [0.5, -1.0, 2.0]  # root translation, 10 cm units
    with torch.no_grad():
        verts, skel = module(torch.from_numpy(s["shape_params"][None].astype(np.float32)),
                             torch.from_numpy(params[None]), torch.zeros(1, 72))
        rest_v, _ = module(torch.from_numpy(s["shape_params"][None].astype(np.float32)),
                           torch.zeros(1, 204), torch.zeros(1, 72))
    verts, skel, rest_v = verts[0].numpy(), skel[0].numpy(), rest_v[0].numpy()
    assert np.abs(verts - rest_v).max() > 5.0  # a real deformation (cm)
    # numpy LBS in MHR space
    lbs = skinning.linear_blend_skinning(rest_v, rig["skin_indices"], rig["skin_weights"],
                                         skinning.skinning_transforms(skel, rig["bind_skel_state"]))
    assert np.abs(lbs - verts).max() < 1e-2  # cm; float32 forward
    # rig math: Blender deformation matrices applied to the Blender-space rest mesh
    deform = skeleton.deform_matrices(rest, skeleton.pose_targets(rest, skel))
    blender = skinning.linear_blend_skinning(axes.mhr_to_blender_points(rest_v),
                                             rig["skin_indices"], rig["skin_weights"], deform)
    assert np.abs(blender - axes.mhr_to_blender_points(verts)).max() < 1e-4  # metres


def test_full_pose_differs_from_lbs_only_by_local_correctives(rig, result):
    skel = result["mhr_skel_state"][0]
    t = skinning.skinning_transforms(skel, rig["bind_skel_state"])
    lbs = skinning.linear_blend_skinning(result["mhr_rest_vertices"][0], rig["skin_indices"],
                                         rig["skin_weights"], t)
    diff = np.linalg.norm(lbs - result["mhr_vertices"][0], axis=1)
    assert 0.01 < diff.max() < 3.0           # cm: the stand-in's correctives are a few mm
    assert np.median(diff) < 1e-2            # and local: most vertices are untouched


def test_bad_skeletons_are_rejected(rig):
    bind = rig["bind_skel_state"]
    with pytest.raises(ValueError, match="precede"):
        skeleton.rest_bones(bind, np.r_[-1, 2, np.arange(1, len(bind) - 1)], None)
    bad = bind.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        skeleton.rest_bones(bad, rig["joint_parents"])
    with pytest.raises(ValueError, match="shape"):
        skeleton.rest_bones(bind[:5], rig["joint_parents"])
    with pytest.raises(ValueError, match="positive"):
        skeleton.rest_bones(bind, rig["joint_parents"], min_length_cm=0)
