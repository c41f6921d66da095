# SPDX-License-Identifier: GPL-3.0-or-later
"""Headless photo -> rigged character: ``python -m addon.cli IMAGE --blend OUT.blend``.

Runs the inference server as a subprocess exactly as the add-on does (addon/client.py), then
builds the scene with the PyPI `bpy` module through `apply_result` (1 Blender unit = 1 m),
saves the .blend and optionally exports FBX / glTF.

    python -m addon.cli photo.jpg [--checkpoint DIR | --repo HF_ID] [--mhr PATH]
        [--mode body|full] [--box x1,y1,x2,y2]... [--mask MASK.png]...
        [--intrinsics fx,fy,cx,cy] [--prompt x,y,label]... [--device auto|cuda|cpu|mps]
        --blend OUT.blend [--fbx OUT.fbx [--preset blender|unity|unreal]] [--glb OUT.glb]
        [--naming mhr|unreal|mixamo] [--proportions baked|exact] [--no-correctives]
        [--no-camera] [--no-mesh]

    python -m addon.cli --from-result RESULT.npz [--mhr MHR.pt | --rig RIG.npz] --blend ...
        builds a saved result without the model (addon/cli/from_result.py; same scene options)

    python -m addon.cli PHOTOS_DIR --out-dir OUT [--fbx] [--glb] [--glob P] [--recursive] [--force]
        one scene per photo of a folder, one server start (addon/cli/batch.py); exit 3 when some
        photos failed

Exit codes: 0 done, 1 the reconstruction or the scene build failed, 2 bad arguments.
Errors are one line on stderr (the server's log tail follows when the server failed).
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from typing import Any, Sequence

import numpy as np

from ..protocol import cli_args
from . import from_result as cli_from_result
from .from_result import (add_scene_options, apply_options, check_outputs,
                              leave_if_gltf_would_hang, new_scene, save_outputs)
from ..protocol.client import JobEvent, JobRunner
from .server_options import DEFAULT_REPO, add_model_options, add_server_options, server_process  # noqa: F401



class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


class RunError(Exception):
    """The reconstruction or the scene build failed (exit code 1)."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail










def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m addon.cli",
        description="Reconstruct the people in a photo with SAM 3D Body and save them as "
        "rigged MHR characters in a .blend (and FBX / glTF).",
        epilog="A saved result instead of a photo: python -m addon.cli --from-result "
        "RESULT.npz [--mhr MHR.pt | --rig RIG.npz] --blend OUT.blend ... (see "
        "python -m addon.cli --from-result X -h). A folder of photos: python -m addon.cli "
        "PHOTOS_DIR --out-dir OUT [--fbx] [--glb] ... (see python -m addon.cli X --out-dir Y -h).")
    parser.add_argument("image", metavar="IMAGE", help="photo (JPEG, PNG, ...)")
    add_model_options(parser)
    parser.add_argument("--mode", choices=("body", "full"), default="full")
    parser.add_argument("--box", type=cli_args.box, action="append", default=[], metavar="x1,y1,x2,y2",
                        help="person box in pixels (repeat for several people)")
    parser.add_argument("--mask", action="append", default=[], metavar="MASK.png",
                        help="person mask, one per --box in the same order")
    parser.add_argument("--intrinsics", type=cli_args.intrinsics, metavar="fx,fy,cx,cy",
                        help="camera intrinsics in pixels of the full image")
    parser.add_argument("--prompt", type=cli_args.prompt, action="append", default=[],
                        metavar="x,y,label",
                        help=cli_args.PROMPT_HELP)
    parser.add_argument("--fit-prompts", action="store_true",
                        help="after the prompted run, fit the pose so each prompted keypoint lands on "
                        "its point, holding the other body keypoints (not part of the official pipeline)")
    add_server_options(parser)
    add_scene_options(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """File-system checks argparse cannot do; UsageError says what is wrong."""
    if os.path.isdir(args.image):
        raise UsageError(f"{args.image} is a folder: a batch of photos needs --out-dir OUT "
                         "(python -m addon.cli PHOTOS_DIR --out-dir OUT)")
    if not os.path.isfile(args.image):
        raise UsageError(f"image not found: {args.image}")
    if args.checkpoint and not os.path.isdir(args.checkpoint):
        raise UsageError(f"--checkpoint folder not found: {args.checkpoint}")
    if args.mhr and not os.path.isfile(args.mhr):
        raise UsageError(f"--mhr file not found: {args.mhr}")
    if args.fit_prompts and not args.prompt:
        raise UsageError("--fit-prompts needs at least one --prompt x,y,label")
    for mask in args.mask:
        if not os.path.isfile(mask):
            raise UsageError(f"--mask file not found: {mask}")
    if args.mask and len(args.mask) != len(args.box):
        raise UsageError(f"give one --mask per --box ({len(args.mask)} masks, "
                         f"{len(args.box)} boxes)")
    problem = check_outputs(args)
    if problem:
        raise UsageError(problem)
    if not os.path.isfile(args.python):
        raise UsageError(f"--python not found: {args.python}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")


def read_mask(path: str) -> np.ndarray:
    """A mask image as HxW uint8 with its grey values as stored (0/1 or 0/255; addon/masks.py),
    read through Blender's image loader (no PIL in Blender)."""
    import bpy

    from ..protocol.masks import MaskError, gray_levels, mask_values

    image = bpy.data.images.load(os.path.abspath(path))
    try:
        width, height = image.size
        if width == 0 or height == 0:
            raise UsageError(f"cannot read mask {path}")
        # Raw stored levels, not colour-managed ones.
        # (setattr: the 4.2 stubs list only 'NONE' for this enum, Blender takes 'Non-Color')
        if image.colorspace_settings is not None:
            setattr(image.colorspace_settings, "name", "Non-Color")
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        pixel_data: Any = image.pixels  # a bpy_prop_array (the stubs say float)
        pixel_data.foreach_get(pixels)
        # Blender stores rows bottom-up and 8-bit levels as level / 255.
        levels = np.rint(pixels.reshape(height, width, image.channels)[::-1] * 255.0)
        try:
            return mask_values(gray_levels(levels.astype(np.uint8)), repr(path))
        except MaskError as exc:
            raise UsageError(str(exc)) from exc
    finally:
        bpy.data.images.remove(image)


def _log_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def run_jobs(runner: JobRunner, request: dict[str, Any], timeout: float | None = None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rig, result) from the server; RunError on any failure."""
    rig_job = runner.submit_rig()
    job = runner.submit_reconstruct(**request)
    data: dict[int, dict[str, Any]] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while len(data) < 2:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            event: JobEvent = runner.events.get(timeout=wait)
        except queue.Empty:
            raise RunError(f"no answer from the server within {timeout:g} s") from None
        if event.kind == "progress":
            if event.job_id == job.id or event.fraction == 0.0:
                _log_progress(event.fraction, event.message)
        elif event.kind == "result":
            data[event.job_id] = dict(event.data or {})
        else:
            what = "the server stopped" if event.kind == "died" else "reconstruction failed"
            code = f" [{event.code}]" if event.code else ""
            raise RunError(f"{what}: {event.message}{code}", event.log_tail)
    return data[rig_job.id], data[job.id]


def build_scene(args: argparse.Namespace, rig: dict[str, Any], result: dict[str, Any]) -> None:
    from ..scene.apply import apply_result
    from ..scene.tags import tag_armatures

    try:
        context = new_scene()
        image = os.path.abspath(args.image)
        created = apply_result(context, result, rig, image_path=image,
                               options=apply_options(args))
        # What Refine needs, so the saved .blend can be refined in Blender later.
        tag_armatures(created, result, image)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        raise RunError(f"cannot build the scene: {exc}") from exc
    try:
        save_outputs(context, args, created)
    except (ValueError, OSError, RuntimeError) as exc:
        raise RunError(f"saving failed: {exc}") from exc


def from_result_argv(argv: Sequence[str]) -> list[str] | None:
    """The saved-result command line when ``--from-result`` is given, else None."""
    pre = argparse.ArgumentParser(prog="python -m addon.cli", add_help=False,
                                  allow_abbrev=False)
    pre.add_argument("--from-result", metavar="RESULT.npz")
    known, rest = pre.parse_known_args(argv)
    if known.from_result is None:
        return None
    return [known.from_result, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    saved = from_result_argv(argv)
    if saved is not None:
        return cli_from_result.main(saved)
    from . import batch, clip

    if clip.is_clip_argv(argv):
        return clip.main(argv)
    if batch.is_batch(argv):
        return batch.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with code 2 on bad syntax
    try:
        check_args(args)
        masks = [read_mask(path) for path in args.mask] or None
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    request: dict[str, Any] = {"image_path": os.path.abspath(args.image), "mode": args.mode}
    if args.box:
        request["boxes"] = np.asarray(args.box, dtype=np.float32)
    if masks:
        request["masks"] = masks
    if args.intrinsics:
        request["intrinsics"] = list(args.intrinsics)
    if args.prompt:
        request["prompts"] = [list(p) for p in args.prompt]
    if args.fit_prompts:
        request["fit_prompts"] = True

    runner = JobRunner(server_process(args))
    try:
        rig, result = run_jobs(runner, request)
        runner.stop()
        build_scene(args, rig, result)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(f"--- server log ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        runner.stop()
    leave_if_gltf_would_hang(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
