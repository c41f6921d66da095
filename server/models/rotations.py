"""Rotation helpers of SAM 3D Body, matched to the official functions by name and numerics.

The names are the official ones (`sam_3d_body/models/modules/mhr_utils.py`,
`geometry_utils.py`) so that the model core and the pipeline read like the reference
(reference/sam3d-body.md §4.2-§4.3, §5.11). Every function is pure torch and works on any
leading batch shape unless stated otherwise. Where the official code calls `roma`, we call
roma itself (BSD-3): its Euler code has a gimbal-lock branch and angle wrapping that a port
would have to copy bit for bit (§8 item 9).

Numerics: the operations are chosen to be the same as the official ones (F.normalize with its
1e-12 clamp, torch.cross, atan2 argument order, einsum for dot products), so results agree to
the last bit on the same device; tests/engine/test_rotations.py checks this against
fixtures/parity/functions.npz.
"""
from __future__ import annotations


import roma
import torch
import torch.nn.functional as F

__all__ = [
    "rotation_angle_difference",
    "fix_wrist_euler",
    "batch6DFromXYZ",
    "batchXYZfrom6D",
    "compact_cont_to_model_params_body",
    "compact_model_params_to_cont_body",
    "compact_cont_to_model_params_hand",
    "compact_model_params_to_cont_hand",
    "rot6d_to_rotmat",
    "rotmat_to_euler",
    "euler_to_rotmat",
    "unitquat_to_rotmat",
    "mhr_param_hand_idxs",
    "mhr_param_hand_mask",
    "BODY_3DOF_ROT_PARAM_IDXS",
    "BODY_1DOF_ROT_PARAM_IDXS",
    "BODY_1DOF_TRANS_PARAM_IDXS",
    "HAND_DOFS_PER_JOINT",
]

# --- index tables of the 133-d body Euler vector (official `mhr_utils.py`) -------------------
# 23 joints with three rotational DoFs; the triplets are (x, y, z) positions in the 133-vector,
# deliberately non-contiguous because the 133 layout follows MHR's parameter order.
BODY_3DOF_ROT_PARAM_IDXS: tuple[tuple[int, int, int], ...] = (
    (0, 2, 4), (6, 8, 10), (12, 13, 14), (15, 16, 17), (18, 19, 20), (21, 22, 23),
    (24, 25, 26), (27, 28, 29), (34, 35, 36), (37, 38, 39), (44, 45, 46), (53, 54, 55),
    (64, 65, 66), (85, 69, 73), (86, 70, 79), (87, 71, 82), (88, 72, 76), (91, 92, 93),
    (112, 96, 100), (113, 97, 106), (114, 98, 109), (115, 99, 103), (130, 131, 132),
)
# 58 one-DoF rotations, encoded as (sin, cos) pairs in the continuous vector.
BODY_1DOF_ROT_PARAM_IDXS: tuple[int, ...] = (
    1, 3, 5, 7, 9, 11, 30, 31, 32, 33, 40, 41, 42, 43, 47, 48, 49, 50, 51, 52, 56, 57, 58, 59,
    60, 61, 62, 63, 67, 68, 74, 75, 77, 78, 80, 81, 83, 84, 89, 90, 94, 95, 101, 102, 104, 105,
    107, 108, 110, 111, 116, 117, 118, 119, 120, 121, 122, 123,
)
# 6 translation-like parameters passed through unchanged.
BODY_1DOF_TRANS_PARAM_IDXS: tuple[int, ...] = (124, 125, 126, 127, 128, 129)

BODY_PARAM_DIM = 133
BODY_CONT_DIM = 2 * 3 * len(BODY_3DOF_ROT_PARAM_IDXS) + 2 * len(BODY_1DOF_ROT_PARAM_IDXS) + len(
    BODY_1DOF_TRANS_PARAM_IDXS
)  # 138 + 116 + 6 = 260
_N3 = 6 * len(BODY_3DOF_ROT_PARAM_IDXS)  # 138 continuous numbers of the 3-DoF joints
_N1 = 2 * len(BODY_1DOF_ROT_PARAM_IDXS)  # 116 continuous numbers of the 1-DoF joints

# The 54 hand entries of the 133-vector that the body head zeroes (the hand decoder or the
# hand PCA fills them later).
mhr_param_hand_idxs: list[int] = list(range(62, 116))
mhr_param_hand_mask: torch.Tensor = torch.zeros(BODY_PARAM_DIM, dtype=torch.bool)
mhr_param_hand_mask[mhr_param_hand_idxs] = True

# Hand joints in the order of the 27 hand model parameters: index1 (3), index2, index3,
# middle (3,1,1), ring (3,1,1), pinky (3,1,1), thumb0 (2), thumb1 (3), thumb2, thumb3.
HAND_DOFS_PER_JOINT: tuple[int, ...] = (3, 1, 1, 3, 1, 1, 3, 1, 1, 3, 1, 1, 2, 3, 1, 1)
HAND_PARAM_DIM = sum(HAND_DOFS_PER_JOINT)  # 27
HAND_CONT_DIM = 2 * HAND_PARAM_DIM  # 54


def _hand_layout() -> tuple[list[int], list[int], list[int], list[int]]:
    """Positions of 3-DoF / other entries in the 54-d continuous and the 27-d Euler vectors."""
    cont3, cont1, par3, par1 = [], [], [], []
    c = p = 0
    for k in HAND_DOFS_PER_JOINT:
        # 3-DoF joints use the 6D encoding (6 numbers); 1- and 2-DoF joints one (sin, cos)
        # pair per DoF. Both are 2k numbers in the continuous vector.
        (cont3 if k == 3 else cont1).extend(range(c, c + 2 * k))
        (par3 if k == 3 else par1).extend(range(p, p + k))
        c += 2 * k
        p += k
    return cont3, cont1, par3, par1


_HAND_CONT_3DOF, _HAND_CONT_1DOF, _HAND_PAR_3DOF, _HAND_PAR_1DOF = _hand_layout()


def _index(idxs, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(idxs, dtype=torch.long, device=device).flatten()


def _check_last_dim(x: torch.Tensor, size: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected last dimension {size}, got shape {tuple(x.shape)}")


# --- geodesic distance, wrist fix ------------------------------------------------------------


def rotation_angle_difference(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (rad) between rotation matrices A and B, shape (..., 3, 3) -> (...).

    acos((trace(A Bᵀ) - 1) / 2) with the cosine clamped to [-1, 1].
    """
    if A.shape[-2:] != (3, 3) or B.shape[-2:] != (3, 3):
        raise ValueError(f"rotation_angle_difference: need (...,3,3), got {tuple(A.shape)}, {tuple(B.shape)}")
    rel = torch.matmul(A, B.transpose(-2, -1))
    trace = rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]
    return torch.acos(torch.clamp((trace - 1) / 2, -1.0, 1.0))


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    # atan2(sin, cos) wraps to (-pi, pi], exactly as the official code does it.
    return torch.atan2(torch.sin(angle), torch.cos(angle))


def _limit_violation(val: torch.Tensor, limits: tuple[float, float]) -> torch.Tensor:
    below = torch.clamp(limits[0] - val, min=0.0)
    above = torch.clamp(val - limits[1], min=0.0)
    return below**2 + above**2


def fix_wrist_euler(
    wrist_xzy: torch.Tensor,
    limits_x: tuple[float, float] = (-2.2, 1.0),
    limits_z: tuple[float, float] = (-2.2, 1.5),
    limits_y: tuple[float, float] = (-1.2, 1.5),
) -> torch.Tensor:
    """Choose between the two XZY Euler solutions of a wrist rotation (reference §5.11 step 7).

    `wrist_xzy` (..., 3) holds (x, z, y) angles. The alternative solution
    (x + π, -(z + π), y + π), wrapped to (-π, π], is used where its squared joint-limit
    violation is strictly smaller.
    """
    _check_last_dim(wrist_xzy, 3, "fix_wrist_euler(wrist_xzy)")
    x, z, y = wrist_xzy[..., 0], wrist_xzy[..., 1], wrist_xzy[..., 2]
    x_alt = _wrap(x + torch.pi)
    z_alt = _wrap(-(z + torch.pi))
    y_alt = _wrap(y + torch.pi)
    violation = _limit_violation(x, limits_x) + _limit_violation(z, limits_z) + _limit_violation(y, limits_y)
    violation_alt = (
        _limit_violation(x_alt, limits_x) + _limit_violation(z_alt, limits_z) + _limit_violation(y_alt, limits_y)
    )
    use_alt = (violation_alt < violation).unsqueeze(-1)
    return torch.where(use_alt, torch.stack([x_alt, z_alt, y_alt], dim=-1), wrist_xzy)


# --- Euler XYZ <-> 6D (MHR's joint rotation convention R = Rz·Ry·Rx) --------------------------


def batch6DFromXYZ(r: torch.Tensor, return_9D: bool = False) -> torch.Tensor:
    """Euler angles (rx, ry, rz) (..., 3) -> first two columns of Rz·Ry·Rx (..., 6).

    With `return_9D` the full matrix (..., 3, 3) is returned instead.
    """
    _check_last_dim(r, 3, "batch6DFromXYZ(r)")
    c, s = torch.cos(r), torch.sin(r)
    cx, cy, cz = c[..., 0], c[..., 1], c[..., 2]
    sx, sy, sz = s[..., 0], s[..., 1], s[..., 2]
    m = torch.stack(
        [
            cy * cz, -cx * sz + sx * sy * cz, sx * sz + cx * sy * cz,
            cy * sz, cx * cz + sx * sy * sz, -sx * cz + cx * sy * sz,
            -sy, sx * cy, cx * cy,
        ],
        dim=-1,
    ).reshape(*r.shape[:-1], 3, 3)
    if return_9D:
        return m
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def _frame_from_6d(poses: torch.Tensor) -> torch.Tensor:
    """Orthonormal frame [x y z] (columns) from two raw columns, x first (Gram-Schmidt by cross)."""
    x = F.normalize(poses[..., :3], dim=-1)
    z = F.normalize(torch.cross(x, poses[..., 3:], dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def batchXYZfrom6D(poses: torch.Tensor) -> torch.Tensor:
    """6D (two raw columns) (..., 6) -> Euler angles (rx, ry, rz) (..., 3) of R = Rz·Ry·Rx.

    Near gimbal lock (hypot(R00, R10) < 1e-6) the official singular branch is used:
    rx = atan2(-R12, R11), rz = 0.
    """
    _check_last_dim(poses, 6, "batchXYZfrom6D(poses)")
    m = _frame_from_6d(poses)
    sy = torch.sqrt(m[..., 0, 0] * m[..., 0, 0] + m[..., 1, 0] * m[..., 1, 0])
    # The official code blends both branches with a 0/1 float mask; x*1 + y*0 equals x for
    # every finite value, so the blend is reproduced as written.
    singular = (sy < 1e-6).to(m.dtype)
    x = torch.atan2(m[..., 2, 1], m[..., 2, 2])
    y = torch.atan2(-m[..., 2, 0], sy)
    z = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    xs = torch.atan2(-m[..., 1, 2], m[..., 1, 1])
    zs = m[..., 1, 0] * 0
    return torch.stack(
        [x * (1 - singular) + xs * singular, y * (1 - singular) + y * singular, z * (1 - singular) + zs * singular],
        dim=-1,
    )


# --- body: 260-d continuous <-> 133-d Euler/translation -----------------------------------------


def compact_cont_to_model_params_body(body_pose_cont: torch.Tensor) -> torch.Tensor:
    """Body pose, 260-d continuous (6D | sin,cos | translations) -> 133-d model parameters."""
    _check_last_dim(body_pose_cont, BODY_CONT_DIM, "compact_cont_to_model_params_body(body_pose_cont)")
    dev = body_pose_cont.device
    cont3 = body_pose_cont[..., :_N3].unflatten(-1, (-1, 6))
    cont1 = body_pose_cont[..., _N3 : _N3 + _N1].unflatten(-1, (-1, 2))
    trans = body_pose_cont[..., _N3 + _N1 :]
    out = torch.zeros(*body_pose_cont.shape[:-1], BODY_PARAM_DIM, dtype=body_pose_cont.dtype, device=dev)
    out[..., _index(BODY_3DOF_ROT_PARAM_IDXS, dev)] = batchXYZfrom6D(cont3).flatten(-2, -1)
    out[..., _index(BODY_1DOF_ROT_PARAM_IDXS, dev)] = torch.atan2(cont1[..., -2], cont1[..., -1])
    out[..., _index(BODY_1DOF_TRANS_PARAM_IDXS, dev)] = trans
    return out


def compact_model_params_to_cont_body(body_pose_params: torch.Tensor) -> torch.Tensor:
    """Inverse of `compact_cont_to_model_params_body`: 133-d parameters -> 260-d continuous."""
    _check_last_dim(body_pose_params, BODY_PARAM_DIM, "compact_model_params_to_cont_body(body_pose_params)")
    dev = body_pose_params.device
    p3 = body_pose_params[..., _index(BODY_3DOF_ROT_PARAM_IDXS, dev)].unflatten(-1, (-1, 3))
    p1 = body_pose_params[..., _index(BODY_1DOF_ROT_PARAM_IDXS, dev)]
    trans = body_pose_params[..., _index(BODY_1DOF_TRANS_PARAM_IDXS, dev)]
    cont3 = batch6DFromXYZ(p3).flatten(-2, -1)
    cont1 = torch.stack([p1.sin(), p1.cos()], dim=-1).flatten(-2, -1)
    return torch.cat([cont3, cont1, trans], dim=-1)


# --- hand: 54-d continuous <-> 27-d Euler ---------------------------------------------------------


def compact_cont_to_model_params_hand(hand_cont: torch.Tensor) -> torch.Tensor:
    """One hand, 54-d continuous -> 27 Euler parameters ordered by joint (HAND_DOFS_PER_JOINT)."""
    _check_last_dim(hand_cont, HAND_CONT_DIM, "compact_cont_to_model_params_hand(hand_cont)")
    dev = hand_cont.device
    cont3 = hand_cont[..., _index(_HAND_CONT_3DOF, dev)].unflatten(-1, (-1, 6))
    cont1 = hand_cont[..., _index(_HAND_CONT_1DOF, dev)].unflatten(-1, (-1, 2))
    out = torch.zeros(*hand_cont.shape[:-1], HAND_PARAM_DIM, dtype=hand_cont.dtype, device=dev)
    out[..., _index(_HAND_PAR_3DOF, dev)] = batchXYZfrom6D(cont3).flatten(-2, -1)
    out[..., _index(_HAND_PAR_1DOF, dev)] = torch.atan2(cont1[..., -2], cont1[..., -1])
    return out


def compact_model_params_to_cont_hand(hand_model_params: torch.Tensor) -> torch.Tensor:
    """Inverse of `compact_cont_to_model_params_hand`: 27 parameters -> 54-d continuous."""
    _check_last_dim(hand_model_params, HAND_PARAM_DIM, "compact_model_params_to_cont_hand(hand_model_params)")
    dev = hand_model_params.device
    p3 = hand_model_params[..., _index(_HAND_PAR_3DOF, dev)].unflatten(-1, (-1, 3))
    p1 = hand_model_params[..., _index(_HAND_PAR_1DOF, dev)]
    out = torch.zeros(*hand_model_params.shape[:-1], HAND_CONT_DIM, dtype=hand_model_params.dtype, device=dev)
    out[..., _index(_HAND_CONT_3DOF, dev)] = batch6DFromXYZ(p3).flatten(-2, -1)
    out[..., _index(_HAND_CONT_1DOF, dev)] = torch.stack([p1.sin(), p1.cos()], dim=-1).flatten(-2, -1)
    return out


# --- global rotation 6D -> matrix ------------------------------------------------------------------


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 6D -> rotation matrix, (B, 6) (any leading shape is flattened) -> (B, 3, 3).

    The 6 numbers are the two columns a1 = x[0:3], a2 = x[3:6]; b1 = a1/|a1|,
    b2 = normalize(a2 - (b1·a2) b1), b3 = b1 × b2, R = [b1 b2 b3] (columns).
    """
    _check_last_dim(x, 6, "rot6d_to_rotmat(x)")
    cols = x.reshape(-1, 2, 3).permute(0, 2, 1).contiguous()
    a1, a2 = cols[:, :, 0], cols[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.linalg.cross(b1, b2)
    return torch.stack((b1, b2, b3), dim=-1)


# --- roma conversions (used as the official code uses them) -----------------------------------


def rotmat_to_euler(convention: str, rotmat: torch.Tensor) -> torch.Tensor:
    """`roma.rotmat_to_euler`: scipy semantics (upper case intrinsic, lower case extrinsic),
    angles in the order of the convention string, radians. The official code uses "ZYX" (global
    rotation), "xyz" (hand-model wrist transfer) and "XZY" (wrist IK)."""
    if rotmat.shape[-2:] != (3, 3):
        raise ValueError(f"rotmat_to_euler: need (...,3,3), got {tuple(rotmat.shape)}")
    return roma.rotmat_to_euler(convention, rotmat)


def euler_to_rotmat(convention: str, angles: torch.Tensor) -> torch.Tensor:
    """`roma.euler_to_rotmat` (same conventions as `rotmat_to_euler`), (..., 3) -> (..., 3, 3)."""
    _check_last_dim(angles, 3, "euler_to_rotmat(angles)")
    return roma.euler_to_rotmat(convention, angles)


def unitquat_to_rotmat(quat_xyzw: torch.Tensor) -> torch.Tensor:
    """`roma.unitquat_to_rotmat`: unit quaternion in x, y, z, w order (..., 4) -> (..., 3, 3)."""
    _check_last_dim(quat_xyzw, 4, "unitquat_to_rotmat(quat_xyzw)")
    return roma.unitquat_to_rotmat(quat_xyzw)


# Guard against silent edits of the tables above.
assert BODY_CONT_DIM == 260 and HAND_CONT_DIM == 54 and len(mhr_param_hand_idxs) == 54
