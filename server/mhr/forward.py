"""Our own MHR body-model forward, computed from the buffers of MHR's TorchScript.

Same math as the TorchScript (reference/mhr.md §3.3, §4, §5.2; fixtures/mhr-standin/README.md):

1. rest = base_shape + Σ identity·S + Σ expression·E                         (blend shapes)
2. jp = parameter_transform[:, :204] @ model_params -> (127, 7) = t(3), Euler xyz(3), log2 s
3. local joint: t = offset + jp_t, q = prerotation ⊗ q(Rz·Ry·Rx), s = 2^jp_s
4. forward kinematics in float64 in parent order: t = t_p + s_p R_p t_l, q = q_p ⊗ q_l, s = s_p s_l
5. pose correctives (switchable): 6D features of joints 2.. (identity subtracted) -> sparse
   linear -> ReLU -> dense -> per-vertex offsets added to the rest mesh
6. linear blend skinning with (G ∘ inverse_bind_pose) per joint.

Skeleton states are (..., 8) = translation (cm), quaternion x y z w, uniform scale. Quaternions
are composed (not matrices) so their sign matches the TorchScript's output exactly.

Precision: joint parameters, blend shapes and correctives are float32 and FK is float64 (on
the CPU when the module lives on MPS, which has no float64), as in the TorchScript. By default
(precision="torchscript") the joint-local transforms and the skinning are float32 too, like the
TorchScript, which keeps us closest to it; precision="float64" computes those in float64 for a
reference-quality result (about 3x closer to exact arithmetic than the TorchScript itself).

The module shares storage with the TorchScript's tensors (no copy of the 664 MB corrective
matrix of the real file) and registers them as non-persistent buffers so it never adds keys to
a model's state_dict.
"""
from __future__ import annotations

import math

import torch
from torch import nn

NUM_IDENTITY = 45
NUM_EXPRESSION = 72
NUM_MODEL_PARAMS = 204
NUM_POSE_PARAMS = 136  # 0..135: root translation/rotation and body pose; 136..203 are scales
DOF_PER_JOINT = 7
FIRST_CORRECTIVE_JOINT = 2  # body_world and root do not drive correctives


# --- quaternion / similarity helpers (x, y, z, w) ----------------------------------------------


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of quaternions stored x, y, z, w."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        dim=-1,
    )


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4): v + 2w(u×v) + 2u×(u×v)."""
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * torch.linalg.cross(u, v, dim=-1)
    return v + w * t + torch.linalg.cross(u, t, dim=-1)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (x, y, z, w) (..., 4) -> rotation matrix (..., 3, 3)."""
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def euler_xyz_to_quat(angles: torch.Tensor) -> torch.Tensor:
    """Euler (rx, ry, rz) (..., 3) -> quaternion of R = Rz(rz)·Ry(ry)·Rx(rx), x y z w."""
    c = torch.cos(angles * 0.5)
    s = torch.sin(angles * 0.5)
    cx, cy, cz = c.unbind(-1)
    sx, sy, sz = s.unbind(-1)
    return torch.stack(
        [
            sx * cy * cz - cx * sy * sz,
            cx * sy * cz + sx * cy * sz,
            cx * cy * sz - sx * sy * cz,
            cx * cy * cz + sx * sy * sz,
        ],
        dim=-1,
    )


def skel_compose(parent: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Similarity composition parent ∘ local of skeleton states (..., 8)."""
    t_p, q_p, s_p = parent[..., :3], parent[..., 3:7], parent[..., 7:]
    t_l, q_l, s_l = local[..., :3], local[..., 3:7], local[..., 7:]
    t = t_p + s_p * quat_rotate(q_p, t_l)
    return torch.cat([t, quat_multiply(q_p, q_l), s_p * s_l], dim=-1)


def skel_inverse(state: torch.Tensor) -> torch.Tensor:
    """Inverse similarity of skeleton states (..., 8)."""
    t, q, s = state[..., :3], state[..., 3:7], state[..., 7:]
    q_inv = torch.cat([-q[..., :3], q[..., 3:]], dim=-1)
    s_inv = 1.0 / s
    return torch.cat([-s_inv * quat_rotate(q_inv, t), q_inv, s_inv], dim=-1)


def fk_levels(parents: list[int]) -> list[list[int]]:
    """Joints grouped by depth (level 0 = roots); a level only depends on earlier levels."""
    depth: list[int] = []
    for j, p in enumerate(parents):
        if p >= j:
            raise ValueError(f"MHR joint parents must precede children: joint {j} has parent {p}")
        depth.append(0 if p < 0 else depth[p] + 1)
    levels: list[list[int]] = [[] for _ in range(max(depth) + 1)] if depth else []
    for j, d in enumerate(depth):
        levels[d].append(j)
    return levels


def fk_jumps(parents: list[int]) -> list[list[int]]:
    """Ancestor tables for forward kinematics by pointer jumping.

    Slot J (= len(parents)) is an identity transform standing in for "above the root". Table k
    maps every joint to its 2^k-th ancestor (or J); after composing each state with the state
    its table points at, k = 0..K-1, every joint holds its whole chain. K = ceil(log2(depth)),
    4 for MHR's 16 levels instead of 15 level-by-level steps: fewer, larger tensor operations,
    which is what matters on a GPU (each small operation costs a kernel launch).
    The association order differs from the TorchScript's parent-then-child order; as the stored
    quaternions are unit only to float32 precision, joint positions differ by up to ~1e-5 cm.
    """
    fk_levels(parents)  # validates the order
    n = len(parents)
    anc = [p if p >= 0 else n for p in parents] + [n]
    jumps = []
    while any(a != n for a in anc[:n]):
        jumps.append(list(anc))
        anc = [anc[a] for a in anc]
    return jumps


def _compute_device(device: torch.device, dtype: torch.dtype) -> torch.device:
    # MPS has no float64; run those parts on the CPU.
    return torch.device("cpu") if (device.type == "mps" and dtype == torch.float64) else device


class MHRBody(nn.Module):
    """MHR forward from TorchScript buffers; `forward` mirrors the TorchScript's interface."""

    def __init__(
        self,
        *,
        joint_parents: torch.Tensor,
        joint_offsets: torch.Tensor,
        joint_prerotations: torch.Tensor,
        parameter_transform: torch.Tensor,
        inverse_bind_pose: torch.Tensor,
        skin_joints: torch.Tensor,
        skin_vertices: torch.Tensor,
        skin_weights: torch.Tensor,
        base_shape: torch.Tensor,
        identity_shapes: torch.Tensor,
        expression_shapes: torch.Tensor,
        faces: torch.Tensor,
        corrective_indices: torch.Tensor | None = None,
        corrective_weights: torch.Tensor | None = None,
        corrective_hidden: int = 0,
        corrective_dense: torch.Tensor | None = None,
        joint_names: list[str] | None = None,
        parameter_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        num_joints = int(joint_parents.shape[0])
        num_verts = int(base_shape.shape[0])
        _expect(joint_offsets, (num_joints, 3), "joint_translation_offsets")
        _expect(joint_prerotations, (num_joints, 4), "joint_prerotations")
        _expect(inverse_bind_pose, (num_joints, 8), "inverse_bind_pose")
        if parameter_transform.ndim != 2 or parameter_transform.shape[0] != DOF_PER_JOINT * num_joints:
            raise ValueError(
                f"parameter_transform must be ({DOF_PER_JOINT * num_joints}, P), got {tuple(parameter_transform.shape)}"
            )
        if parameter_transform.shape[1] < NUM_MODEL_PARAMS:
            raise ValueError(f"parameter_transform has {parameter_transform.shape[1]} columns, need ≥ {NUM_MODEL_PARAMS}")
        _expect(identity_shapes, (NUM_IDENTITY, num_verts, 3), "identity shape_vectors")
        _expect(expression_shapes, (NUM_EXPRESSION, num_verts, 3), "face expression shape_vectors")
        if not (skin_joints.shape == skin_vertices.shape == skin_weights.shape) or skin_joints.ndim != 1:
            raise ValueError("skin joint/vertex/weight arrays must be 1-D and equally long")
        self.num_joints = num_joints
        self.num_vertices = num_verts
        self.parents = [int(p) for p in joint_parents.tolist()]
        self.levels = fk_levels(self.parents)
        self.jumps = fk_jumps(self.parents)
        self._jump_tensors: dict[torch.device, list[torch.Tensor]] = {}
        self.joint_names = list(joint_names) if joint_names is not None else None
        self.parameter_names = list(parameter_names) if parameter_names is not None else None
        buf = lambda name, t: self.register_buffer(name, t, persistent=False)  # noqa: E731
        buf("joint_parents", joint_parents.long())
        buf("joint_offsets", joint_offsets)
        buf("joint_prerotations", joint_prerotations)
        buf("parameter_transform", parameter_transform)
        buf("inverse_bind_pose", inverse_bind_pose)
        buf("skin_joints", skin_joints.long())
        buf("skin_vertices", skin_vertices.long())
        buf("skin_weights", skin_weights)
        buf("base_shape", base_shape)
        buf("identity_shapes", identity_shapes)
        buf("expression_shapes", expression_shapes)
        buf("faces", faces)
        self.has_correctives = corrective_dense is not None
        if self.has_correctives:
            if corrective_indices is None or corrective_weights is None or corrective_hidden <= 0:
                raise ValueError("pose correctives need sparse indices, weights and a hidden size")
            _expect(corrective_dense, (num_verts * 3, corrective_hidden), "corrective dense weight")
            buf("corrective_indices", corrective_indices.long())
            buf("corrective_weights", corrective_weights)
            buf("corrective_dense", corrective_dense)
        self.corrective_hidden = int(corrective_hidden)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_torchscript(cls, module: torch.nn.Module) -> "MHRBody":
        """Read the buffers of MHR's TorchScript (or the stand-in); shares their storage.

        Also accepts the layout of MHR's Python class, where the 117 blend shapes (45 identity +
        72 expression) sit together in `character_torch.blend_shape` (reference/mhr.md §2.4).
        """
        try:
            ch = module.character_torch
            sk, pt, lbs, blend = ch.skeleton, ch.parameter_transform, ch.linear_blend_skinning, ch.blend_shape
        except AttributeError as exc:
            raise ValueError(f"not an MHR model: {exc}") from exc
        shapes = blend.shape_vectors.detach()
        if hasattr(module, "face_expressions_model"):
            identity, expression = shapes, module.face_expressions_model.shape_vectors.detach()
        elif shapes.shape[0] == NUM_IDENTITY + NUM_EXPRESSION:
            identity, expression = shapes[:NUM_IDENTITY], shapes[NUM_IDENTITY:]
        else:
            raise ValueError(f"MHR model has {shapes.shape[0]} blend shapes and no face_expressions_model")
        kwargs: dict = {}
        pc = getattr(module, "pose_correctives_model", None)
        if pc is not None:
            net = pc.pose_dirs_predictor
            sparse, dense = getattr(net, "0"), getattr(net, "2")
            dense_w = dense.weight.detach()
            kwargs.update(
                corrective_indices=sparse.sparse_indices.detach(),
                corrective_weights=sparse.sparse_weight.detach(),
                corrective_hidden=int(dense_w.shape[1]),
                corrective_dense=dense_w,
            )
        mesh = getattr(ch, "mesh", None)
        faces = mesh.faces.detach() if mesh is not None else torch.zeros(0, 3, dtype=torch.int32)
        return cls(
            joint_parents=sk.joint_parents.detach(),
            joint_offsets=sk.joint_translation_offsets.detach(),
            joint_prerotations=sk.joint_prerotations.detach(),
            parameter_transform=pt.parameter_transform.detach(),
            inverse_bind_pose=lbs.inverse_bind_pose.detach(),
            skin_joints=lbs.skin_indices_flattened.detach(),
            skin_vertices=lbs.vert_indices_flattened.detach(),
            skin_weights=lbs.skin_weights_flattened.detach(),
            base_shape=blend.base_shape.detach(),
            identity_shapes=identity,
            expression_shapes=expression,
            faces=faces,
            joint_names=_list_attr(sk, "joint_names"),
            parameter_names=_list_attr(pt, "parameter_names"),
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return self.base_shape.device

    # --- stages ------------------------------------------------------------------------------

    def _coeffs(self, x: torch.Tensor | None, width: int, name: str, batch: int | None = None) -> torch.Tensor:
        if x is None:
            return torch.zeros(batch or 1, width, dtype=torch.float32, device=self.device)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MHR {name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"MHR {name} must be (B, {width}), got {tuple(x.shape)}")
        if batch is not None and x.shape[0] not in (1, batch):
            raise ValueError(f"MHR {name} has {x.shape[0]} rows, expected 1 or {batch}")
        return x.to(device=self.device, dtype=torch.float32)

    def rest_vertices(self, identity: torch.Tensor, expression: torch.Tensor | None = None) -> torch.Tensor:
        """Blend shapes only (no pose, no correctives): (B, V, 3) cm, the bind-pose mesh."""
        identity = self._coeffs(identity, NUM_IDENTITY, "identity")
        expression = self._coeffs(expression, NUM_EXPRESSION, "expression", identity.shape[0])
        rest = torch.einsum("nvd,bn->bvd", self.identity_shapes, identity) + self.base_shape
        return rest + torch.einsum("nvd,bn->bvd", self.expression_shapes, expression)

    def joint_parameters(self, model_params: torch.Tensor) -> torch.Tensor:
        """Model parameters (B, 204) -> joint parameters (B, J, 7): t xyz, Euler xyz, log2 scale."""
        model_params = self._coeffs(model_params, NUM_MODEL_PARAMS, "model_params")
        jp = torch.einsum("dn,bn->bd", self.parameter_transform[:, :NUM_MODEL_PARAMS], model_params)
        return jp.reshape(model_params.shape[0], self.num_joints, DOF_PER_JOINT)

    def local_skeleton_state(self, joint_params: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Joint parameters (B, J, 7) -> local (parent-frame) skeleton states (B, J, 8)."""
        dev = _compute_device(joint_params.device, dtype)
        jp = joint_params.to(device=dev, dtype=dtype)
        t = jp[..., 0:3] + self.joint_offsets.to(dev, dtype)
        q = quat_multiply(self.joint_prerotations.to(dev, dtype).expand_as(jp[..., :4]), euler_xyz_to_quat(jp[..., 3:6]))
        s = torch.exp(jp[..., 6:7] * math.log(2.0))
        return torch.cat([t, q, s], dim=-1)

    def forward_kinematics(self, local_state: torch.Tensor) -> torch.Tensor:
        """Local skeleton states (B, J, 8) -> global ones in the given dtype (pointer jumping,
        see `fk_jumps`; composing with the identity slot is exact, so roots stay as they are)."""
        jumps = self._jump_tensors.get(local_state.device)
        if jumps is None:
            jumps = [torch.as_tensor(a, dtype=torch.long, device=local_state.device) for a in self.jumps]
            self._jump_tensors[local_state.device] = jumps
        identity = local_state.new_zeros(local_state.shape[0], 1, 8)
        identity[..., 6:8] = 1.0  # q = (0, 0, 0, 1), s = 1
        state = torch.cat([local_state, identity], dim=1)
        for ancestor in jumps:
            state = skel_compose(state.index_select(1, ancestor), state)
        return state[:, :-1]

    def forward_kinematics_by_level(self, local_state: torch.Tensor) -> torch.Tensor:
        """The same, parent before child one tree level at a time (the TorchScript's order;
        kept as the reference the tests compare pointer jumping with)."""
        state = local_state.clone()
        for level in self.levels[1:]:
            idx = torch.as_tensor(level, device=state.device)
            pidx = torch.as_tensor([self.parents[j] for j in level], device=state.device)
            state[:, idx] = skel_compose(state[:, pidx], state[:, idx])
        return state

    def skeleton_state(self, model_params: torch.Tensor, precision: str = "float64") -> torch.Tensor:
        """Global skeleton state (B, J, 8) float64 for model parameters (B, 204).

        `precision` "torchscript" builds the joint-local transforms in float32 before the float64
        FK, as the TorchScript does; "float64" builds them in float64. The result is on the CPU
        when the module is on MPS (no float64 there).
        """
        local_dtype = _local_dtype(precision)
        local = self.local_skeleton_state(self.joint_parameters(model_params), local_dtype)
        return self.forward_kinematics(local.to(_compute_device(local.device, torch.float64), torch.float64))

    def pose_correctives(self, joint_params: torch.Tensor) -> torch.Tensor:
        """Corrective offsets (B, V, 3) in the rest frame; exactly zero at the zero pose."""
        batch = joint_params.shape[0]
        if not self.has_correctives:
            return torch.zeros(batch, self.num_vertices, 3, dtype=torch.float32, device=self.device)
        offsets = self.corrective_activations(joint_params) @ self.corrective_dense.t()
        return offsets.reshape(batch, self.num_vertices, 3)

    def corrective_activations(self, joint_params: torch.Tensor) -> torch.Tensor:
        """The correctives' hidden layer after its ReLU, (B, hidden): the offsets are this times
        ``corrective_dense``ᵀ, linear from here on (what clip compression works on)."""
        batch = joint_params.shape[0]
        if not self.has_correctives:
            return torch.zeros(batch, 0, dtype=torch.float32, device=self.device)
        euler = joint_params[:, FIRST_CORRECTIVE_JOINT:, 3:6]
        c, s = torch.cos(euler), torch.sin(euler)
        cx, cy, cz = c.unbind(-1)
        sx, sy, sz = s.unbind(-1)
        # First two columns of Rz·Ry·Rx, minus the identity's (1,0,0,0,1,0).
        feats = torch.stack(
            [cy * cz - 1.0, cy * sz, -sy, sx * sy * cz - cx * sz, sx * sy * sz + cx * cz - 1.0, sx * cy], dim=-1
        ).reshape(batch, -1)
        out_idx, in_idx = self.corrective_indices[0], self.corrective_indices[1]
        hidden = feats.new_zeros(batch, self.corrective_hidden)
        hidden = hidden.index_add(1, out_idx, feats.index_select(1, in_idx) * self.corrective_weights)
        return torch.relu(hidden)

    def skin(self, skel_state: torch.Tensor, rest: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Linear blend skinning of rest vertices (B or 1, V, 3) by global states (B, J, 8)."""
        batch = skel_state.shape[0]
        dev = _compute_device(rest.device, dtype)
        # G ∘ IBP per joint in the skeleton's own precision, then as a 3x4 (scaled rotation | t).
        ibp = self.inverse_bind_pose.to(skel_state.device, skel_state.dtype).expand_as(skel_state)
        joint = skel_compose(skel_state, ibp)
        lin = (quat_to_rotmat(joint[..., 3:7]) * joint[..., 7:, None]).to(dev, dtype)
        trans = joint[..., :3].to(dev, dtype)
        rest = rest.to(dev, dtype).expand(batch, -1, -1)
        j, v = self.skin_joints.to(dev), self.skin_vertices.to(dev)
        moved = torch.einsum("bkij,bkj->bki", lin[:, j], rest[:, v]) + trans[:, j]
        weighted = moved * self.skin_weights.to(dev, dtype)[:, None]
        return torch.zeros_like(rest).index_add(1, v, weighted)

    def bind_skeleton_state(self) -> torch.Tensor:
        """Bind (zero-parameter) skeleton (J, 8) float64 = inverse of inverse_bind_pose.

        The stored quaternions are float32 and thus unit only to ~1e-7; they are renormalised
        first so that the conjugate is the exact inverse rotation.
        """
        ibp = self.inverse_bind_pose.to(_compute_device(self.device, torch.float64), torch.float64)
        q = ibp[:, 3:7] / torch.linalg.vector_norm(ibp[:, 3:7], dim=-1, keepdim=True)
        return skel_inverse(torch.cat([ibp[:, :3], q, ibp[:, 7:]], dim=-1))

    # --- whole model -------------------------------------------------------------------------

    def forward(
        self,
        identity: torch.Tensor,
        model_params: torch.Tensor,
        expression: torch.Tensor | None = None,
        apply_correctives: bool = True,
        precision: str = "torchscript",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(identity (B|1,45), model_params (B,204), expression (B|1,72) or None) ->
        (vertices (B,V,3) cm, skel_state (B,J,8)), float32 on the module's device.

        precision "torchscript" (default): float32 joint-local transforms, float64 FK, float32
        skinning, i.e. the TorchScript's rounding, so results agree with it most closely.
        "float64": local transforms, FK and skinning in float64 (closest to exact arithmetic).
        """
        model_params = self._coeffs(model_params, NUM_MODEL_PARAMS, "model_params")
        batch = model_params.shape[0]
        identity = self._coeffs(identity, NUM_IDENTITY, "identity", batch)
        rest = self.rest_vertices(identity, expression)
        jp = self.joint_parameters(model_params)
        if apply_correctives:
            rest = rest + self.pose_correctives(jp)
        local = self.local_skeleton_state(jp, _local_dtype(precision))
        skel64 = self.forward_kinematics(local.to(_compute_device(local.device, torch.float64), torch.float64))
        if precision == "torchscript":
            verts = self.skin(skel64.to(self.device, torch.float32), rest, torch.float32)
        else:
            verts = self.skin(skel64, rest, torch.float64)
        return verts.to(self.device, torch.float32), skel64.to(self.device, torch.float32)

    def restricted_to(self, vertex_ids: torch.Tensor) -> "MHRBody":
        """The same MHR restricted to `vertex_ids`: joints, parameters and correctives' hidden layer
        unchanged, blend shapes / skinning / corrective outputs of those vertices only."""
        remap = torch.full((self.num_vertices,), -1, dtype=torch.long, device=self.device)
        remap[vertex_ids] = torch.arange(len(vertex_ids), device=self.device)
        keep = remap[self.skin_vertices] >= 0
        kwargs: dict = {}
        if self.has_correctives:
            dense = self.corrective_dense.reshape(self.num_vertices, 3, -1)[vertex_ids]
            kwargs.update(corrective_indices=self.corrective_indices, corrective_weights=self.corrective_weights,
                          corrective_hidden=self.corrective_hidden, corrective_dense=dense.reshape(-1, dense.shape[-1]))
        return MHRBody(
            joint_parents=self.joint_parents, joint_offsets=self.joint_offsets,
            joint_prerotations=self.joint_prerotations, parameter_transform=self.parameter_transform,
            inverse_bind_pose=self.inverse_bind_pose, skin_joints=self.skin_joints[keep],
            skin_vertices=remap[self.skin_vertices[keep]], skin_weights=self.skin_weights[keep],
            base_shape=self.base_shape[vertex_ids], identity_shapes=self.identity_shapes[:, vertex_ids],
            expression_shapes=self.expression_shapes[:, vertex_ids],
            faces=torch.zeros(0, 3, dtype=torch.int32), **kwargs)

    def rest_pose_parameters(self, model_params: torch.Tensor) -> torch.Tensor:
        """The same parameters with every pose parameter (0..135) zeroed, scales kept."""
        params = self._coeffs(model_params, NUM_MODEL_PARAMS, "model_params").clone()
        params[:, :NUM_POSE_PARAMS] = 0
        return params


def _local_dtype(precision: str) -> torch.dtype:
    if precision == "torchscript":
        return torch.float32
    if precision == "float64":
        return torch.float64
    raise ValueError(f"MHR precision must be 'torchscript' or 'float64', got {precision!r}")


def _expect(t: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"MHR {name} must have shape {shape}, got {tuple(t.shape)}")


def _list_attr(module, name: str) -> list[str] | None:
    value = getattr(module, name, None)
    return list(value) if value is not None else None
