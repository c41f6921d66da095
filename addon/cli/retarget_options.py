"""``--retarget-to TARGET.fbx|.blend``: pose (or animate) the user's own rig, on every command
line that builds a scene (photo, saved result, clip, batch). The target is loaded into the
built scene, posed like person N's armature (a clip's action is baked onto it), saved in the
.blend, and is what ``--fbx`` / ``--glb`` export."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from ..rig import bone_maps


def add_retarget_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retarget-to", metavar="TARGET.fbx|.blend",
                        help="your rig: it takes the pose (a clip: the animation) and is what "
                        "--fbx/--glb export")
    parser.add_argument("--bone-map", default="auto", metavar="auto|PRESET|MAP.json",
                        help="how the target's bones are found: auto (detect, default), one of "
                        f"{', '.join(bone_maps.PRESETS)}, or a map file saved from the panel")
    parser.add_argument("--retarget-person", type=int, default=0, metavar="N",
                        help="which reconstructed person poses the target (default 0)")
    parser.add_argument("--retarget-ik", action="store_true",
                        help="bend arms and legs so hands and feet land where the person's do")
    parser.add_argument("--no-root-motion", action="store_true",
                        help="keep the target's hips in place (rotations only)")


def check_retarget(args: argparse.Namespace) -> str | None:
    """What is wrong with the retarget options, or None (checked before any work is done)."""
    path = getattr(args, "retarget_to", None)
    if not path:
        return None
    if os.path.splitext(path)[1].lower() not in (".fbx", ".blend"):
        return f"--retarget-to must be an .fbx or .blend file, got {path}"
    if not os.path.isfile(path):
        return f"--retarget-to file not found: {path}"
    spec = args.bone_map
    if spec != "auto" and spec not in bone_maps.PRESETS:
        if not spec.lower().endswith(".json"):
            return f"--bone-map must be auto, one of {list(bone_maps.PRESETS)} or a .json file, got {spec}"
        if not os.path.isfile(spec):
            return f"--bone-map file not found: {spec}"
    if args.retarget_person < 0:
        return "--retarget-person must be 0 or more"
    return None


def retarget_outputs(context: Any, args: argparse.Namespace, created: Sequence[Any]) -> list[Any]:
    """Load and pose the target; returns its objects (armature first). Raises ValueError with a
    clear message (no such person, unmappable rig...)."""
    from ..scene import retarget

    sources = [o for o in created if o.type == "ARMATURE"]
    n = args.retarget_person
    if n >= len(sources):
        raise ValueError(f"--retarget-person {n}: the scene has {len(sources)} reconstructed "
                         "people (numbered from 0)")
    source = sources[n]
    objects = retarget.load_target(context, os.path.abspath(args.retarget_to))
    target = objects[0]
    spec = args.bone_map if args.bone_map in ("auto", *bone_maps.PRESETS) else os.path.abspath(args.bone_map)
    animated = source.animation_data is not None and source.animation_data.action is not None
    if animated:
        action, stats = retarget.retarget_clip(context, source, target, target_map=spec,
                                               ik=args.retarget_ik,
                                               root_motion=not args.no_root_motion)
        print(f"retargeted {int(stats['frames'])} frames onto {target.name} ({action.name})",
              file=sys.stderr)
    else:
        retarget.retarget_pose(context, source, target, target_map=spec, ik=args.retarget_ik,
                               root_motion=not args.no_root_motion)
        print(f"posed {target.name} like {source.name}", file=sys.stderr)
    for line in str(target[retarget.REPORT_PROP]["lines"]).splitlines():
        print(f"  {line.strip()}", file=sys.stderr)
    return objects
