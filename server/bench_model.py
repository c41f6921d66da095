"""Full-size SAM 3D Body with random weights, for benchmarks without the gated checkpoints.

The architecture is the released one (reference/sam3d-body.md §2.2: DINOv3 ViT-H+/16 840M or
ViT-H/16 631M backbone, 1024-d 6-layer decoders, MHR/camera heads with 2-layer MLPs); MHR is
the LOD1 stand-in (18,439 vertices, the real mesh size). Weights are PyTorch's default random
init, except what a benchmark needs to be representative:

* rig constants, learned initial estimates and hand-PCA basis come from the tiny parity
  checkpoint (same skeleton and parameter layout as every stand-in); its 308 keypoint rows are
  moved from the small stand-in mesh to the nearest LOD1 vertices;
* the last Linear of every pose/camera head is scaled down (x0.1), so that the random
  predictions stay near the initial estimate (a person in front of the camera, as trained
  weights give) instead of poses and cameras that leave the image.

The numbers this model produces mean nothing; its shapes and its costs are the real ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("dinov3", "vith")
_SHARED = Path(os.environ.get("SAM3D_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DEFAULT_STANDIN = _SHARED / "fixtures" / "mhr-standin" / "mhr_standin_lod1.pt"
DEFAULT_RIG_SOURCE = _SHARED / "fixtures" / "parity" / "checkpoints" / "dinov3_tiny" / "model.ckpt"
HEAD_OUTPUT_SCALE = 0.1
# Buffers whose sizes do not depend on the mesh: copied from the rig source as they are.
_RIG_KEYS = ("joint_rotation", "scale_mean", "scale_comps", "hand_pose_mean", "hand_pose_comps",
             "hand_pose_comps_ori", "hand_joint_idxs_left", "hand_joint_idxs_right", "right_wrist_coords",
             "root_coords", "local_to_world_wrist", "nonhand_param_idxs")
_INIT_KEYS = ("init_pose.weight", "init_pose_hand.weight", "init_camera.weight", "init_camera_hand.weight")


def full_size_config(variant: str, mhr_path: str | os.PathLike) -> dict[str, Any]:
    """The released `model_config.yaml` values (reference §2.2) for `variant` dinov3 | vith."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    backbone = "dinov3_vith16plus" if variant == "dinov3" else "vit_hmr_512_384"
    return {
        "TRAIN": {"USE_FP16": variant == "dinov3", "FP16_TYPE": "float16"},
        "MODEL": {
            "IMAGE_SIZE": [512, 512],
            "IMAGE_MEAN": [0.485, 0.456, 0.406],
            "IMAGE_STD": [0.229, 0.224, 0.225],
            "BACKBONE": {"TYPE": backbone, "PRETRAINED_WEIGHTS": "", "FROZEN_STAGES": -1, "DROP_PATH_RATE": 0.1},
            "DECODER": {
                "TYPE": "sam", "DIM": 1024, "DEPTH": 6, "HEADS": 8, "MLP_DIM": 1024, "DIM_HEAD": 64,
                "LAYER_SCALE_INIT": 0.0, "DROP_RATE": 0.0, "ATTN_DROP_RATE": 0.0, "DROP_PATH_RATE": 0.0,
                "FFN_TYPE": "origin", "ENABLE_TWOWAY": False, "REPEAT_PE": True, "FROZEN": False,
                "CONDITION_TYPE": "cliff", "USE_INTRIN_CENTER": True, "DO_INTERM_PREDS": True,
                "DO_INTERM_SUP": True, "DO_KEYPOINT_TOKENS": True, "DO_HAND_DETECT_TOKENS": True,
                "KEYPOINT_TOKEN_UPDATE": "v2", "KEYPOINT_TOKEN_UPDATE_COORD_EMB_USE_MLP": True,
                "DO_KEYPOINT3D_TOKENS": True,
            },
            "PROMPT_ENCODER": {"ENABLE": True, "MAX_NUM_CLICKS": 2, "PROMPT_KEYPOINTS": "mhr70", "FROZEN": False,
                               "MASK_EMBED_TYPE": "v2", "MASK_PROMPT": "v1"},
            "PERSON_HEAD": {"POSE_TYPE": "mhr", "CAMERA_ENABLE": True, "CAMERA_TYPE": "perspective",
                            "ZERO_POSE_INIT": True, "ZERO_POSE_INIT_BODY_FACTOR": 1},
            "MHR_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1, "MHR_MODEL_PATH": str(mhr_path)},
            "CAMERA_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1, "DEFAULT_SCALE_FACTOR_HAND": 10},
            "ENABLE_BODY": True,
            "ENABLE_HAND": True,
        },
    }


def _rest_vertices(mhr: torch.nn.Module) -> torch.Tensor:
    return mhr.character_torch.blend_shape.base_shape.detach().float().cpu()


def _transfer_keypoint_mapping(small: torch.Tensor, small_rest: torch.Tensor, big_rest: torch.Tensor) -> torch.Tensor:
    """(308, Vs+127) rows on the small mesh -> (308, Vb+127): each vertex weight moves to the
    LOD1 vertex nearest to that small-mesh vertex (both meshes share the rest pose)."""
    n_small, n_big = small_rest.shape[0], big_rest.shape[0]
    nearest = torch.cdist(small_rest, big_rest).argmin(dim=1)  # (Vs,)
    out = torch.zeros(small.shape[0], n_big + small.shape[1] - n_small)
    out.index_add_(1, nearest, small[:, :n_small])
    out[:, n_big:] = small[:, n_small:]
    return out


def build_random_full_model(variant: str, mhr_path: str | os.PathLike | None = None,
                            rig_source: str | os.PathLike | None = None, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """(model on the CPU in eval mode, its config). Raises FileNotFoundError without fixtures."""
    from server.mhr.torchscript import load_mhr
    from server.models.build import build_sam3d_body

    mhr_path = Path(mhr_path or DEFAULT_STANDIN)
    rig_source = Path(rig_source or DEFAULT_RIG_SOURCE)
    for path, what in ((mhr_path, "LOD1 MHR stand-in"), (rig_source, "tiny parity checkpoint (rig constants)")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found at {path}; set SAM3D_SHARED to the folder holding fixtures/")
    cfg = full_size_config(variant, mhr_path)
    torch.manual_seed(seed)
    model = build_sam3d_body(cfg, str(mhr_path))
    rig = torch.load(rig_source, map_location="cpu", weights_only=True)["state_dict"]
    small_mhr = load_mhr(rig_source.parent / "assets" / "mhr_model.pt", "cpu")
    mapping = _transfer_keypoint_mapping(rig["head_pose.keypoint_mapping"], _rest_vertices(small_mhr),
                                         _rest_vertices(model.head_pose.mhr))
    faces = model.head_pose.mhr.character_torch.mesh.faces.detach().long().cpu()
    with torch.no_grad():
        for head in ("head_pose", "head_pose_hand"):
            module = getattr(model, head)
            for key in _RIG_KEYS:
                getattr(module, key).data = rig[f"head_pose.{key}"].clone()
            module.keypoint_mapping.data = mapping.clone()
            module.faces.data = faces.clone()
        for key in _INIT_KEYS:
            model.get_parameter(key).data = rig[key].clone()
        for head in (model.head_pose, model.head_pose_hand, model.head_camera, model.head_camera_hand):
            last = head.proj.layers[-2] if isinstance(head.proj.layers[-1], torch.nn.Dropout) else head.proj.layers[-1]
            last.weight.mul_(HEAD_OUTPUT_SCALE)
            last.bias.zero_()
    return model.eval(), cfg
