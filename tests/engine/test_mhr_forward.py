"""Our MHR forward (server/mhr/forward.py) against the TorchScript it reads its buffers from.

Both stand-in files (595-vertex LOD6 and 18,439-vertex LOD1), random inputs and the real SAM 3D
Body samples in data/mhr. Differences are printed in centimetres (run pytest with -s).

Two precisions: "torchscript" (default; float32 joint-local transforms and skinning around the
float64 FK, as the TorchScript) must agree with the TorchScript within 1e-4 cm. "float64" is
closer to exact arithmetic than the TorchScript itself (test_closer_to_float64_truth...), so its
distance to the TorchScript is the TorchScript's own float32 error: up to ~2e-4 cm on random
poses, hence 5e-4 cm there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.mhr.forward import MHRBody, skel_compose, skel_inverse
from server.mhr.torchscript import load_mhr

VERT_ATOL_CM = {"torchscript": 1e-4, "float64": 5e-4}
SKEL_T_ATOL_CM = 1e-4
QUAT_ATOL = 1e-6


@pytest.fixture(scope="module", params=["small", "lod1"])
def models(request, standin_small, standin_lod1):
    path = standin_small if request.param == "small" else standin_lod1
    ts = load_mhr(path)
    return request.param, ts, MHRBody.from_torchscript(ts)


def _random_inputs(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    identity = torch.randn(batch, 45, generator=g)
    params = torch.randn(batch, 204, generator=g) * 0.5
    params[:, 136:] *= 0.2  # scales: keep limbs a plausible length
    expression = torch.randn(batch, 72, generator=g) * 0.5
    return identity, params, expression


def _diffs(a, b):
    (va, sa), (vb, sb) = a, b
    return (
        float((va - vb).abs().max()),
        float((sa[..., :3] - sb[..., :3]).abs().max()),
        float((sa[..., 3:7] - sb[..., 3:7]).abs().max()),
        float((sa[..., 7] - sb[..., 7]).abs().max()),
    )


def _assert_match(ours, ts_out, label: str, precision: str = "torchscript"):
    dv, dt, dq, ds = _diffs(ours, ts_out)
    print(f"\n{label} [{precision}]: vertices {dv:.2e} cm, joints {dt:.2e} cm, quaternions {dq:.2e}, scales {ds:.2e}")
    assert dv <= VERT_ATOL_CM[precision] and dt <= SKEL_T_ATOL_CM and dq <= QUAT_ATOL and ds <= 1e-5


@pytest.mark.parametrize("precision", ["torchscript", "float64"])
def test_random_inputs_match_torchscript(models, precision):
    name, ts, body = models
    identity, params, expression = _random_inputs(4, seed=0)
    with torch.no_grad():
        _assert_match(body(identity, params, expression, precision=precision), ts(identity, params, expression),
                      f"{name} random B=4", precision)


@pytest.mark.parametrize("precision", ["torchscript", "float64"])
@pytest.mark.parametrize("sample", ["img_subj00", "img_subj01"])
def test_real_samples_match_torchscript(models, mhr_samples: Path, sample, precision):
    name, ts, body = models
    with np.load(mhr_samples / f"{sample}.npz") as d:
        params = torch.from_numpy(d["mhr_model_params"]).float().reshape(1, 204)
        identity = torch.from_numpy(d["shape_params"]).float().reshape(1, 45)
        expression = torch.from_numpy(d["expr_params"]).float().reshape(1, 72)
    with torch.no_grad():
        _assert_match(body(identity, params, expression, precision=precision), ts(identity, params, expression),
                      f"{name} {sample}", precision)


def test_identity_broadcast_and_no_expression(models):
    _, ts, body = models
    identity, params, _ = _random_inputs(3, seed=1)
    with torch.no_grad():
        ours = body(identity[:1], params)
        ref = ts(identity[:1], params, torch.zeros(3, 72))
    _assert_match(ours, ref, "broadcast identity [1,45], expression None")


def test_closer_to_float64_truth_than_torchscript(models):
    """Evaluate the same buffers entirely in float64 and compare both implementations to it."""
    name, ts, body = models
    identity, params, expression = _random_inputs(2, seed=2)
    body64 = MHRBody.from_torchscript(ts).double()
    with torch.no_grad():
        jp = torch.einsum("dn,bn->bd", body64.parameter_transform[:, :204], params.double()).reshape(2, -1, 7)
        rest = (
            torch.einsum("nvd,bn->bvd", body64.identity_shapes, identity.double()) + body64.base_shape
            + torch.einsum("nvd,bn->bvd", body64.expression_shapes, expression.double())
            + body64.pose_correctives(jp)
        )
        skel = body64.forward_kinematics_by_level(body64.local_skeleton_state(jp, torch.float64))
        truth = body64.skin(skel, rest, torch.float64)
        ours = body(identity, params, expression, precision="float64")[0].double()
        theirs = ts(identity, params, expression)[0].double()
    ours_err, ts_err = float((ours - truth).abs().max()), float((theirs - truth).abs().max())
    print(f"\n{name}: vs float64 evaluation: ours {ours_err:.2e} cm, TorchScript {ts_err:.2e} cm")
    assert ours_err <= 1e-4
    assert ours_err <= ts_err


def test_zero_input_gives_base_shape_and_bind_skeleton(models):
    _, _, body = models
    with torch.no_grad():
        verts, skel = body(torch.zeros(1, 45), torch.zeros(1, 204))
    bind = body.bind_skeleton_state()
    assert float((verts[0] - body.base_shape).abs().max()) <= 1e-4
    assert float((skel[0, :, :3].double() - bind[:, :3]).abs().max()) <= 1e-4
    # q and -q are the same rotation; compare up to sign.
    dots = (skel[0, :, 3:7].double() * bind[:, 3:7]).sum(-1).abs()
    assert torch.allclose(dots, torch.ones_like(dots), atol=1e-6)


def test_bind_skeleton_inverts_inverse_bind_pose(models):
    _, _, body = models
    bind = body.bind_skeleton_state()
    ident = skel_compose(bind, body.inverse_bind_pose.double())
    # inverse_bind_pose is float32: bind ∘ IBP is the identity up to float32 rounding.
    assert torch.allclose(ident[:, :3], torch.zeros_like(ident[:, :3]), atol=1e-4)
    assert torch.allclose(ident[:, 6].abs(), torch.ones(body.num_joints, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(torch.linalg.vector_norm(bind[:, 3:7], dim=-1), torch.ones(body.num_joints, dtype=torch.float64))
    assert torch.allclose(skel_inverse(skel_inverse(bind)), bind, atol=1e-12)


def test_rest_vertices_are_blend_shapes_only(models):
    _, ts, body = models
    identity, params, expression = _random_inputs(2, seed=3)
    with torch.no_grad():
        rest = body.rest_vertices(identity, expression)
        posed_at_zero = ts(identity, torch.zeros(2, 204), expression)[0]
    # At the zero pose the correctives vanish and LBS is the identity: posed == rest.
    assert float((rest - posed_at_zero).abs().max()) <= 1e-4


def test_correctives_switch(models):
    _, ts, body = models
    identity, params, expression = _random_inputs(2, seed=4)
    with torch.no_grad():
        on = body(identity, params, expression)[0]
        off = body(identity, params, expression, apply_correctives=False)[0]
        skel = body.skeleton_state(params, precision="torchscript").float()
        manual = body.skin(skel, body.rest_vertices(identity, expression))
        zero_pose_corr = body.pose_correctives(body.joint_parameters(torch.zeros(2, 204)))
    assert float((on - off).abs().max()) > 1e-3, "correctives should move some vertices at random poses"
    assert float((off - manual).abs().max()) <= 1e-5
    assert float(zero_pose_corr.abs().max()) == 0.0


def test_rest_pose_parameters_keep_scales(models):
    _, _, body = models
    _, params, _ = _random_inputs(2, seed=5)
    rest = body.rest_pose_parameters(params)
    assert torch.all(rest[:, :136] == 0) and torch.equal(rest[:, 136:], params[:, 136:])


def test_skeleton_state_is_float64_and_matches(models):
    _, ts, body = models
    identity, params, expression = _random_inputs(2, seed=6)
    skel = body.skeleton_state(params, precision="torchscript")
    assert skel.dtype == torch.float64
    with torch.no_grad():
        ref = ts(identity, params, expression)[1]
    assert float((skel[..., :3] - ref[..., :3].double()).abs().max()) <= SKEL_T_ATOL_CM


def test_names_and_sizes(models):
    _, ts, body = models
    assert body.num_joints == 127 and body.joint_names == list(ts.get_joint_names())
    assert body.parameter_names[:204] == list(ts.get_parameter_names())[:204]
    assert body.faces.shape == ts.character_torch.mesh.faces.shape


def test_bad_inputs_raise(models):
    _, _, body = models
    with pytest.raises(ValueError, match=r"model_params must be \(B, 204\)"):
        body(torch.zeros(1, 45), torch.zeros(1, 203))
    with pytest.raises(ValueError, match=r"identity must be \(B, 45\)"):
        body(torch.zeros(1, 44), torch.zeros(1, 204))
    with pytest.raises(ValueError, match="rows"):
        body(torch.zeros(2, 45), torch.zeros(3, 204))
    with pytest.raises(TypeError):
        body(np.zeros((1, 45)), torch.zeros(1, 204))


def test_pointer_jumping_fk_equals_level_by_level(models):
    """Same chains, other association order, same quaternion signs. Not equal to float64
    rounding: the stored float32 prerotations are unit only to ~1e-7, so rotating by a product
    and rotating twice differ by that much of the offset length (1e-5 cm on 120 cm chains)."""
    _, _, body = models
    _, params, _ = _random_inputs(3, seed=5)
    with torch.no_grad():
        local = body.local_skeleton_state(body.joint_parameters(params * 3), torch.float64)
        fast, ref = body.forward_kinematics(local), body.forward_kinematics_by_level(local)
    assert float((fast[..., 3:] - ref[..., 3:]).abs().max()) < 1e-12  # rotations, scales
    assert float((fast[..., :3] - ref[..., :3]).abs().max()) < 5e-5  # cm
    assert len(body.jumps) == (len(body.levels) - 1).bit_length()  # 4 steps for 16 levels


def test_parents_must_precede_children():
    from server.mhr.forward import fk_jumps, fk_levels

    assert fk_jumps([-1, 0, 1, 0]) == [[4, 0, 1, 0, 4], [4, 4, 0, 4, 4]]
    assert fk_jumps([-1, -1]) == []
    assert fk_levels([-1, 0, 1, 0]) == [[0], [1, 3], [2]]
    with pytest.raises(ValueError, match="precede"):
        fk_levels([-1, 2, 0])
