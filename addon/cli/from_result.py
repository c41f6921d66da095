"""Headless import of a saved result (no model run): RESULT.npz -> .blend [+ FBX / glTF].

    python -m addon.cli --from-result RESULT.npz --blend OUT.blend
        [--mhr MHR.pt | --rig RIG.npz] [--image PHOTO]
        [--fbx OUT.fbx] [--preset blender|unity|unreal] [--glb OUT.glb]
        [--naming mhr|unreal|mixamo] [--proportions baked|exact] [--no-correctives]
        [--no-camera] [--no-mesh]

(``python -m addon.cli_from_result RESULT.npz ...`` is the same.) The rig comes from the
result's embedded ``rig_`` arrays, else from ``--rig`` (a rig .npz) or ``--mhr`` (MHR's
TorchScript file; needs torch, as in the server's environment).

The scene options (outputs, presets, what to build) are shared with the photo CLI
(addon/cli.py): :func:`add_scene_options`, :func:`check_outputs`, :func:`apply_options`,
:func:`new_scene` and :func:`save_outputs` serve both.

Exit codes: 0 done, 1 the build or an export failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from ..protocol.sequence import is_clip_source
from ..scene.export import FBX_PRESETS
from ..rig.naming import PRESETS as NAMING_PRESETS

PROG = "python -m addon.cli --from-result"


# --- shared with addon/cli.py ------------------------------------------------------------------


def add_scene_options(parser: argparse.ArgumentParser) -> None:
    """The outputs and the build options (apply_result's) of both command lines."""
    parser.add_argument("--blend", required=True, metavar="OUT.blend", help="scene to write")
    parser.add_argument("--fbx", metavar="OUT.fbx", help="also export the characters as FBX")
    parser.add_argument("--glb", metavar="OUT.glb", help="also export the characters as glTF")
    add_build_options(parser)


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """How the characters are built and exported (photo, saved result and batch command lines)."""
    parser.add_argument("--preset", choices=sorted(FBX_PRESETS), default="blender",
                        help="FBX target application (scale settings; default blender)")
    parser.add_argument("--naming", choices=NAMING_PRESETS, default="mhr",
                        help="bone-naming preset (default mhr)")
    parser.add_argument("--proportions", choices=("baked", "exact"), default="baked",
                        help="rest pose = the person's A-pose with their proportions (baked, "
                        "default) or MHR's template skeleton with the proportions as pose "
                        "scale, which Clear Pose drops (exact); see docs/RIG.md")
    parser.add_argument("--no-correctives", action="store_true",
                        help="no pose-corrective shape key (plain linear blend skinning)")
    parser.add_argument("--no-camera", action="store_true", help="do not build the photo camera")
    parser.add_argument("--no-mesh", action="store_true",
                        help="build the armatures (and camera) only, no meshes")
    from .retarget_options import add_retarget_options

    add_retarget_options(parser)


def check_outputs(args: argparse.Namespace) -> str | None:
    """What is wrong with the output paths (suffix, folder), or None. Missing output folders
    are created, as a user typing `--blend out/character.blend` expects."""
    from .retarget_options import check_retarget

    problem = check_retarget(args)
    if problem:
        return problem
    for flag, path, suffix in (("--blend", args.blend, ".blend"), ("--fbx", args.fbx, ".fbx"),
                               ("--glb", args.glb, ".glb")):
        if not path:
            continue
        if not path.lower().endswith(suffix):
            return f"{flag} must end in {suffix}, got {path}"
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"cannot create the folder of {flag} ({folder}): {exc.strerror or exc}"
    return None


def apply_options(args: argparse.Namespace) -> dict[str, Any]:
    """apply_result options from the parsed scene options."""
    return {"correctives": not args.no_correctives, "camera": not args.no_camera,
            "naming": args.naming, "proportions": args.proportions, "mesh": not args.no_mesh}


def new_scene() -> Any:
    """An empty factory scene in metres (1 Blender unit = 1 m); returns bpy.context."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    if scene is None:
        raise RuntimeError("the bpy module has no scene after loading factory settings")
    scene.unit_settings.system = "METRIC"
    scene.unit_settings.scale_length = 1.0
    return bpy.context


def save_outputs(context: Any, args: argparse.Namespace, created: Sequence[Any],
                 stage: Callable[[str], None] = lambda message: None) -> None:
    """Save the .blend, then the FBX / glTF exports asked for; each written path goes to stderr,
    each step's name to ``stage`` as it begins (a progress bar's label).
    Raises ValueError / RuntimeError / OSError with a clear message."""
    import bpy

    from ..scene.export import export_fbx, export_glb

    characters = [obj for obj in created if obj.type in {"ARMATURE", "MESH"}]
    if getattr(args, "retarget_to", None):
        from .retarget_options import retarget_outputs

        stage("posing your rig")
        # the user's rig is the deliverable: it is what the exports hold
        characters = [o for o in retarget_outputs(context, args, created)
                      if o.type in {"ARMATURE", "MESH"}]
    blend = os.path.abspath(args.blend)
    stage("saving the .blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    print(f"wrote {blend}", file=sys.stderr)
    if args.fbx:
        stage("exporting FBX")
        path = export_fbx(os.path.abspath(args.fbx), characters, args.preset, context=context)
        print(f"wrote {path}", file=sys.stderr)
    if args.glb:
        stage("exporting glTF")
        path = export_glb(os.path.abspath(args.glb), characters, context=context)
        print(f"wrote {path}", file=sys.stderr)


def leave_if_gltf_would_hang(args: argparse.Namespace) -> None:
    """bpy 4.5 + torch in one process hang at interpreter exit once Blender's glTF exporter was
    imported; the files are written and closed by now, so leave without the exit handlers."""
    if args.glb and "torch" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# --- this command -----------------------------------------------------------------------------


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the Blender scene of a saved SAM 3D Body result without the model.")
    parser.add_argument("result", metavar="RESULT.npz", help="from `python -m server reconstruct`")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mhr", metavar="MHR.pt", help="rig from MHR's mhr_model.pt or a checkpoint folder "
                        "holding assets/mhr_model.pt (needs torch); also computes the skeleton and "
                        "rest mesh of a result that holds only Meta's official output names")
    source.add_argument("--rig", metavar="RIG.npz", help="rig from a saved rig .npz")
    parser.add_argument("--image", metavar="PHOTO", help="the photo (for a clip result: the movie or "
                        "image folder; default: the clip's recorded path), as the camera background")
    add_scene_options(parser)
    from .clip_scene import add_motion_options

    add_motion_options(parser)
    return parser


def _check_files(args: argparse.Namespace) -> str | None:
    for flag, path in (("RESULT.npz", args.result), ("--mhr", args.mhr), ("--rig", args.rig),
                       ("--image", args.image)):
        if path and not (os.path.isfile(path) or (flag == "--mhr" and os.path.isdir(path))
                         or (flag == "--image" and is_clip_source(path))):
            return f"{flag} file not found: {path}"
    return check_outputs(args)


def run(args: argparse.Namespace) -> None:
    """Build, save and export; raises ValueError/RuntimeError/OSError with a clear message."""
    from ..scene.import_result import import_result
    from . import clip_scene as clip

    context = new_scene()
    if _is_clip_file(args.result):
        movie = args.image or _recorded_clip(args.result)
        created = clip.build(context, args.result, os.path.abspath(movie) if movie else None, args)
        save_outputs(context, args, created)
        return
    created = import_result(context, args.result, rig=args.mhr or args.rig,
                            image_path=os.path.abspath(args.image) if args.image else None,
                            options=apply_options(args))
    save_outputs(context, args, created)


def _is_clip_file(path: str) -> bool:
    import numpy as np

    from ..protocol.clip_result import is_clip

    with np.load(path, allow_pickle=False) as data:
        return "kind" in data.files and is_clip({"kind": data["kind"]})


def _recorded_clip(path: str) -> str | None:
    """The clip the result was made from, when it is still where it was."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        source = str(data["source_path"]) if "source_path" in data.files else None
    return source if source and is_clip_source(source) else None


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    parser = build_parser(prog)
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
    leave_if_gltf_would_hang(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m addon.cli.from_result"))
