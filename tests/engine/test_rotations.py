"""server/models/rotations.py against the official functions' outputs (fixtures/parity/functions.npz).

The fixture holds edge cases (gimbal lock, zero vectors, angles at ±π, limit boundaries), so
equality here covers the branches, not only generic inputs. Our functions use the same
operations as the official ones; on the same CPU they agree bit for bit, and we allow at most
a few float32 ulps so that other BLAS builds do not fail spuriously.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.models import rotations as rot
from tests import tolerances as tol

ATOL = tol.ROTATION_FN
# Inputs this close to gimbal lock (|cos| of the middle angle) have no well-conditioned angles:
# one float32 rounding of R moves the first and last angle by radians (seen between
# ATEN_CPU_CAPABILITY=default and avx2) while the rotation they give stays the same.
GIMBAL_COS = 1e-3


@pytest.fixture(scope="module")
def fx(parity_dir: Path):
    with np.load(parity_dir / "functions.npz") as f:
        return {k: f[k] for k in f.files}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _close(out: torch.Tensor, ref: np.ndarray, name: str) -> None:
    got = out.detach().numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    tol.check(name, got, ref, ATOL, "rotation_fn")


def test_fix_wrist_euler(fx):
    _close(rot.fix_wrist_euler(_t(fx["fix_wrist_euler.in.wrist_xzy"])), fx["fix_wrist_euler.out"], "fix_wrist_euler")


def test_fix_wrist_euler_uses_both_branches(fx):
    inp = _t(fx["fix_wrist_euler.in.wrist_xzy"])
    out = rot.fix_wrist_euler(inp)
    changed = (out != inp).any(-1)
    assert changed.any() and (~changed).any(), "fixture should exercise the original and the alternative solution"


def test_rotation_angle_difference(fx):
    out = rot.rotation_angle_difference(
        _t(fx["rotation_angle_difference.in.A"]), _t(fx["rotation_angle_difference.in.B"])
    )
    _close(out, fx["rotation_angle_difference.out"], "rotation_angle_difference")


def test_batchXYZfrom6D(fx):
    _close(rot.batchXYZfrom6D(_t(fx["batchXYZfrom6D.in.poses"])), fx["batchXYZfrom6D.out"], "batchXYZfrom6D")


@pytest.mark.parametrize(
    "name",
    [
        "compact_cont_to_model_params_body",
        "compact_model_params_to_cont_body",
        "compact_cont_to_model_params_hand",
        "compact_model_params_to_cont_hand",
    ],
)
def test_compact_conversions(fx, name):
    key_in = next(k for k in fx if k.startswith(name + ".in."))
    _close(getattr(rot, name)(_t(fx[key_in])), fx[name + ".out"], name)


def test_rot6d_to_rotmat(fx):
    _close(rot.rot6d_to_rotmat(_t(fx["rot6d_to_rotmat.in.x"])), fx["rot6d_to_rotmat.out"], "rot6d_to_rotmat")


@pytest.mark.parametrize("convention", ["ZYX", "xyz", "XZY"])
def test_roma_rotmat_to_euler(fx, convention):
    """Angles equal the official ones where they are well defined; at gimbal lock the angles
    give the same rotation as the official ones (any split of the locked angle is right)."""
    R = _t(fx["roma.rotmat_to_euler.in.R"])
    out = rot.rotmat_to_euler(convention, R)
    ref = fx[f"roma.rotmat_to_euler.{convention}.out"]
    locked = np.abs(np.cos(ref[:, 1])) < GIMBAL_COS
    assert locked.any() and (~locked).any(), "the fixture should hold both kinds of input"
    sel = torch.from_numpy(locked)
    _close(out[~sel], ref[~locked], f"rotmat_to_euler {convention}")
    ours = rot.euler_to_rotmat(convention, out[sel])
    theirs = rot.euler_to_rotmat(convention, _t(ref[locked]))
    _close(ours, theirs.numpy(), f"rotmat_to_euler {convention} at gimbal lock (as rotations)")


@pytest.mark.parametrize("convention", ["ZYX", "xyz", "XZY"])
def test_roma_euler_to_rotmat(fx, convention):
    out = rot.euler_to_rotmat(convention, _t(fx["roma.euler_to_rotmat.in.angles"]))
    _close(out, fx[f"roma.euler_to_rotmat.{convention}.out"], f"euler_to_rotmat {convention}")


def test_roma_unitquat_to_rotmat(fx):
    out = rot.unitquat_to_rotmat(_t(fx["roma.unitquat_to_rotmat.in.q_xyzw"]))
    _close(out, fx["roma.unitquat_to_rotmat.out"], "unitquat_to_rotmat")


# --- properties that do not need the fixture ---------------------------------------------------


def test_body_round_trip_on_generic_angles():
    g = torch.Generator().manual_seed(0)
    params = (torch.rand(8, 133, generator=g, dtype=torch.float64) - 0.5) * 2.0  # |angle| < 1: no wrap
    back = rot.compact_cont_to_model_params_body(rot.compact_model_params_to_cont_body(params))
    assert torch.allclose(back, params, atol=1e-12)


def test_hand_round_trip_on_generic_angles():
    g = torch.Generator().manual_seed(1)
    params = (torch.rand(5, 27, generator=g, dtype=torch.float64) - 0.5) * 2.0
    back = rot.compact_cont_to_model_params_hand(rot.compact_model_params_to_cont_hand(params))
    assert torch.allclose(back, params, atol=1e-12)


def test_6d_matrix_is_rz_ry_rx():
    angles = torch.tensor([[0.3, -0.7, 1.1]], dtype=torch.float64)
    expected = rot.euler_to_rotmat("xyz", angles)  # extrinsic x then y then z = Rz·Ry·Rx
    assert torch.allclose(rot.batch6DFromXYZ(angles, return_9D=True), expected, atol=1e-12)


def test_rot6d_to_rotmat_is_orthonormal_and_keeps_first_column_direction():
    x = torch.tensor([[2.0, 0.0, 0.0, 1.0, 3.0, 0.0]])
    r = rot.rot6d_to_rotmat(x)[0]
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(r[:, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.linalg.det(r) > 0


def test_layout_tables():
    idx3 = [i for t in rot.BODY_3DOF_ROT_PARAM_IDXS for i in t]
    every = sorted(idx3 + list(rot.BODY_1DOF_ROT_PARAM_IDXS) + list(rot.BODY_1DOF_TRANS_PARAM_IDXS))
    assert every == list(range(133)), "body index tables must cover 0..132 exactly once"
    assert int(rot.mhr_param_hand_mask.sum()) == 54 and bool(rot.mhr_param_hand_mask[62:116].all())


@pytest.mark.parametrize(
    "fn, shape",
    [
        (rot.compact_cont_to_model_params_body, (2, 259)),
        (rot.compact_model_params_to_cont_body, (2, 132)),
        (rot.compact_cont_to_model_params_hand, (2, 53)),
        (rot.compact_model_params_to_cont_hand, (2, 26)),
        (rot.batchXYZfrom6D, (2, 5)),
        (rot.fix_wrist_euler, (2, 2, 4)),
        (rot.rot6d_to_rotmat, (2, 7)),
        (rot.unitquat_to_rotmat, (2, 3)),
    ],
)
def test_bad_shapes_raise_clear_errors(fn, shape):
    with pytest.raises(ValueError, match="expected last dimension"):
        fn(torch.zeros(shape))
