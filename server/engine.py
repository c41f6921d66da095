"""The resident model: load once, answer many reconstruct requests.

`load_engine` resolves the checkpoint (folder or Hugging Face repo), builds our SAM 3D Body,
loads the official weights with a strict key check and keeps everything on one device.
`Engine.reconstruct` turns a request into the Result mapping of docs/ARCHITECTURE.md: the
official per-person outputs plus the self-consistent MHR skeleton the add-on rigs with.
"""
from __future__ import annotations

import copy

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from . import checkpoint as ckpt_mod
from .config import load_config
from .errors import BAD_INPUT, CANCELLED, DEVICE_UNAVAILABLE, NO_PERSON, OUT_OF_MEMORY, ServerError
from .profiling import listening, stage
from .request import ReconstructRequest

log = logging.getLogger(__name__)

PROTOCOL_MODEL_KEYS = ("model", "variant", "device", "dtype")
MHR_BACKENDS = ("torchscript", "native")


def resolve_mhr_backend(name: str, precision: str, device: torch.device) -> str:
    """`auto`: `native` where `fast` already autocasts (CUDA; its fp16 moves vertices by
    ~0.04 mm, far more than native MHR's < 0.001 mm), else Meta's TorchScript, so the CPU
    default stays identical to the official code."""
    if name != "auto":
        return name
    from .precision import fast_autocast_dtype

    autocasts = precision == "fast" and fast_autocast_dtype(device) is not None
    return "native" if autocasts and device.type == "cuda" else "torchscript"


def use_mhr_backend(model: torch.nn.Module, backend: str) -> Any:
    """Make both pose heads run MHR with `backend`; returns the TorchScript module (RigData is
    read from it).

    `torchscript`: Meta's `mhr_model.pt` as loaded (the official numbers). `native`: our
    forward from the same buffers (server/mhr/forward.py, no copy): float64 FK by pointer
    jumping, 4 composition steps instead of 15 tree levels, ~2.5x fewer tensor operations
    than before and ~20 % fewer than the TorchScript, 4.3 vs 6.4 ms per call on a 2-core CPU
    (LOD1 stand-in); vertices within 1e-4 cm of the TorchScript's. Intermediate decoder layers
    then skin only the vertices the 70 keypoints read (their meshes are never used)."""
    from .mhr.forward import MHRBody

    if backend not in MHR_BACKENDS:
        raise ServerError(BAD_INPUT, f"MHR backend must be one of {', '.join(MHR_BACKENDS)}, not {backend!r}")
    current = model.head_pose.mhr
    source = model.__dict__.get("_mhr_torchscript")
    if source is None:
        source = current
        # Not a registered submodule: it must not add keys to state_dict().
        model.__dict__["_mhr_torchscript"] = source
    wanted = source if backend == "torchscript" else (
        current if isinstance(current, MHRBody) else MHRBody.from_torchscript(source))
    for head in (model.head_pose, model.head_pose_hand):
        head.mhr = wanted
        # Intermediate decoder layers only feed keypoints forward: with our MHR they skin just
        # the vertices the keypoints read (the TorchScript can only do whole meshes).
        head.intermediate_keypoints_only = backend == "native"
    for key in ("_keypoint_fit_model",):
        model.head_pose.__dict__.pop(key, None)
    return source


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

    # Longest image side the model works at; larger photos are downscaled with their intrinsics.
    max_work_side = 4096

    def __init__(self, model: torch.nn.Module, cfg: dict[str, Any], files: ckpt_mod.CheckpointFiles,
                 device: torch.device, detector: Any = None) -> None:
        self.model = model
        self.cfg = cfg
        self.files = files
        self.device = device
        # A callable, or the hub id / folder of one to load on first use ("auto": the default).
        self.detector: Any = None if detector in (None, "none") else detector
        self.detector_error: str | None = None
        self._lock = threading.Lock()  # the model
        # The person detector, a model of its own: a clip detects the next batch's people while
        # the model runs this batch (server/frame_batch.py). Taken inside `_lock`, never around it.
        self._detect_lock = threading.Lock()
        self._rig: dict[str, Any] | None = None
        self.info = {
            "model": files.source,
            "variant": cfg["MODEL"]["BACKBONE"]["TYPE"],
            "device": str(device),
            "dtype": "float32",
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_memory_gb": (round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
                              if device.type == "cuda" else None),
            "version": __version__,
        }

    @property
    def mhr(self) -> Any:
        return self.model.head_pose.mhr

    def rig_data(self) -> dict[str, Any]:
        """RigData (docs/ARCHITECTURE.md), computed once per model."""
        if self._rig is None:
            from .mhr.rig_data import rig_data_from_mhr

            source = self.model.__dict__.get("_mhr_torchscript")
            self._rig = rig_data_from_mhr(self.mhr if source is None else source)
        return self._rig

    def reconstruct(self, request: ReconstructRequest,
                    progress: Callable[[float, str], None] = lambda f, s: None,
                    cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray]:
        from .mhr.rig_data import person_rig_state
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
            work = _downscale(image, cam_int, request, self.max_work_side)
            boxes, boxes_source = work.boxes, "user"
            with self._detect_lock:
                detect = self._detector() if boxes is None and request.detect else None
                if boxes is None and detect is not None:
                    # Detect here rather than inside the pipeline so that an out-of-memory retry
                    # can split the people into smaller batches.
                    boxes = np.asarray(detect(work.image), dtype=np.float32).reshape(-1, 4)
                    boxes_source = "detector"
            if boxes is not None and boxes_source == "detector" and len(boxes) == 0:
                raise ServerError(NO_PERSON, "No person was found in the image; draw a box around the person and try again.")
            if boxes is None:
                boxes_source = "full_image"
            n_people = 1 if boxes is None else len(boxes)
            with listening(_stage_progress(progress, n_people)):
                out = self._infer_in_batches(work.image, boxes, work.masks, work.cam_int, request.mode,
                                             work.prompts, request.fit_prompts)
            out = _upscale_outputs(out, work.scale, cam_int, request.masks)
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
        result["boxes_source"] = np.array(boxes_source)
        progress(1.0, "done")
        return result


    def reconstruct_frames(self, requests: Sequence[ReconstructRequest],
                           cancelled: Callable[[], bool] = lambda: False
                           ) -> list[dict[str, np.ndarray] | ServerError]:
        """Body mode for several images of one size in one model pass (server/frame_batch.py)."""
        return self.run_prepared(self.prepare_frames(requests), cancelled)

    def prepare_frames(self, requests: Sequence[ReconstructRequest]) -> Any:
        """The host half of `reconstruct_frames` (checks, detection, crops); thread-safe."""
        from .frame_batch import prepare_frames

        return prepare_frames(self, requests)

    def run_prepared(self, frames: Any, cancelled: Callable[[], bool] = lambda: False
                     ) -> list[dict[str, np.ndarray] | ServerError]:
        """The model half of `reconstruct_frames`, on what `prepare_frames` returned."""
        from .frame_batch import run_prepared

        return run_prepared(self, frames, cancelled)

    def _detector(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The person detector, loaded on first use. If it cannot be loaded (offline and not
        cached, say) the photo is treated as one person, like the official code without a
        detector, and the reason is logged once and kept in `detector_error`."""
        if self.detector is None or callable(self.detector):
            return self.detector
        from .pipeline.detector import DEFAULT_DETECTOR_ID, PersonDetector

        name = DEFAULT_DETECTOR_ID if self.detector == "auto" else str(self.detector)
        try:
            self.detector = PersonDetector.from_pretrained(name, device=self.device)
        except ServerError as exc:
            self.detector, self.detector_error = None, exc.message
            log.warning("person detection is off: %s Photos without a box are used whole.", exc.message)
        return self.detector

    def _infer_in_batches(self, image: np.ndarray, boxes: np.ndarray | None, masks: Any, cam_int: np.ndarray,
                          mode: str, prompts: list | None, fit_prompts: bool = False) -> dict[str, np.ndarray]:
        """`process_one_image`; when the device runs out of memory with several people, the
        people are split in halves (down to one per batch) instead of failing the request.

        Splitting is a fallback, not the normal path: the official pipeline treats a batch of
        one differently from larger batches (invalid hand prompts are dropped instead of
        replaced by dummies), so a split batch may differ slightly from an unsplit one."""
        from .oom import is_out_of_memory, release_cached_memory
        from .pipeline.estimator import process_one_image

        try:
            return process_one_image(self.model, image, boxes=boxes, masks=masks, cam_int=cam_int,
                                     inference_type=mode, prompts=prompts, detector=None,
                                     fit_prompts=fit_prompts)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
            n = 0 if boxes is None else len(boxes)
            if n < 2 or prompts:
                raise ServerError(OUT_OF_MEMORY, "The device ran out of memory for this image even one person at a "
                                  "time; use a smaller image, --device cpu, or free GPU memory.") from exc
        release_cached_memory()
        log.warning("out of memory with %d people: retrying in two batches", n)
        half = n // 2
        parts = [self._infer_in_batches(image, boxes[sl], None if masks is None else masks[sl], cam_int, mode, None)
                 for sl in (slice(0, half), slice(half, n))]
        return {k: (parts[0][k] if k == "cam_int" else np.concatenate([p[k] for p in parts])) for k in parts[0]}


@dataclass
class _WorkImage:
    image: np.ndarray
    cam_int: np.ndarray
    scale: float
    boxes: np.ndarray | None
    masks: Any
    prompts: list | None


def _stage_progress(progress: Callable[[float, str], None], people: int) -> Callable[[str], None]:
    """Pipeline stage names -> progress messages (the body pass, then the hands pass)."""
    who = f"{people} {'person' if people == 1 else 'people'}"
    seen: set[str] = set()

    def hear(name: str) -> None:
        hands = "hands" in seen
        steps = {"crop": (0.1, f"cropping {who}"),
                 "backbone": (0.65 if hands else 0.2, ("hands" if hands else "body") + ": image encoder"),
                 "decoder": (0.75 if hands else 0.4, ("hands" if hands else "body") + ": decoder"),
                 "hands": (0.6, f"hands of {who}"), "merge": (0.85, "merging the hands"),
                 "fit": (0.87, "fitting the prompts")}
        seen.add(name)
        step = steps.get(name)
        # Hand crops and the second hand's pass repeat earlier steps: the bar never goes back.
        if step is not None and step[0] >= last[0] and [name, step[0]] != last[1:]:
            last[:] = [step[0], name, step[0]]
            progress(*step)

    last: list = [0.0, "", -1.0]
    return hear


def _downscale(image: np.ndarray, cam_int: np.ndarray, request: ReconstructRequest, max_side: int) -> _WorkImage:
    """Very large photos are processed at `max_side` pixels on the long side. The crop is
    512 px anyway; scaling K with the image keeps every camera ray, so the 3D result is the same
    and 2D outputs are mapped back to the photo's pixels (`_upscale_outputs`)."""
    import cv2

    boxes = None if request.boxes is None else np.asarray(request.boxes, np.float32).reshape(-1, 4)
    prompts = [tuple(p) for p in request.prompts] or None
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return _WorkImage(image, cam_int, 1.0, boxes, request.masks, prompts)
    s = max_side / max(height, width)
    size = (max(1, round(width * s)), max(1, round(height * s)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    k = np.asarray(cam_int, np.float64).reshape(3, 3).copy()
    k[:2] *= s
    masks = None if request.masks is None else [
        cv2.resize(np.asarray(m).squeeze(), size, interpolation=cv2.INTER_NEAREST) for m in request.masks]
    if prompts:
        prompts = [(p[0] * s, p[1] * s, *p[2:]) for p in prompts]
    return _WorkImage(small, k.astype(np.float32), s, None if boxes is None else boxes * s, masks, prompts)


_PIXEL_KEYS = ("pred_keypoints_2d", "bbox", "lhand_bbox", "rhand_bbox", "focal_length",
               "fit_error_before_px", "fit_error_after_px")


def _upscale_outputs(out: dict[str, np.ndarray], scale: float, cam_int: np.ndarray, masks: Any) -> dict[str, np.ndarray]:
    if scale == 1.0:
        return out
    out = dict(out)
    for key in _PIXEL_KEYS:
        if key in out:
            out[key] = (np.asarray(out[key]) / scale).astype(np.asarray(out[key]).dtype)
    out["cam_int"] = np.asarray(cam_int, np.float32).reshape(3, 3)
    if "mask" in out and masks is not None:
        out["mask"] = np.stack([np.asarray(m, np.uint8).reshape(*np.asarray(m).shape[:2], 1) for m in masks])
    return out


def load_engine(checkpoint: str | None = None, repo: str | None = None, mhr: str | None = None,
                device: str = "auto", detector: str | None = "auto",
                cache_dir: str | None = None, precision: str | None = None,
                mhr_backend: str = "auto") -> Engine:
    """Resolve, build, load (strictly) and move the model; raise ServerError on any problem.

    `precision`: `official`, `fast` or `fp32` (server/precision.py); None: `fast` (= fp32 off CUDA).
    `detector`: "auto" (the default RT-DETR, loaded on the first photo without a box), a hub id
    or folder, or None/"none" (no detection: the whole image is one person, as the official
    code does without a detector).
    `mhr_backend`: `torchscript` (Meta's module, the official numbers), `native` (our forward,
    fewer tensor operations; see `use_mhr_backend`) or `auto` (`resolve_mhr_backend`)."""
    from .models.build import build_sam3d_body
    from .precision import (
        apply_precision,
        backbone_linear_weight_keys,
        cast_backbone_linear_weights,
        check_precision,
        fast_linear_weight_dtype,
    )

    from .stages import stage

    stage("finding the checkpoint")
    files = ckpt_mod.resolve(checkpoint=checkpoint, repo=repo, mhr=mhr)
    cfg = load_config(files.config)
    dev = pick_device(device)
    try:
        precision = check_precision(precision, dev)
    except ValueError as exc:
        raise ServerError(BAD_INPUT, str(exc)) from None
    from .models.backbones import backbone_dtype, round_like_official
    from .models.skip_init import no_weight_init
    from .weight_cache import load_weights

    t0 = time.perf_counter()
    # Built in fp32 without random init (the strict key check below proves the checkpoint sets
    # every weight), loaded, then rounded in place as the config's TRAIN.USE_FP16 would have:
    # the same values as the official build-in-fp16-then-load, with no fp16 -> fp32 round trip
    # of 3.4 GB for `fp32`/`fast` (docs/PRECISION.md, "Loading").
    build_cfg = copy.deepcopy(cfg)
    build_cfg.setdefault("TRAIN", {})["USE_FP16"] = False
    stage("building the model")
    with no_weight_init():
        model = build_sam3d_body(build_cfg, str(files.mhr))
    mhr_backend = resolve_mhr_backend(mhr_backend, precision, dev)
    stage("loading the weights")
    rounding = backbone_dtype(cfg.get("TRAIN"))
    linear = fast_linear_weight_dtype(precision, dev)
    layout = {"round": str(rounding).replace("torch.", "")}
    stored = {}
    if linear is not None:
        layout["linear"] = str(linear).replace("torch.", "")
        stored = {key: linear for key in backbone_linear_weight_keys(model)}

    def prepare(m: torch.nn.Module) -> None:
        round_like_official(m.backbone, rounding)
        if linear is not None:
            cast_backbone_linear_weights(m, linear)

    origin = load_weights(
        model, files.checkpoint, ckpt_mod.default_cache_dir() if cache_dir is None else cache_dir,
        layout=layout, prepare=prepare, dtypes=stored)
    if linear is not None:
        model.backbone_linear_dtype = linear  # also when adopted from the cache
    use_mhr_backend(model, mhr_backend)
    stage(f"moving the model to {dev}")
    model.to(dev).eval()
    dtypes = apply_precision(model, precision, dev)
    log.info("model %s loaded (weights from the %s) on %s in %.2f s (precision %s)", files.source, origin, dev,
             time.perf_counter() - t0, dtypes)
    engine = Engine(model, cfg, files, dev, detector=detector or None)
    from .pipeline.crop import warp_kernel

    engine.info.update(precision=precision, dtype=dtypes["backbone"], mhr_backend=mhr_backend,
                       weights_from=origin, crop_warp=warp_kernel())
    if dev.type != "cpu" and not warp_kernel().startswith("OpenCV"):
        # On an accelerator the crops are a real share of a clip's time (at 150 person-frames/s
        # the budget is 7 ms per person-frame).
        log.warning("person crops use the %s", warp_kernel())
    if dev.type == "cpu":
        from .cpu_features import describe

        engine.info["cpu_bf16"] = describe()
    return engine
