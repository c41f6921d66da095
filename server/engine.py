"""The resident model: load once, answer many reconstruct requests.

`load_engine` resolves the checkpoint (folder or Hugging Face repo), builds our SAM 3D Body,
loads the official weights with a strict key check and keeps everything on one device.
`Engine.reconstruct` turns a request into the Result mapping of docs/ARCHITECTURE.md: the
official per-person outputs plus the self-consistent MHR skeleton the add-on rigs with.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt_mod
from .config import load_config
from .errors import BAD_INPUT, CANCELLED, DEVICE_UNAVAILABLE, NO_PERSON, ServerError
from .profiling import stage

log = logging.getLogger(__name__)

PROTOCOL_MODEL_KEYS = ("model", "variant", "device", "dtype")


@dataclass
class ReconstructRequest:
    image: np.ndarray  # RGB uint8 (H, W, 3), already EXIF-rotated
    boxes: np.ndarray | None = None  # (N, 4) xyxy pixels
    masks: Sequence[np.ndarray] | None = None  # one (H, W) uint8 per box
    mode: str = "full"  # "body" | "full"
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy (pixels)
    prompts: Sequence[tuple[float, float, int]] = field(default_factory=list)  # x, y px, label
    exif_focal_35mm: float | None = None
    detect: bool = True  # run the person detector when no box is given (if one is configured)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple's MPS, then the CPU; explicit names are checked."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ServerError(DEVICE_UNAVAILABLE, "CUDA was requested but this PyTorch build sees no NVIDIA GPU; use --device cpu or install a CUDA build of torch.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ServerError(DEVICE_UNAVAILABLE, "MPS was requested but is not available (Apple Silicon with macOS 12.3+ needed); use --device cpu.")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ServerError(BAD_INPUT, f"Unknown device {name!r}: use auto, cuda, cuda:N, mps or cpu.")
    return torch.device(name)


class Engine:
    """One loaded model. `reconstruct` is not re-entrant: the service runs one worker."""

    def __init__(self, model: torch.nn.Module, cfg: dict[str, Any], files: ckpt_mod.CheckpointFiles,
                 device: torch.device, detector: Any = None) -> None:
        self.model = model
        self.cfg = cfg
        self.files = files
        self.device = device
        self.detector = detector
        self._lock = threading.Lock()
        self._rig: dict[str, Any] | None = None
        self.info = {
            "model": files.source,
            "variant": cfg["MODEL"]["BACKBONE"]["TYPE"],
            "device": str(device),
            "dtype": "float32",
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }

    @property
    def mhr(self) -> Any:
        return self.model.head_pose.mhr

    def rig_data(self) -> dict[str, Any]:
        """RigData (docs/ARCHITECTURE.md), computed once per model."""
        if self._rig is None:
            from .mhr.rig_data import rig_data_from_mhr

            self._rig = rig_data_from_mhr(self.mhr)
        return self._rig

    def reconstruct(self, request: ReconstructRequest,
                    progress: Callable[[float, str], None] = lambda f, s: None,
                    cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray]:
        from .mhr.rig_data import person_rig_state
        from .pipeline.estimator import process_one_image
        from .pipeline.intrinsics import resolve_intrinsics

        if request.mode not in ("body", "full"):
            raise ServerError(BAD_INPUT, f"mode must be 'body' or 'full', not {request.mode!r}")
        image = request.image
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            raise ServerError(BAD_INPUT, "image must be an RGB uint8 array of shape (H, W, 3)")
        height, width = image.shape[:2]
        cam_int, source = resolve_intrinsics(width, height, request.intrinsics, request.exif_focal_35mm)
        if cancelled():
            raise ServerError(CANCELLED, "The reconstruction was cancelled.")
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            progress(0.05, "detecting" if request.boxes is None else "cropping")
            out = process_one_image(
                self.model, image,
                boxes=request.boxes,
                masks=request.masks,
                cam_int=cam_int,
                inference_type=request.mode,
                prompts=list(request.prompts) or None,
                detector=self.detector if request.detect else None,
            )
            if cancelled():
                raise ServerError(CANCELLED, "The reconstruction was cancelled.")
            if not out or len(out.get("pred_vertices", ())) == 0:
                raise ServerError(NO_PERSON, "No person was found in the image; draw a box around the person and try again.")
            progress(0.9, "skeleton")
            with stage("skeleton"):
                state = person_rig_state(self.mhr, out["mhr_model_params"], out["shape_params"],
                                         out["expr_params"])
            log.info("reconstruct: %d person(s) in %.3f s", len(out["pred_vertices"]), time.perf_counter() - t0)
        result: dict[str, np.ndarray] = dict(out)
        result.update(state)
        result["faces"] = np.asarray(self.model.head_pose.faces.detach().cpu().numpy(), dtype=np.int32)
        result["cam_int"] = np.asarray(cam_int, dtype=np.float32).reshape(3, 3)
        result["image_size"] = np.array([width, height], dtype=np.int32)
        result["intrinsics_source"] = np.array(source)
        result["mode"] = np.array(request.mode)
        progress(1.0, "done")
        return result


def load_engine(checkpoint: str | None = None, repo: str | None = None, mhr: str | None = None,
                device: str = "auto", detector: str | None = None,
                cache_dir: str | None = None, precision: str | None = None) -> Engine:
    """Resolve, build, load (strictly) and move the model; raise ServerError on any problem.

    `precision`: `official`, `fast` or `fp32` (server/precision.py); None: `fast` (= fp32 off CUDA)."""
    from .models.build import build_sam3d_body
    from .precision import apply_precision, check_precision

    files = ckpt_mod.resolve(checkpoint=checkpoint, repo=repo, mhr=mhr)
    cfg = load_config(files.config)
    dev = pick_device(device)
    try:
        precision = check_precision(precision, dev)
    except ValueError as exc:
        raise ServerError(BAD_INPUT, str(exc)) from None
    t0 = time.perf_counter()
    model = build_sam3d_body(cfg, str(files.mhr))
    state = ckpt_mod.load_state_dict(files.checkpoint, cache_dir=ckpt_mod.default_cache_dir() if cache_dir is None else cache_dir)
    ckpt_mod.check_state_dict(model.state_dict(), state, source=str(files.checkpoint))
    model.load_state_dict(state, strict=False)
    model.to(dev).eval()
    dtypes = apply_precision(model, precision, dev)
    log.info("model %s loaded on %s in %.2f s (precision %s)", files.source, dev, time.perf_counter() - t0, dtypes)
    det = None
    if detector:
        from .pipeline.detector import PersonDetector

        det = PersonDetector.from_pretrained(detector, device=dev)
    engine = Engine(model, cfg, files, dev, det)
    engine.info.update(precision=precision, dtype=dtypes["backbone"])
    return engine
