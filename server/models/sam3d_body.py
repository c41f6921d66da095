"""SAM 3D Body: the nn.Module whose ``state_dict()`` keys equal the official checkpoints'.

Mirrors the official ``SAM3DBody`` (sam_3d_body/models/meta_arch/sam3d_body.py at b5c765a):
same submodule names and construction order, and the inference semantics of ``forward_step``,
``forward_decoder`` / ``forward_decoder_hand``, ``run_keypoint_prompt``, ``_get_hand_box``,
``get_ray_condition``, ``_get_mask_prompt``, ``_get_decoder_condition`` and ``_full_to_crop``.
``run_inference`` (body/full, hand merge, IK) lives in ``server/pipeline/inference.py``.

Batch dict (one image, N persons; the official ``prepare_batch`` layout), B = images (1):
  img (B,N,3,H,W) RGB in [0,1] (crop, H=W=512), mask (B,N,1,H,W) warped mask (any scale),
  mask_score (B,N), bbox (B,N,4) xyxy, bbox_center (B,N,2) px, bbox_scale (B,N,2) square crop side
  px, affine_trans (B,N,2,3) full->crop, ori_img_size (B,N,2) (W,H), img_size (B,N,2) (512,512),
  cam_int (B,3,3) full-image intrinsics, person_valid (B,N). All float32.
Persons are flattened to a batch of B*N crops ("BN" below) for every model computation.

Debugging/parity: set ``model.capture = {}`` and every stage's tensor is stored there under the
parity-fixture names (``condition``, ``ray_ds``, ``raycond``, ``image_pe``, ``L<l>.tokens_in``,
``L<l>.<pose key>``, ...) for the last pass run; leave it ``None`` in production.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from .camera_encoder import CameraEncoder, get_ray_condition as _ray_map
from .decoder import PromptableDecoder, update_keypoint_tokens
from .layers import FFN, MLP
from .prompt_encoder import LABEL_INVALID, PositionEmbeddingRandom, PromptEncoder
from server.profiling import stage

NUM_KEYPOINTS = 70  # mhr70
CONDITION_DIM = 3  # CLIFF (cx/f, cy/f, side/f)
_REQUIRED_BATCH = {
    "img": 5, "bbox_center": 3, "bbox_scale": 3, "affine_trans": 4, "ori_img_size": 3, "img_size": 3,
    "cam_int": 3,
}


@dataclass(frozen=True)
class _Branch:
    """The modules of one decoder branch (body or hand); plain references, not registered."""

    kind: str
    decoder: PromptableDecoder
    head_pose: nn.Module
    head_camera: nn.Module
    init_pose: nn.Embedding
    init_camera: nn.Embedding
    init_to_token: nn.Linear
    prev_to_token: nn.Linear
    ray_cond_emb: CameraEncoder
    keypoint_embedding: nn.Embedding
    keypoint3d_embedding: nn.Embedding
    keypoint_posemb_linear: FFN
    keypoint3d_posemb_linear: FFN
    keypoint_feat_linear: nn.Linear
    ray_key: str


class SAM3DBody(nn.Module):
    """The official SAM 3D Body network (backbone, body and hand decoders, MHR/camera heads).

    Args:
        cfg: ``yaml.safe_load`` of ``model_config.yaml`` (validated by ``build.build_sam3d_body``).
        mhr_path: path of ``assets/mhr_model.pt`` given to both MHR heads (None: the config's
            ``MODEL.MHR_HEAD.MHR_MODEL_PATH``).
    """

    def __init__(self, cfg: Mapping[str, Any], mhr_path: str | None = None) -> None:
        super().__init__()
        from server.models.backbones import backbone_dtype, build_backbone, set_official_precision
        from server.models.camera_head import PerspectiveHead
        from server.models.mhr_head import MHRHead

        self.cfg = cfg
        m = cfg["MODEL"]
        dec = m["DECODER"]
        pe_cfg = m.get("PROMPT_ENCODER", {})
        dim = int(dec["DIM"])
        mhr_path = mhr_path if mhr_path is not None else m.get("MHR_HEAD", {}).get("MHR_MODEL_PATH")
        self.image_size = tuple(int(v) for v in m["IMAGE_SIZE"])
        self.use_intrin_center = bool(dec.get("USE_INTRIN_CENTER", False))
        self.condition_type = dec.get("CONDITION_TYPE", "cliff")
        self.do_hand_detect_tokens = bool(dec.get("DO_HAND_DETECT_TOKENS", False))
        self.do_keypoint3d_tokens = bool(dec.get("DO_KEYPOINT3D_TOKENS", False))
        self.capture: dict[str, torch.Tensor] | None = None

        self.register_buffer("image_mean", torch.tensor(m["IMAGE_MEAN"], dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(m["IMAGE_STD"], dtype=torch.float32).view(-1, 1, 1), False)

        self.backbone = build_backbone(m["BACKBONE"])
        embed = int(self.backbone.embed_dim)
        patch = int(self.backbone.patch_size)
        self._set_column_geometry(self.backbone.input_columns, patch)

        mhr_cfg = m.get("MHR_HEAD", {})
        cam_cfg = m.get("CAMERA_HEAD", {})

        def mhr_head(hand: bool, shared_mhr: nn.Module | None) -> nn.Module:
            head = MHRHead(
                input_dim=dim,
                mlp_depth=int(mhr_cfg.get("MLP_DEPTH", 1)),
                mlp_channel_div_factor=int(mhr_cfg.get("MLP_CHANNEL_DIV_FACTOR", 1)),
                enable_hand_model=hand,
                mhr_model_path=mhr_path or "",
                mhr=shared_mhr,
            )
            # Official quirk: the PCA basis is copied to `hand_pose_comps_ori` and replaced by the
            # identity BEFORE loading, so whatever the checkpoint stores in `hand_pose_comps` wins.
            if not hasattr(head, "hand_pose_comps_ori"):
                head.hand_pose_comps_ori = nn.Parameter(head.hand_pose_comps.detach().clone(), requires_grad=False)
            head.hand_pose_comps.data = torch.eye(54).to(head.hand_pose_comps.data).float()
            return head

        def camera_head(scale_factor: float) -> nn.Module:
            return PerspectiveHead(
                input_dim=dim,
                img_size=self.image_size,
                mlp_depth=int(cam_cfg.get("MLP_DEPTH", 1)),
                mlp_channel_div_factor=int(cam_cfg.get("MLP_CHANNEL_DIV_FACTOR", 1)),
                default_scale_factor=scale_factor,
            )

        if not mhr_path:
            raise ValueError("no MHR model: pass mhr_path (assets/mhr_model.pt) or set MODEL.MHR_HEAD.MHR_MODEL_PATH")
        self.head_pose = mhr_head(hand=False, shared_mhr=None)
        npose = int(getattr(self.head_pose, "npose", 519))
        self.init_pose = nn.Embedding(1, npose)
        # One TorchScript MHR shared by both heads (the official code loads it twice; it is
        # stateless at inference, so sharing changes nothing but memory).
        self.head_pose_hand = mhr_head(hand=True, shared_mhr=self.head_pose.mhr)
        self.init_pose_hand = nn.Embedding(1, npose)
        self.head_camera = camera_head(1.0)
        ncam = int(getattr(self.head_camera, "ncam", 3))
        self.init_camera = nn.Embedding(1, ncam)
        nn.init.zeros_(self.init_camera.weight)
        self.head_camera_hand = camera_head(float(cam_cfg.get("DEFAULT_SCALE_FACTOR_HAND", 1.0)))
        self.init_camera_hand = nn.Embedding(1, ncam)
        nn.init.zeros_(self.init_camera_hand.weight)

        init_dim = npose + ncam + CONDITION_DIM
        self.init_to_token_mhr = nn.Linear(init_dim, dim)
        self.prev_to_token_mhr = nn.Linear(init_dim - CONDITION_DIM, dim)
        self.init_to_token_mhr_hand = nn.Linear(init_dim, dim)
        self.prev_to_token_mhr_hand = nn.Linear(init_dim - CONDITION_DIM, dim)

        self.prompt_encoder = PromptEncoder(embed, NUM_KEYPOINTS, mask_embed_type=pe_cfg.get("MASK_EMBED_TYPE"))
        self.prompt_to_token = nn.Linear(embed, dim)

        def decoder() -> PromptableDecoder:
            return PromptableDecoder(
                dims=dim,
                context_dims=embed,
                depth=int(dec["DEPTH"]),
                num_heads=int(dec["HEADS"]),
                head_dims=int(dec["DIM_HEAD"]),
                mlp_dims=int(dec["MLP_DIM"]),
                repeat_pe=bool(dec.get("REPEAT_PE", False)),
                do_interm_preds=bool(dec.get("DO_INTERM_PREDS", False)),
                keypoint_token_update=bool(dec.get("KEYPOINT_TOKEN_UPDATE")),
            )

        self.decoder = decoder()
        self.decoder_hand = decoder()
        self.hand_pe_layer = PositionEmbeddingRandom(embed // 2)

        # Official USE_FP16: the backbone (only) runs in reduced precision, set before loading.
        self.backbone_dtype = backbone_dtype(cfg.get("TRAIN"))
        if self.backbone_dtype != torch.float32:
            set_official_precision(self.backbone, self.backbone_dtype)

        self.ray_cond_emb = CameraEncoder(embed, patch)
        self.ray_cond_emb_hand = CameraEncoder(embed, patch)
        self.keypoint_embedding = nn.Embedding(NUM_KEYPOINTS, dim)
        self.keypoint_embedding_hand = nn.Embedding(NUM_KEYPOINTS, dim)
        if self.do_hand_detect_tokens:
            self.hand_box_embedding = nn.Embedding(2, dim)
            self.hand_cls_embed = nn.Linear(dim, 2)
            self.bbox_embed = MLP(dim, dim, 4, 3)
        self.keypoint_posemb_linear = FFN(2, dim, output_dims=dim, num_fcs=2, add_identity=False)
        self.keypoint_posemb_linear_hand = FFN(2, dim, output_dims=dim, num_fcs=2, add_identity=False)
        self.keypoint_feat_linear = nn.Linear(embed, dim)
        self.keypoint_feat_linear_hand = nn.Linear(embed, dim)
        self.keypoint3d_embedding = nn.Embedding(NUM_KEYPOINTS, dim)
        self.keypoint3d_embedding_hand = nn.Embedding(NUM_KEYPOINTS, dim)
        self.keypoint3d_posemb_linear = FFN(3, dim, output_dims=dim, num_fcs=2, add_identity=False)
        self.keypoint3d_posemb_linear_hand = FFN(3, dim, output_dims=dim, num_fcs=2, add_identity=False)

        # Official bookkeeping, kept for code written against the official class.
        self.body_batch_idx: list[int] = []
        self.hand_batch_idx: list[int] = []

    # ------------------------------------------------------------------ geometry helpers

    def _set_column_geometry(self, columns: slice, patch: int) -> None:
        """ViT-H sees only the centre columns of the square crop; derive every dependent slice."""
        crop_w = int(self.image_size[1])
        start, stop, step = columns.indices(crop_w)
        if step != 1 or start % patch or stop % patch or start != crop_w - stop:
            raise ValueError(f"backbone input_columns {columns} must be a centred multiple of the patch {patch}")
        self.crop_columns = slice(start, stop)
        self.feature_columns = slice(start // patch, stop // patch)
        self.crop_grid = (int(self.image_size[0]) // patch, crop_w // patch)
        self.crops_width = start > 0

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.capture is not None and isinstance(value, torch.Tensor):
            self.capture[name] = value.detach().clone()

    @staticmethod
    def _check_batch(batch: Mapping[str, Any]) -> None:
        for key, ndim in _REQUIRED_BATCH.items():
            if key not in batch:
                raise KeyError(f"batch is missing {key!r} (see SAM3DBody docstring for the layout)")
            if not isinstance(batch[key], torch.Tensor) or batch[key].dim() != ndim:
                raise ValueError(f"batch[{key!r}] must be a {ndim}-d tensor")
        if batch["img"].shape[2] != 3:
            raise ValueError(f"batch['img'] must be (B, N, 3, H, W), got {tuple(batch['img'].shape)}")

    @staticmethod
    def _flatten_person(x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) -> (B*N, ...)."""
        return x.flatten(0, 1)

    @staticmethod
    def _person_cam_int(batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, 3, 3) image intrinsics -> (B*N, 3, 3), one copy per person."""
        n = batch["img"].shape[1]
        return batch["cam_int"].unsqueeze(1).expand(-1, n, -1, -1).flatten(0, 1)

    def _initialize_batch(self, batch: Mapping[str, Any]) -> None:
        """Official API; here it only validates the batch (person flattening is stateless)."""
        self._check_batch(batch)

    def data_preprocess(self, inputs: torch.Tensor) -> torch.Tensor:
        """(BN, 3, H, W) RGB crops -> ImageNet-normalised, centre columns for ViT-H."""
        if inputs.max() > 1 and self.image_mean.max() <= 1.0:
            inputs = inputs / 255.0  # official: uint8-range input is rescaled
        x = (inputs - self.image_mean) / self.image_std
        return x[..., self.crop_columns]

    def get_ray_condition(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Ray map of every crop pixel -> (B, N, 2, H, W), (x, y) = ((u-cx)/fx, (v-cy)/fy)."""
        _, _, _, h, w = batch["img"].shape
        return _ray_map(batch["affine_trans"], batch["cam_int"], h, w, batch["img"].dtype)

    def _get_decoder_condition(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """CLIFF condition (BN, 3) = [(cx - K02)/f, (cy - K12)/f, side/f] (image centre instead of
        K's principal point when USE_INTRIN_CENTER is false); None for CONDITION_TYPE none."""
        if self.condition_type == "none":
            return None
        if self.condition_type != "cliff":
            raise ValueError(f"unsupported DECODER.CONDITION_TYPE {self.condition_type!r}")
        cx, cy = torch.chunk(self._flatten_person(batch["bbox_center"]), chunks=2, dim=-1)
        side = self._flatten_person(batch["bbox_scale"])[:, [0]]
        cam = self._person_cam_int(batch)
        focal = cam[:, 0, 0]
        if self.use_intrin_center:
            centre = cam[:, [0, 1], [2, 2]]
        else:
            centre = self._flatten_person(batch["ori_img_size"]) / 2.0
        cond = torch.cat([cx - centre[:, [0]], cy - centre[:, [1]], side], dim=-1)
        cond[:, :2] = cond[:, :2] / focal.unsqueeze(-1)
        cond[:, 2] = cond[:, 2] / focal
        return cond.type(batch["img"].dtype)

    def _full_to_crop(self, batch: Mapping[str, Any], kp2d: torch.Tensor, batch_idx: Any = None) -> torch.Tensor:
        """Full-image px (BN, K, 2) -> crop-normalised [-0.5, 0.5] (BN, K, 2) via affine_trans."""
        homo = torch.cat([kp2d, torch.ones_like(kp2d[:, :, [-1]])], dim=-1)
        affine = self._flatten_person(batch["affine_trans"]).to(homo)
        img_size = self._flatten_person(batch["img_size"]).unsqueeze(1)
        if batch_idx is not None:
            affine, img_size = affine[batch_idx], img_size[batch_idx]
        return (homo @ affine.mT)[..., :2] / img_size - 0.5

    def _get_mask_prompt(self, batch: Mapping[str, Any], image_embeddings: torch.Tensor) -> torch.Tensor:
        """(BN, C, h, w) embedding added to the backbone features: score * mask_downscaling(mask)
        where mask_score > 0, else ``no_mask_embed``. Missing mask keys mean "no mask"."""
        bn, _, h, w = image_embeddings.shape
        no_mask = self.prompt_encoder.no_mask_embeddings(bn, (h, w)).to(image_embeddings)
        if "mask" not in batch or "mask_score" not in batch:
            return no_mask
        score = self._flatten_person(batch["mask_score"]).view(-1, 1, 1, 1)
        if not bool((score > 0).any()):
            return no_mask  # identical to the official where(); skips the mask convs
        mask_emb = self.prompt_encoder.embed_masks(self._flatten_person(batch["mask"]))
        mask_emb = mask_emb[..., self.feature_columns]
        return torch.where(score > 0, score * mask_emb.to(image_embeddings), no_mask)

    # ------------------------------------------------------------------ branches

    def _branch(self, kind: str) -> _Branch:
        if kind not in ("body", "hand"):
            raise ValueError(f"decoder_type must be 'body' or 'hand', got {kind!r}")
        sfx = "" if kind == "body" else "_hand"

        def get(name: str) -> Any:
            return getattr(self, name + sfx)

        return _Branch(
            kind, get("decoder"), get("head_pose"), get("head_camera"), get("init_pose"), get("init_camera"),
            get("init_to_token_mhr"), get("prev_to_token_mhr"), get("ray_cond_emb"), get("keypoint_embedding"),
            get("keypoint3d_embedding"), get("keypoint_posemb_linear"), get("keypoint3d_posemb_linear"),
            get("keypoint_feat_linear"), "ray_cond" + sfx,
        )

    def image_pe(self, kind: str) -> torch.Tensor:
        """Dense image PE (1, C, h, w) of the branch: prompt encoder (body) / hand_pe_layer (hand),
        computed on the square crop grid and cut to the backbone's columns (ViT-H: [4:-4])."""
        pe = self.prompt_encoder.get_dense_pe(self.crop_grid) if kind == "body" else self.hand_pe_layer(self.crop_grid)[None]
        return pe[..., self.feature_columns]

    # ------------------------------------------------------------------ decoder

    def forward_decoder(
        self,
        image_embeddings: torch.Tensor,
        init_estimate: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        prev_estimate: torch.Tensor | None = None,
        condition_info: torch.Tensor | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """Body decoder pass.

        Args:
            image_embeddings: (BN, C, h, w) backbone + mask embedding (BEFORE ray conditioning).
            init_estimate: must be None (the official code only supports the learned init).
            keypoints: (BN, K, 3) prompts (x, y in [0,1] of the crop, label; (0,0,-2) = dummy).
            prev_estimate: (BN, 1, 522) or (BN, 522) previous [pose_raw 266, shape 45, scale 28,
                hand 108, face 72, cam 3]; None -> the learned init.
            condition_info: (BN, 3) CLIFF condition (``_get_decoder_condition``).
            batch: the batch dict; needs ``ray_cond`` (set by ``forward_step``) and the crop fields.

        Returns:
            (hand-box tokens (BN, 2, D) after norm_final, [pose output dict per decoder layer]);
            the last dict is the final prediction (camera-frame metres, full-image px).
        """
        return self._forward_decoder("body", image_embeddings, init_estimate, keypoints, prev_estimate, condition_info, batch)

    def forward_decoder_hand(
        self,
        image_embeddings: torch.Tensor,
        init_estimate: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        prev_estimate: torch.Tensor | None = None,
        condition_info: torch.Tensor | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """Hand decoder pass; same contract as ``forward_decoder`` (uses ``batch['ray_cond_hand']``)."""
        return self._forward_decoder("hand", image_embeddings, init_estimate, keypoints, prev_estimate, condition_info, batch)

    def _forward_decoder(self, kind, image_embeddings, init_estimate, keypoints, prev_estimate, condition_info, batch):
        if init_estimate is not None:
            raise NotImplementedError("init_estimate other than None is not supported (nor by the official code)")
        if keypoints is None:
            raise ValueError("keypoints are required (use the dummy prompt (0, 0, -2))")
        if batch is None:
            raise ValueError("batch is required (ray map and crop geometry)")
        br = self._branch(kind)
        if br.ray_key not in batch:
            raise KeyError(f"batch[{br.ray_key!r}] missing: run forward_step first (it stores the ray map)")
        image_pe = self.image_pe(kind)
        self._record("image_pe", image_pe)
        rays = batch[br.ray_key]
        if self.capture is not None:
            self._record("ray_ds", br.ray_cond_emb.ray_encoder_input(rays))
        context = br.ray_cond_emb(image_embeddings, rays)
        self._record("raycond", context)
        return self.decode_tokens(kind, context, image_pe, keypoints, prev_estimate, condition_info, batch)

    def decode_tokens(
        self,
        kind: str,
        context: torch.Tensor,
        image_pe: torch.Tensor,
        keypoints: torch.Tensor,
        prev_estimate: torch.Tensor | None,
        condition_info: torch.Tensor | None,
        batch: Mapping[str, Any],
    ) -> tuple[torch.Tensor, list[dict]]:
        """Token assembly + decoder on ray-conditioned features ``context`` (BN, C, h, w) with the
        dense PE ``image_pe`` (1, C, h, w); the part of ``forward_decoder`` after ray conditioning."""
        br = self._branch(kind)
        tokens, augment, slots = self.initial_tokens(kind, keypoints, prev_estimate, condition_info)
        bn = tokens.shape[0]
        init_pose = br.init_pose.weight.expand(bn, -1)
        init_camera = br.init_camera.weight.expand(bn, -1)
        hand_start, kps_start, kps3d_start = slots

        last_layer = len(br.decoder.layers) - 1

        def pose_fn(normed: torch.Tensor, layer: int) -> dict:
            # Intermediate layers feed only the keypoint-token update: their (unused) projection
            # of every vertex is skipped; the last layer's output keeps the full official dict.
            out = self._tokens_to_pose_output(br, normed[:, 0], init_pose, init_camera, batch,
                                              project_vertices=layer == last_layer)
            if self.capture is not None:
                for key, value in out.items():
                    self._record(f"L{layer}.{key}", value)
            return out

        def update_fn(tok: torch.Tensor, aug: torch.Tensor, pose: dict, layer: int):
            return self._update_keypoint_tokens(br, kps_start, kps3d_start, context, tok, aug, pose)

        capture = self._record if self.capture is not None else None
        out, outputs = br.decoder(tokens, context, augment, image_pe, pose_fn, update_fn, capture)
        hand_tokens = out[:, hand_start : hand_start + 2] if self.do_hand_detect_tokens else out
        self._record("hand_tokens", hand_tokens)
        return hand_tokens, outputs

    def initial_tokens(
        self,
        kind: str,
        keypoints: torch.Tensor,
        prev_estimate: torch.Tensor | None,
        condition_info: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """Decoder input tokens and token augments (BN, T, D), T = 2 + K + [2] + 70 + [70], and the
        start indices (hand-box tokens, 2D keypoint tokens, 3D keypoint tokens)."""
        br = self._branch(kind)
        bn = keypoints.shape[0]
        init_estimate = torch.cat([br.init_pose.weight.expand(bn, -1), br.init_camera.weight.expand(bn, -1)], dim=-1)
        init_estimate = init_estimate.unsqueeze(1)
        init_input = init_estimate
        if condition_info is not None:
            init_input = torch.cat([condition_info.view(bn, 1, -1), init_estimate], dim=-1)
        pose_token = br.init_to_token(init_input).view(bn, 1, -1)
        prev = init_estimate if prev_estimate is None else prev_estimate
        prev_token = br.prev_to_token(prev).view(bn, 1, -1)

        self._record("prompt_points", keypoints)
        prompt_emb, _ = self.prompt_encoder(keypoints)
        self._record("prompt_embed", prompt_emb)
        prompt_tokens = self.prompt_to_token(prompt_emb)

        # Token order: pose, previous estimate, K prompts, [2 hand boxes], 70 kp2d, [70 kp3d].
        parts = [pose_token, prev_token, prompt_tokens]
        hand_start = 2 + prompt_tokens.shape[1]
        if self.do_hand_detect_tokens:
            parts.append(self.hand_box_embedding.weight[None].repeat(bn, 1, 1))
        kps_start = sum(p.shape[1] for p in parts)
        parts.append(br.keypoint_embedding.weight[None].repeat(bn, 1, 1))
        kps3d_start = kps_start + NUM_KEYPOINTS
        if self.do_keypoint3d_tokens:
            parts.append(br.keypoint3d_embedding.weight[None].repeat(bn, 1, 1))
        tokens = torch.cat(parts, dim=1)
        # Only the previous-estimate and prompt tokens carry an augment ("PE") at the start.
        augment = torch.zeros_like(tokens)
        augment[:, 1:2] = prev_token
        augment[:, 2:hand_start] = prompt_tokens
        return tokens, augment, (hand_start, kps_start, kps3d_start)

    def _tokens_to_pose_output(self, br: _Branch, pose_token, init_pose, init_camera, batch,
                               project_vertices: bool = True) -> dict:
        """Pose token (BN, D) -> head outputs (every layer is a residual on the learned init),
        camera projection and crop-normalised 2D keypoints."""
        head = br.head_pose
        out = head(pose_token, init_pose,
                   keypoints_only=not project_vertices and head.intermediate_keypoints_only)
        out["pred_cam"] = br.head_camera(pose_token, init_camera)
        self._camera_project(br.head_camera, out, batch, project_vertices)
        out["pred_keypoints_2d_cropped"] = self._full_to_crop(batch, out["pred_keypoints_2d"])
        return out

    def _camera_project(self, head_camera: nn.Module, pose_output: dict, batch: Mapping[str, Any],
                        project_vertices: bool = True) -> dict:
        """Adds pred_keypoints_2d (full K, px), pred_cam_t, focal_length, pred_keypoints_2d_depth
        (and pred_keypoints_2d_verts when vertices are present) to ``pose_output``."""
        args = (
            self._flatten_person(batch["bbox_center"]),
            self._flatten_person(batch["bbox_scale"])[:, 0],
            self._flatten_person(batch["ori_img_size"]),
            self._person_cam_int(batch),
        )
        pred_cam = pose_output["pred_cam"]
        cam_out = head_camera.perspective_projection(
            pose_output["pred_keypoints_3d"], pred_cam, *args, use_intrin_center=self.use_intrin_center
        )
        if project_vertices and pose_output.get("pred_vertices") is not None:
            verts_out = head_camera.perspective_projection(
                pose_output["pred_vertices"], pred_cam, *args, use_intrin_center=self.use_intrin_center
            )
            pose_output["pred_keypoints_2d_verts"] = verts_out["pred_keypoints_2d"]
        pose_output.update(cam_out)
        return pose_output

    def _update_keypoint_tokens(self, br: _Branch, kps_start, kps3d_start, context, tokens, augment, pose):
        """Official keypoint_token_update_fn + keypoint3d_token_update_fn (see decoder.py)."""
        return update_keypoint_tokens(
            tokens, augment, context, pose, kps_start, kps3d_start if self.do_keypoint3d_tokens else None,
            br.keypoint_posemb_linear, br.keypoint_feat_linear, br.keypoint3d_posemb_linear,
            full_width_cells=self.crop_grid[1] if self.crops_width else None,
        )

    # ------------------------------------------------------------------ passes

    def forward_step(self, batch: dict, decoder_type: str = "body") -> dict:
        """One pass of backbone + decoder over all persons of ``batch`` (layout: module docstring).

        decoder_type "body" (body crops) or "hand" (hand crops, treated as right hands). Stores
        the ray map in ``batch['ray_cond']`` / ``batch['ray_cond_hand']`` (needed again by
        ``run_keypoint_prompt``). Returns the official output dict:
          ``mhr`` (body) / ``mhr_hand`` (hand): last-layer pose output (the other key is None) with
              pred_pose_raw (BN,266), pred_cam (BN,3), global_rot (BN,3), body_pose (BN,133),
              shape (BN,45), scale (BN,28), hand (BN,108), face (BN,72), pred_keypoints_3d
              (BN,70,3) m camera axes, pred_vertices (BN,V,3) m, pred_joint_coords (BN,127,3),
              joint_global_rots (BN,127,3,3), mhr_model_params (BN,204), pred_keypoints_2d (BN,70,2)
              full-image px, pred_keypoints_2d_cropped (BN,70,2) in [-0.5,0.5], pred_keypoints_2d_depth
              (BN,70), pred_cam_t (BN,3), focal_length (BN,), hand_box (BN,2,4) sigmoid (cx,cy,w,h) of
              the crop [left, right], hand_logits (BN,2,2);
          ``condition_info`` (BN,3); ``image_embeddings`` (BN,C,h,w) backbone + mask embedding.
        """
        self._check_batch(batch)
        bn = batch["img"].shape[0] * batch["img"].shape[1]
        if decoder_type == "body":
            self.body_batch_idx, self.hand_batch_idx = list(range(bn)), []
        elif decoder_type == "hand":
            self.body_batch_idx, self.hand_batch_idx = [], list(range(bn))
        else:
            raise ValueError(f"decoder_type must be 'body' or 'hand', got {decoder_type!r}")
        return self.forward_pose_branch(batch, decoder_type)

    def forward_pose_branch(self, batch: dict, decoder_type: str = "body") -> dict:
        """Body of ``forward_step`` (see there)."""
        x = self.data_preprocess(self._flatten_person(batch["img"]))
        rays = self._flatten_person(self.get_ray_condition(batch))[..., self.crop_columns]
        batch["ray_cond" if decoder_type == "body" else "ray_cond_hand"] = rays.clone()

        with stage("backbone"):
            feats = self.backbone(x)
        if isinstance(feats, tuple):
            feats = feats[-1]
        feats = feats.type(x.dtype)
        self._record("backbone", feats)
        mask_emb = self._get_mask_prompt(batch, feats)
        self._record("mask_embed", mask_emb)
        feats = feats + mask_emb
        condition = self._get_decoder_condition(batch)
        self._record("condition", condition)

        dummy = torch.zeros((x.shape[0], 1, 3), dtype=batch["img"].dtype, device=x.device)
        dummy[:, :, -1] = LABEL_INVALID
        forward = self.forward_decoder if decoder_type == "body" else self.forward_decoder_hand
        with stage("decoder"):
            hand_tokens, outputs = forward(feats, None, dummy, None, condition, batch)
        pose = outputs[-1]
        if self.do_hand_detect_tokens:
            pose["hand_box"] = self.bbox_embed(hand_tokens).sigmoid()
            pose["hand_logits"] = self.hand_cls_embed(hand_tokens)
        key = "mhr" if decoder_type == "body" else "mhr_hand"
        return {
            "mhr": pose if key == "mhr" else None,
            "mhr_hand": pose if key == "mhr_hand" else None,
            "condition_info": condition,
            "image_embeddings": feats,
        }

    def run_keypoint_prompt(self, batch: dict, output: dict, keypoint_prompt: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Re-run the body decoder with keypoint prompts, starting from a previous body pass.

        Args:
            batch: the body batch given to ``forward_step(batch, "body")`` (holds ``ray_cond``).
            output: that pass's output dict (uses image_embeddings, condition_info and ``mhr``).
            keypoint_prompt: (BN, K, 3) (x, y in [0,1] of the body crop, label 0..69 / -1 / -2).

        Returns (output with ``mhr`` replaced by the last layer's new pose output, keypoint_prompt).
        The hand_box / hand_logits of the new ``mhr`` are not recomputed (as in the official code).
        """
        pose = output["mhr"]
        prev = torch.cat(
            [pose["pred_pose_raw"], pose["shape"], pose["scale"], pose["hand"], pose["face"], pose["pred_cam"]], dim=1
        ).detach().unsqueeze(1)
        self._record("prev_estimate", prev[:, 0])
        self._record("keypoint_prompt", keypoint_prompt)
        with stage("decoder"):
            _, outputs = self.forward_decoder(
                output["image_embeddings"], None, keypoint_prompt, prev, output["condition_info"], batch
            )
        output.update({"mhr": outputs[-1]})
        return output, keypoint_prompt

    def _get_hand_box(self, pose_output: dict, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """Hand boxes of the body pass in full-image px: (left_xyxy (N,4), right_xyxy (N,4)).

        ``pose_output['mhr']['hand_box']`` (cx, cy, w, h in [0,1] of the crop) -> square of side
        max(w, h) -> full image with the crop affine (``A[0,0]`` as the scale of both axes, as
        the official code). Also writes batch['left_center'|'left_scale'|'right_center'|
        'right_scale'] (numpy) like the official method. Requires one image (B = 1).
        """
        if batch["affine_trans"].shape[0] != 1:
            raise ValueError("_get_hand_box expects a batch of one image (B = 1)")
        size = self.image_size[0]
        boxes = pose_output["mhr"]["hand_box"].detach().cpu().numpy() * size
        affine = batch["affine_trans"][0].detach().cpu().numpy()
        scale = affine[:, 0, 0][:, None]
        offset = affine[:, [0, 1], [2, 2]]
        result = []
        for side, box in (("left", boxes[:, 0]), ("right", boxes[:, 1])):
            side_crop = box[:, 2:].max(axis=1, keepdims=True).repeat(2, axis=1)
            centre = box[:, :2]
            side_px = side_crop / scale
            centre_px = (centre - offset) / scale
            batch[f"{side}_center"], batch[f"{side}_scale"] = centre_px, side_px
            result.append(np.concatenate([centre_px - side_px * 1 / 2, centre_px + side_px * 1 / 2], axis=1))
        return result[0], result[1]
