"""MHR pose head of SAM 3D Body (`head_pose`, `head_pose_hand`): reference/sam3d-body.md §3.6, §4.

The head maps the decoder's pose token to 519 numbers (6D global rotation | 260 body
continuous | 45 shape | 28 scale | 2x54 hand | 72 face), decodes them into MHR's 204 model
parameters and runs the MHR body model. Submodule and parameter names equal the official ones,
so `state_dict()` keys are `proj.layers.*`, the rig constants (`joint_rotation`, `faces`,
`keypoint_mapping`, ...) and `mhr.*` (the TorchScript, not stored in checkpoints).

Deliberate differences from the official class, none of which changes numbers:
* the mesh-sized constants (`faces`, `keypoint_mapping`) are sized from the loaded MHR model
  instead of real LOD1's 36874 / 18566, so the stand-in fixtures load without re-allocation;
* `hand_pose_comps_ori` is registered here (the official `SAM3DBody` adds it after building the
  head; the value is the same identity);
* the MHR submodule stays in float32 and off MPS (it needs float64) when the model is moved
  with `.to()`, `.half()` etc.; inputs and outputs are moved around the MHR call instead;
* `expr_params=None` is passed to MHR as zeros (the TorchScript cannot take None).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn as nn

from server.mhr.torchscript import load_mhr, module_device
from server.models.layers import FFN
from server.models.rotations import (
    compact_cont_to_model_params_body,
    compact_cont_to_model_params_hand,
    compact_model_params_to_cont_body,
    euler_to_rotmat,
    mhr_param_hand_mask,
    rot6d_to_rotmat,
    rotmat_to_euler,
    unitquat_to_rotmat,
)

NUM_JOINTS = 127
NUM_KEYPOINTS_ALL = 308  # keypoint_mapping rows; the pipeline keeps the first 70 (mhr70)
NUM_KEYPOINTS = 70
# Right hand keypoints (mhr70 21..41) are the only ones the hand model keeps.
HAND_KEYPOINTS = slice(21, 42)


def _mhr_mesh_sizes(mhr: nn.Module) -> tuple[int, int]:
    """(vertex count, face count) of an MHR TorchScript or of server.mhr.forward.MHRBody."""
    if hasattr(mhr, "character_torch"):
        ch = mhr.character_torch
        return int(ch.blend_shape.base_shape.shape[0]), int(ch.mesh.faces.shape[0])
    if hasattr(mhr, "base_shape") and hasattr(mhr, "faces"):
        return int(mhr.base_shape.shape[0]), int(mhr.faces.shape[0])
    raise ValueError(f"{type(mhr).__name__} is not an MHR model (no character_torch / base_shape)")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class MHRHead(nn.Module):
    """Pose MLP + parameter decoding + MHR forward (official `MHRHead`)."""

    def __init__(
        self,
        input_dim: int,
        mlp_depth: int = 1,
        mhr_model_path: str | os.PathLike = "",
        extra_joint_regressor: str = "",
        ffn_zero_bias: bool = True,
        mlp_channel_div_factor: int = 8,
        enable_hand_model: bool = False,
        mhr: Optional[nn.Module] = None,
    ) -> None:
        """`mhr` may pass an already loaded MHR module (TorchScript or MHRBody) instead of a
        path, e.g. to share one 700 MB model between the body and the hand head."""
        super().__init__()
        if input_dim <= 0 or mlp_depth < 1 or mlp_channel_div_factor < 1:
            raise ValueError(
                f"MHRHead: bad sizes input_dim={input_dim}, mlp_depth={mlp_depth}, "
                f"mlp_channel_div_factor={mlp_channel_div_factor}"
            )
        self.num_shape_comps = 45
        self.num_scale_comps = 28
        self.num_hand_comps = 54
        self.num_face_comps = 72
        self.enable_hand_model = bool(enable_hand_model)
        self.body_cont_dim = 260
        self.npose = (
            6 + self.body_cont_dim + self.num_shape_comps + self.num_scale_comps
            + 2 * self.num_hand_comps + self.num_face_comps
        )  # 519
        self.num_hand_scale_comps = self.num_scale_comps - 18
        self.num_hand_pose_comps = self.num_hand_comps

        self.proj = FFN(
            embed_dims=input_dim,
            feedforward_channels=input_dim // mlp_channel_div_factor,
            output_dims=self.npose,
            num_fcs=mlp_depth,
            add_identity=False,
        )
        if ffn_zero_bias:
            # The official init zeroes the bias of the last Linear (layers[-2]; [-1] is Dropout).
            nn.init.zeros_(self.proj.layers[-2].bias)

        if mhr is None:
            mhr = load_mhr(mhr_model_path, "cpu")
        num_verts, num_faces = _mhr_mesh_sizes(mhr)

        # Rig constants, filled from the checkpoint (frozen Parameters, as in the official class).
        self.joint_rotation = _frozen(torch.zeros(NUM_JOINTS, 3, 3))
        self.scale_mean = _frozen(torch.zeros(68))
        self.scale_comps = _frozen(torch.zeros(28, 68))
        self.faces = _frozen(torch.zeros(num_faces, 3, dtype=torch.long))
        self.hand_pose_mean = _frozen(torch.zeros(54))
        self.hand_pose_comps = _frozen(torch.eye(54))
        self.hand_joint_idxs_left = _frozen(torch.zeros(27, dtype=torch.long))
        self.hand_joint_idxs_right = _frozen(torch.zeros(27, dtype=torch.long))
        self.keypoint_mapping = _frozen(torch.zeros(NUM_KEYPOINTS_ALL, num_verts + NUM_JOINTS))
        self.right_wrist_coords = _frozen(torch.zeros(3))
        self.root_coords = _frozen(torch.zeros(3))
        self.local_to_world_wrist = _frozen(torch.zeros(3, 3))
        self.nonhand_param_idxs = _frozen(torch.zeros(145, dtype=torch.long))
        self.hand_pose_comps_ori = _frozen(torch.eye(54))

        self.mhr = mhr
        for param in self.mhr.parameters():
            param.requires_grad = False
        # Set by the engine's `native` MHR backend: decoder layers whose output only feeds the
        # keypoint-token update skin just the vertices the 70 keypoints read.
        self.intermediate_keypoints_only = False

    # --- device / dtype handling of the MHR submodule -----------------------------------------

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # MHR must stay float32 (the official code never converts it) and cannot run on MPS
        # (float64 FK). Probe what `fn` does and keep MHR out of conversions it cannot take;
        # a device move (other than to MPS) still moves it.
        probe = fn(torch.zeros(1))
        if probe.device.type != "mps" and probe.dtype == torch.float32:
            return super()._apply(fn, recurse)
        mhr = self._modules.pop("mhr")
        try:
            super()._apply(fn, recurse)
        finally:
            self._modules["mhr"] = mhr
        if probe.device.type != "mps" and probe.device != module_device(mhr):
            mhr.to(probe.device)
        return self

    @property
    def mhr_device(self) -> torch.device:
        return module_device(self.mhr)

    # --- helpers ---------------------------------------------------------------------------

    def _faces_numpy(self) -> Any:
        """`faces` as numpy, copied to the host once per value rather than once per decoder
        layer (a device->host copy and sync in every layer on CUDA). The key follows in-place
        loads (version counter) and moves (data pointer)."""
        key = (self.faces.device, self.faces.data_ptr(), self.faces._version)
        cached = self.__dict__.get("_faces_np_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.faces.detach().cpu().numpy())
            self.__dict__["_faces_np_cache"] = cached
        return cached[1]

    def _hand_mask_on(self, device: torch.device) -> torch.Tensor:
        """The constant hand-DoF mask on `device`, uploaded once per device."""
        masks = self.__dict__.setdefault("_hand_mask_cache", {})
        if device not in masks:
            masks[device] = mhr_param_hand_mask.to(device)
        return masks[device]

    def get_zero_pose_init(self, factor: float = 1.0) -> torch.Tensor:
        """(1, 519) initial estimate: identity 6D rotation + continuous zero body pose."""
        weights = torch.zeros(1, self.npose)
        weights[:, : 6 + self.body_cont_dim] = torch.cat(
            [
                torch.tensor([1.0, 0, 0, 0, 1, 0]),
                compact_model_params_to_cont_body(torch.zeros(1, 133)).squeeze() * factor,
            ],
            dim=0,
        )
        return weights

    def replace_hands_in_pose(self, full_pose_params: torch.Tensor, hand_pose_params: torch.Tensor) -> torch.Tensor:
        """Write both hands' decoded Euler parameters into the 136-vector (in place)."""
        if full_pose_params.shape[1] != 136:
            raise ValueError(f"replace_hands_in_pose: need (B, 136) pose params, got {tuple(full_pose_params.shape)}")
        if hand_pose_params.shape[-1] != 2 * self.num_hand_pose_comps:
            raise ValueError(f"replace_hands_in_pose: need (B, 108) hand params, got {tuple(hand_pose_params.shape)}")
        left, right = torch.split(hand_pose_params, [self.num_hand_pose_comps, self.num_hand_pose_comps], dim=1)
        # hand = mean + x @ comps, generic in comps (the stored matrix wins over the identity).
        left_params = compact_cont_to_model_params_hand(
            self.hand_pose_mean + torch.einsum("da,ab->db", left, self.hand_pose_comps)
        )
        right_params = compact_cont_to_model_params_hand(
            self.hand_pose_mean + torch.einsum("da,ab->db", right, self.hand_pose_comps)
        )
        full_pose_params[:, self.hand_joint_idxs_left] = left_params
        full_pose_params[:, self.hand_joint_idxs_right] = right_params
        return full_pose_params

    def _keypoint_subset(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """(MHR restricted to the vertices keypoint_mapping[:70] reads, those vertex ids, the used
        joint ids), rebuilt when the mapping or the MHR module changes."""
        from server.mhr.forward import MHRBody

        mapping = self.keypoint_mapping[:NUM_KEYPOINTS]
        key = (id(self.mhr), self.mhr_device, mapping.data_ptr(), mapping._version)
        cached = self.__dict__.get("_keypoint_subset_cache")
        if cached is None or cached[0] != key:
            if not isinstance(self.mhr, MHRBody):
                raise ValueError("keypoint-only MHR needs the native MHR backend")
            num_verts = int(self.mhr.num_vertices)
            used = torch.nonzero(mapping.detach().abs().sum(0) > 0).flatten().to(self.mhr_device)
            verts, joints = used[used < num_verts], used[used >= num_verts] - num_verts
            cached = (key, (self.mhr.restricted_to(verts), used.to(mapping.device), joints))
            self.__dict__["_keypoint_subset_cache"] = cached
        return cached[1]

    def _run_mhr(self, shape: torch.Tensor, model_params: torch.Tensor, expr: Optional[torch.Tensor]):
        return self._run_mhr_on(self.mhr, shape, model_params, expr)

    def _run_mhr_on(self, mhr: nn.Module, shape: torch.Tensor, model_params: torch.Tensor,
                    expr: Optional[torch.Tensor]):
        batch = model_params.shape[0]
        if expr is None:
            expr = torch.zeros(batch, self.num_face_comps, dtype=model_params.dtype, device=model_params.device)
        dev = self.mhr_device
        verts, skel = mhr(
            shape.to(dev, torch.float32), model_params.to(dev, torch.float32), expr.to(dev, torch.float32)
        )
        return verts.to(model_params.device), skel.to(model_params.device)


    # --- MHR forward with SAM 3D Body parameters ----------------------------------------------

    def mhr_forward(
        self,
        global_trans: torch.Tensor,
        global_rot: torch.Tensor,
        body_pose_params: torch.Tensor,
        hand_pose_params: Optional[torch.Tensor],
        scale_params: torch.Tensor,
        shape_params: torch.Tensor,
        expr_params: Optional[torch.Tensor] = None,
        return_keypoints: bool = False,
        do_pcblend: bool = True,
        return_joint_coords: bool = False,
        return_model_params: bool = False,
        return_joint_rotations: bool = False,
        scale_offsets: Optional[torch.Tensor] = None,
        vertex_offsets: Optional[torch.Tensor] = None,
        keypoints_only: bool = False,
    ) -> Any:
        """Official `mhr_forward`: returns vertices (B,V,3) m in MHR axes, then, in this order and
        only if asked, the 308 keypoints (m), joint coords (B,127,3) m, the 204 model parameters
        and the global joint rotations (B,127,3,3). A single output is returned bare.

        `global_trans` is in metres (×10 for MHR's 10 cm unit); `global_rot` is the ZYX Euler
        triple that the body head produces. `do_pcblend` and `vertex_offsets` are accepted and
        ignored, as in the official code.
        `keypoints_only` (ours; native MHR only): skin only the vertices the first 70 keypoints
        read; the vertices come back as None and only the first 70 keypoints are filled.
        """
        if self.enable_hand_model:
            # Wrist-centric prediction -> body frame; extrinsic "xyz" applied to the ZYX triple
            # on purpose (official behaviour, reference §4.3 step 3).
            rot_ori, trans_ori = global_rot.clone(), global_trans.clone()
            global_rot = rotmat_to_euler("xyz", euler_to_rotmat("xyz", rot_ori) @ self.local_to_world_wrist)
            global_trans = (
                -(euler_to_rotmat("xyz", global_rot) @ (self.right_wrist_coords - self.root_coords) + self.root_coords)
                + trans_ori
            )

        body_pose_params = body_pose_params[..., :130]
        if scale_params.ndim == 1:
            scale_params = scale_params[None]
        if shape_params.ndim == 1:
            shape_params = shape_params[None]
        scales = self.scale_mean[None, :] + scale_params @ self.scale_comps
        if scale_offsets is not None:
            scales = scales + scale_offsets

        full_pose_params = torch.cat([global_trans * 10, global_rot, body_pose_params], dim=1)
        if hand_pose_params is not None:
            full_pose_params = self.replace_hands_in_pose(full_pose_params, hand_pose_params)
        model_params = torch.cat([full_pose_params, scales], dim=1)
        if self.enable_hand_model:
            model_params[:, self.nonhand_param_idxs] = 0

        if keypoints_only:
            subset, used, used_joints = self._keypoint_subset()
            verts_cm, skel = self._run_mhr_on(subset, shape_params, model_params, expr_params)
        else:
            verts_cm, skel = self._run_mhr(shape_params, model_params, expr_params)
        joint_coords_cm, joint_quats, _ = torch.split(skel, [3, 4, 1], dim=2)
        verts = verts_cm / 100
        joint_coords = joint_coords_cm / 100
        joint_rots = unitquat_to_rotmat(joint_quats)

        out: list[Any] = [None if keypoints_only else verts]
        if return_keypoints and keypoints_only:
            # `used` lists the subset's vertices first, then joints, as these points are ordered.
            points = torch.cat([verts, joint_coords[:, used_joints.to(verts.device)]], dim=1)
            keypoints = verts.new_zeros(verts.shape[0], NUM_KEYPOINTS_ALL, 3)
            keypoints[:, :NUM_KEYPOINTS] = torch.einsum(
                "kc,bcd->bkd", self.keypoint_mapping[:NUM_KEYPOINTS][:, used], points)
            if self.enable_hand_model:
                keypoints[:, : HAND_KEYPOINTS.start] = 0
                keypoints[:, HAND_KEYPOINTS.stop :] = 0
            out.append(keypoints)
        elif return_keypoints:
            verts_joints = torch.cat([verts, joint_coords], dim=1)  # (B, V+127, 3)
            batch = verts_joints.shape[0]
            keypoints = (
                (self.keypoint_mapping @ verts_joints.permute(1, 0, 2).flatten(1, 2))
                .reshape(-1, batch, 3)
                .permute(1, 0, 2)
            )
            if self.enable_hand_model:
                keypoints[:, : HAND_KEYPOINTS.start] = 0
                keypoints[:, HAND_KEYPOINTS.stop :] = 0
            out.append(keypoints)
        if return_joint_coords:
            out.append(joint_coords)
        if return_model_params:
            out.append(model_params)
        if return_joint_rotations:
            out.append(joint_rots)
        return out[0] if len(out) == 1 else tuple(out)

    # --- token -> outputs -------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        init_estimate: Optional[torch.Tensor] = None,
        do_pcblend: bool = True,
        slim_keypoints: bool = False,
        keypoints_only: bool = False,
    ) -> dict[str, Any]:
        """Pose token (B, C) (+ the (B|1, 519) residual base) -> the official output dict
        (`keypoints_only`: see `mhr_forward`; `pred_vertices` is then None)."""
        if x.ndim != 2:
            raise ValueError(f"MHRHead expects a (B, C) pose token, got shape {tuple(x.shape)}")
        pred = self.proj(x)
        if init_estimate is not None:
            pred = pred + init_estimate
        return self.decode(pred, keypoints_only=keypoints_only)

    def decode(self, pred: torch.Tensor, keypoints_only: bool = False) -> dict[str, Any]:
        """Decode 519-d predictions (B, 519) and run MHR (official forward after `proj`)."""
        if pred.ndim != 2 or pred.shape[1] != self.npose:
            raise ValueError(f"MHRHead.decode expects (B, {self.npose}), got {tuple(pred.shape)}")
        batch = pred.shape[0]
        count = 6
        global_rot_6d = pred[:, :count]
        global_rot_euler = rotmat_to_euler("ZYX", rot6d_to_rotmat(global_rot_6d))
        global_trans = torch.zeros_like(global_rot_euler)

        pred_pose_cont = pred[:, count : count + self.body_cont_dim]
        count += self.body_cont_dim
        pred_pose_euler = compact_cont_to_model_params_body(pred_pose_cont)
        pred_pose_euler[:, self._hand_mask_on(pred.device)] = 0  # hands come from the hand PCA
        pred_pose_euler[:, -3:] = 0  # jaw

        pred_shape = pred[:, count : count + self.num_shape_comps]
        count += self.num_shape_comps
        pred_scale = pred[:, count : count + self.num_scale_comps]
        count += self.num_scale_comps
        pred_hand = pred[:, count : count + 2 * self.num_hand_comps]
        count += 2 * self.num_hand_comps
        pred_face = pred[:, count : count + self.num_face_comps] * 0  # expressions disabled

        verts, j3d, jcoords, mhr_model_params, joint_global_rots = self.mhr_forward(
            global_trans=global_trans,
            global_rot=global_rot_euler,
            body_pose_params=pred_pose_euler,
            hand_pose_params=pred_hand,
            scale_params=pred_scale,
            shape_params=pred_shape,
            expr_params=pred_face,
            return_keypoints=True,
            return_joint_coords=True,
            return_model_params=True,
            return_joint_rotations=True,
            keypoints_only=keypoints_only,
        )
        j3d = j3d[:, :NUM_KEYPOINTS]
        # MHR (y up, z front) -> OpenCV camera axes; joint_global_rots stay in the MHR frame.
        if verts is not None:
            verts[..., [1, 2]] *= -1
        j3d[..., [1, 2]] *= -1
        jcoords[..., [1, 2]] *= -1

        return {
            "pred_pose_raw": torch.cat([global_rot_6d, pred_pose_cont], dim=1),
            "pred_pose_rotmat": None,
            "global_rot": global_rot_euler,
            "body_pose": pred_pose_euler,
            "shape": pred_shape,
            "scale": pred_scale,
            "hand": pred_hand,
            "face": pred_face,
            "pred_keypoints_3d": j3d.reshape(batch, -1, 3),
            "pred_vertices": None if verts is None else verts.reshape(batch, -1, 3),
            "pred_joint_coords": jcoords.reshape(batch, -1, 3),
            "faces": self._faces_numpy(),
            "joint_global_rots": joint_global_rots,
            "mhr_model_params": mhr_model_params,
        }
