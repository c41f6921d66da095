"""Headless import of a saved result (no model run): RESULT.npz -> .blend [+ FBX / glTF].

    python -m addon.cli_from_result RESULT.npz --blend OUT.blend [--mhr MHR.pt | --rig RIG.npz]
        [--image PHOTO] [--fbx OUT.fbx --preset blender|unity|unreal] [--glb OUT.glb]
        [--naming mhr|unreal|mixamo] [--proportions baked|exact] [--no-correctives]
        [--no-camera]

The rig comes from the result's embedded ``rig_`` arrays, else from ``--rig`` (a rig .npz) or
``--mhr`` (MHR's TorchScript file; needs torch, as in the server's environment).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from .export import FBX_PRESETS
from .rig.naming import PRESETS as NAMING_PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m addon.cli_from_result",
        description="Build the Blender scene of a saved SAM 3D Body result without the model.")
    parser.add_argument("result", metavar="RESULT.npz", help="from `python -m server reconstruct`")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mhr", metavar="MHR.pt", help="rig from MHR's mhr_model.pt (needs torch)")
    source.add_argument("--rig", metavar="RIG.npz", help="rig from a saved rig .npz")
    parser.add_argument("--image", metavar="PHOTO", help="the photo, as the camera background")
    parser.add_argument("--blend", required=True, metavar="OUT.blend", help="scene to write")
    parser.add_argument("--fbx", metavar="OUT.fbx", help="also export the characters as FBX")
    parser.add_argument("--preset", choices=sorted(FBX_PRESETS), default="blender",
                        help="FBX target (axes/scale settings)")
    parser.add_argument("--glb", metavar="OUT.glb", help="also export the characters as glTF")
    parser.add_argument("--naming", choices=NAMING_PRESETS, default="mhr", help="bone names")
    parser.add_argument("--proportions", choices=("baked", "exact"), default="baked",
                        help="rest = the person's A-pose (baked) or MHR's template (exact)")
    parser.add_argument("--no-correctives", action="store_true",
                        help="no pose-correctives shape key")
    parser.add_argument("--no-camera", action="store_true", help="do not build the photo camera")
    return parser


def _check_files(args: argparse.Namespace) -> str | None:
    for flag, path in (("RESULT.npz", args.result), ("--mhr", args.mhr), ("--rig", args.rig),
                       ("--image", args.image)):
        if path and not os.path.isfile(path):
            return f"{flag} file not found: {path}"
    for flag, path in (("--blend", args.blend), ("--fbx", args.fbx), ("--glb", args.glb)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return f"{flag}: folder does not exist: {os.path.dirname(os.path.abspath(path))}"
    return None


def run(args: argparse.Namespace) -> None:
    """Build, save and export; raises ValueError/RuntimeError/OSError with a clear message."""
    import bpy

    from .export import export_fbx, export_glb
    from .import_result import import_result

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    if scene is None:
        raise RuntimeError("the bpy module has no scene after loading factory settings")
    scene.unit_settings.system = "METRIC"
    scene.unit_settings.scale_length = 1.0
    options: dict[str, Any] = {"correctives": not args.no_correctives,
                               "camera": not args.no_camera, "naming": args.naming,
                               "proportions": args.proportions}
    created = import_result(bpy.context, args.result, rig=args.mhr or args.rig,
                            image_path=os.path.abspath(args.image) if args.image else None,
                            options=options)
    blend = os.path.abspath(args.blend)
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    print(f"wrote {blend}", file=sys.stderr)
    characters = [obj for obj in created if obj.type in {"ARMATURE", "MESH"}]
    if args.fbx:
        print(f"wrote {export_fbx(os.path.abspath(args.fbx), characters, args.preset)}",
              file=sys.stderr)
    if args.glb:
        print(f"wrote {export_glb(os.path.abspath(args.glb), characters)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check_files(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.glb and "torch" in sys.modules:
        # bpy 4.5 + torch in one process hang at interpreter exit once Blender's glTF exporter
        # was imported; the files are written and closed, so leave without the exit handlers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
