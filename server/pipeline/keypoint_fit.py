"""Pin to markers: adjust a person's pose so the prompted keypoints land on the user's points.

3DB's keypoint prompts (reference/sam3d-body.md §3.5) are a hint to the network: the prompted
run usually moves a joint towards the point, but nothing makes it arrive there. An animator who
drags a wrist marker expects the wrist to end on the marker, so after the prompted run the
add-on's Refine asks for this fit (`fit_prompts`): a small 2D inverse-kinematics problem on
MHR's own parameters,

    minimise  Σ_prompted |π(k_j) - p_j|² / s²  +  w_a Σ_anchors |π(k_a) - π₀(k_a)|² / s²
              + w_θ |Δθ|² + w_t |Δt|²

where k are the 70 keypoints 3DB regresses from MHR's vertices and joints, π projects with the
photo's intrinsics K (the projection the add-on's camera uses), s is the person's box size, the
anchors are the body keypoints the user did not prompt and that do not hang from a prompted one
(held where the prompted run put them), Δθ the change of the body's Euler parameters and Δt of
the camera translation. Hands, jaw, shape and the 68 bone scales stay as predicted (the hand
PCA coefficients must stay valid), so the rest skeleton and proportions do not change: only
the pose does.

Only the few vertices the keypoint regressor reads are skinned (96 of the fixture's 595, a few
hundred of real LOD1's 18,439), which makes each L-BFGS step cheap on any device.
This fit is ours, not the official pipeline: the server applies it only when asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from server.mhr.forward import NUM_MODEL_PARAMS, NUM_POSE_PARAMS, MHRBody
from server.models.rotations import unitquat_to_rotmat

NUM_KEYPOINTS = 70
# Body keypoints (nose, eyes, ears, shoulders, elbows, hips, knees, ankles, feet, both wrists,
# neck) held in place unless prompted; hand and face points follow their joints.
ANCHORS: tuple[int, ...] = tuple(range(21)) + (41, 62, 69)
# The anchor keypoint each anchor hangs from (-1: the trunk). Dragging a keypoint carries what
# hangs from it (drag the knee and the ankle and foot swing with it), so those are not held;
# to pin them too, prompt them as well.
ANCHOR_PARENT: dict[int, int] = {
    0: 69, 1: 0, 2: 0, 3: 0, 4: 0, 69: -1,              # head from the neck
    5: -1, 6: -1, 7: 5, 8: 6, 62: 7, 41: 8,              # shoulder, elbow, wrist
    9: -1, 10: -1, 11: 9, 12: 10, 13: 11, 14: 12,        # hip, knee, ankle
    15: 13, 16: 13, 17: 13, 18: 14, 19: 14, 20: 14,      # toes and heel from the ankle
}


def held_anchors(prompted: set[int]) -> list[int]:
    """Anchors neither prompted nor hanging (through any chain) from a prompted keypoint."""
    def carried(k: int) -> bool:
        while k != -1:
            if k in prompted:
                return True
            k = ANCHOR_PARENT[k]
        return False

    return [a for a in ANCHORS if not carried(a)]
ROOT_TRANSLATION = slice(0, 3)  # MHR's global translation: 3DB keeps it 0 and moves the camera
JAW = slice(133, 136)


@dataclass(frozen=True)
class FitOptions:
    anchor_weight: float = 0.25  # relative to a prompted keypoint
    pose_prior: float = 1e-4     # per squared radian of change
    translation_prior: float = 1e-3  # per squared metre of camera translation change
    max_iterations: int = 60


@dataclass
class FitReport:
    """Per prompt (grouped by person): person, label, pixel error before and after the fit."""

    person: list[int] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    before_px: list[float] = field(default_factory=list)
    after_px: list[float] = field(default_factory=list)
    anchor_drift_px: list[float] = field(default_factory=list)  # max over anchors, per person fit

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {
            "fit_prompt_person": np.asarray(self.person, dtype=np.int32),
            "fit_prompt_label": np.asarray(self.label, dtype=np.int32),
            "fit_error_before_px": np.asarray(self.before_px, dtype=np.float32),
            "fit_error_after_px": np.asarray(self.after_px, dtype=np.float32),
        }


class KeypointModel:
    """Differentiable 70 keypoints (metres, OpenCV camera axes, model origin) of MHR parameters."""

    def __init__(self, mhr: Any, keypoint_mapping: torch.Tensor) -> None:
        body = mhr if isinstance(mhr, MHRBody) else MHRBody.from_torchscript(mhr)
        mapping = keypoint_mapping[:NUM_KEYPOINTS].detach().to(body.device, torch.float32)
        n_verts = body.num_vertices
        if mapping.shape[1] != n_verts + body.num_joints:
            raise ValueError(f"keypoint_mapping has {mapping.shape[1]} columns for an MHR with "
                             f"{n_verts} vertices and {body.num_joints} joints")
        used = torch.nonzero(mapping.abs().sum(0) > 0).flatten()
        self.vertex_ids = used[used < n_verts]
        self.joint_ids = used[used >= n_verts] - n_verts
        self.body = body.restricted_to(self.vertex_ids)
        self.mapping = mapping[:, used].double()  # columns: used vertices, then used joints

    def keypoints(self, model_params: torch.Tensor, shape: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        verts, skel = self.body(shape, model_params, expr, precision="float64")
        points = torch.cat([verts.double(), skel[..., self.joint_ids, :3].double()], dim=1) / 100.0
        kp = torch.einsum("kc,bcd->bkd", self.mapping, points)
        # MHR (y up, z to the viewer) -> OpenCV camera axes, as the pose head does.
        return kp * kp.new_tensor([1.0, -1.0, -1.0])


def keypoint_model(model: Any) -> KeypointModel:
    """The (cached) KeypointModel of a SAM3DBody's body head."""
    head = model.head_pose
    cached = head.__dict__.get("_keypoint_fit_model")
    if cached is None:
        with torch.inference_mode(False):  # cached tensors must be usable by autograd later
            cached = KeypointModel(head.mhr, head.keypoint_mapping)
        head.__dict__["_keypoint_fit_model"] = cached
    return cached


def free_parameters(head: Any) -> torch.Tensor:
    """Indices of the 204 model parameters the fit may change: root rotation and body pose,
    without the root translation, the jaw, the hands (PCA-driven) and the scales."""
    free = torch.zeros(NUM_MODEL_PARAMS, dtype=torch.bool)
    free[:NUM_POSE_PARAMS] = True
    free[ROOT_TRANSLATION] = False
    free[JAW] = False
    for idxs in (head.hand_joint_idxs_left, head.hand_joint_idxs_right):
        free[idxs.detach().cpu().long()] = False
    return torch.nonzero(free).flatten()


def project(points: torch.Tensor, cam_t: torch.Tensor, cam_int: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (B, N, 3) relative to the model + translation (B, 3) -> pixels."""
    p = points + cam_t[:, None]
    uv = p[..., :2] / p[..., 2:3]
    return uv * torch.stack([cam_int[0, 0], cam_int[1, 1]]) + torch.stack([cam_int[0, 2], cam_int[1, 2]])


def fit_person(kp_model: KeypointModel, free: torch.Tensor, model_params: np.ndarray, shape: np.ndarray,
               expr: np.ndarray, cam_t: np.ndarray, cam_int: np.ndarray, box_size: float,
               targets: Sequence[tuple[int, float, float]],
               options: FitOptions = FitOptions()) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit one person. `targets` = (label, x, y) in pixels. Returns (model_params (204,),
    cam_t (3,), info with per-target errors before/after and the largest anchor drift)."""
    dev = kp_model.body.device
    as64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=dev)  # noqa: E731
    params0, t0 = as64(model_params)[None], as64(cam_t)[None]
    shape_t, expr_t = as64(shape)[None].float(), as64(expr)[None].float()
    k = as64(cam_int).reshape(3, 3)
    labels = torch.as_tensor([t[0] for t in targets], device=dev)
    goal = as64([[t[1], t[2]] for t in targets])
    anchors = torch.as_tensor(held_anchors(set(labels.tolist())), dtype=torch.long, device=dev)
    free = free.to(dev)
    scale = float(box_size) if box_size > 0 else 1.0

    def pixels(params: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        return project(kp_model.keypoints(params.float(), shape_t, expr_t), trans, k)[0]

    with torch.no_grad():
        start = pixels(params0, t0)
    held = start[anchors]
    delta = torch.zeros(len(free), dtype=torch.float64, device=dev, requires_grad=True)
    dt = torch.zeros(3, dtype=torch.float64, device=dev, requires_grad=True)

    def params_of(d: torch.Tensor) -> torch.Tensor:
        return params0.index_add(1, free, d[None])

    def loss_fn() -> torch.Tensor:
        px = pixels(params_of(delta), t0 + dt)
        loss = ((px[labels] - goal) / scale).pow(2).sum()
        loss = loss + options.anchor_weight * ((px[anchors] - held) / scale).pow(2).sum()
        return loss + options.pose_prior * delta.pow(2).sum() + options.translation_prior * dt.pow(2).sum()

    optimizer = torch.optim.LBFGS([delta, dt], lr=1.0, max_iter=options.max_iterations,
                                  tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        params = params_of(delta)
        trans = t0 + dt
        end = pixels(params, trans)
        if not (torch.isfinite(params).all() and torch.isfinite(end).all()):
            params, trans, end = params0, t0, start  # never hand back a broken pose
    info = {
        "before_px": torch.linalg.vector_norm(start[labels] - goal, dim=-1).tolist(),
        "after_px": torch.linalg.vector_norm(end[labels] - goal, dim=-1).tolist(),
        "anchor_drift_px": float(torch.linalg.vector_norm(end[anchors] - held, dim=-1).max())
        if len(anchors) else 0.0,
    }
    return params[0].cpu().numpy().astype(np.float32), trans[0].cpu().numpy().astype(np.float32), info


def refit_outputs(model: Any, out: dict[str, np.ndarray], person: int, params: np.ndarray,
                  cam_t: np.ndarray, cam_int: np.ndarray) -> None:
    """Write person `person`'s fitted parameters into the stacked outputs (in place) and redo
    every output that depends on them with the engine's own MHR (vertices, keypoints, joints,
    global rotations, 2D keypoints through K)."""
    head = model.head_pose
    p = torch.as_tensor(params, dtype=torch.float32)[None]
    shape = torch.as_tensor(out["shape_params"][person], dtype=torch.float32)[None]
    expr = torch.as_tensor(out["expr_params"][person], dtype=torch.float32)[None]
    verts_cm, skel = head._run_mhr(shape, p, expr)
    verts, joints = verts_cm.double() / 100.0, skel[..., :3].double() / 100.0
    mapping = head.keypoint_mapping[:NUM_KEYPOINTS].detach().cpu().double()
    kp3d = torch.einsum("kc,bcd->bkd", mapping, torch.cat([verts, joints], dim=1).cpu())
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    kp3d, verts, joints = kp3d * flip, verts.cpu() * flip, joints.cpu() * flip
    t = torch.as_tensor(cam_t, dtype=torch.float64)[None]
    k = torch.as_tensor(np.asarray(cam_int, dtype=np.float64)).reshape(3, 3)
    kp2d = project(kp3d, t, k)
    out["mhr_model_params"][person] = params
    out["global_rot"][person] = params[3:6]
    out["body_pose_params"][person, :130] = params[6:NUM_POSE_PARAMS]
    out["pred_cam_t"][person] = cam_t
    out["pred_vertices"][person] = verts[0].numpy()
    out["pred_keypoints_3d"][person] = kp3d[0].numpy()
    out["pred_joint_coords"][person] = joints[0].numpy()
    out["pred_global_rots"][person] = unitquat_to_rotmat(skel[0, :, 3:7].cpu().float()).numpy()
    out["pred_keypoints_2d"][person] = kp2d[0].numpy()


def fit_outputs(model: Any, out: dict[str, np.ndarray], prompts: Sequence[tuple[float, float, int, int]],
                cam_int: np.ndarray, options: FitOptions = FitOptions()) -> FitReport:
    """Fit every prompted person of stacked outputs `out` (in place) to its prompts
    (x, y, label, person) in full-image pixels; prompts labelled -1 ("not a point") are skipped."""
    report = FitReport()
    by_person: dict[int, list[tuple[int, float, float]]] = {}
    for x, y, label, person in prompts:
        if label >= 0:
            by_person.setdefault(int(person), []).append((int(label), float(x), float(y)))
    if not by_person:
        return report
    kp_model = keypoint_model(model)
    # The engine runs under inference_mode; tensors the backward pass keeps must be made outside.
    with torch.inference_mode(False), torch.enable_grad():
        free = free_parameters(model.head_pose)
        for person, targets in sorted(by_person.items()):
            box = np.asarray(out["bbox"][person], dtype=np.float64)
            params, cam_t, info = fit_person(
                kp_model, free, out["mhr_model_params"][person], out["shape_params"][person],
                out["expr_params"][person], out["pred_cam_t"][person], cam_int,
                max(box[2] - box[0], box[3] - box[1]), targets, options)
            with torch.no_grad():
                refit_outputs(model, out, person, params, cam_t, cam_int)
            for (label, _, _), before, after in zip(targets, info["before_px"], info["after_px"]):
                report.person.append(person)
                report.label.append(label)
                report.before_px.append(before)
                report.after_px.append(after)
            report.anchor_drift_px.append(info["anchor_drift_px"])
    return report
