"""What the clip command line and ``--from-result`` of a clip result share: the motion options
(smoothing, foot lock) and the scene build of a saved clip result (addon/scene/animation.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..protocol import cli_args


def add_motion_options(parser: argparse.ArgumentParser) -> None:
    """How the per-frame poses become the animation (also for --from-result of a clip)."""
    parser.add_argument("--smoothing", type=cli_args.non_negative_float, default=2.0, metavar="SIGMA",
                        help="zero-lag smoothing strength in frames (default 2; 0 = raw per-frame poses)")
    parser.add_argument("--no-foot-lock", action="store_true",
                        help="do not pin the feet while they touch the ground")


def build(context: Any, result_path: str, movie: str | None, args: argparse.Namespace) -> list[Any]:
    """The scene of a saved clip result (also used by --from-result)."""
    import numpy as np

    from ..protocol.result_file import split_rig_arrays
    from ..scene.animation import apply_clip

    with np.load(result_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    clip, rig = split_rig_arrays(arrays)
    if rig is None:
        raise ValueError(f"{result_path} holds no rig_* arrays; write it with python -m server reconstruct")
    created = apply_clip(context, clip, rig, movie_path=movie, options={
        "smoothing": args.smoothing, "foot_lock": not args.no_foot_lock, "camera": not args.no_camera,
        "mesh": not args.no_mesh, "naming": args.naming, "proportions": args.proportions,
        "correctives": not args.no_correctives})
    for obj in created:
        stats = obj.get("sam3d_clip_stats") if obj.type == "ARMATURE" else None
        if stats:
            s = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
            print(f"{obj.name}: jitter {s['jitter_raw']:.3f} -> {s['jitter']:.3f} m/s^2, foot slide in "
                  f"contact {100 * s['foot_slide_raw']:.1f} -> {100 * s['foot_slide']:.1f} cm "
                  f"({int(s['contact_frames'])} contact frames)"
                  + (f", pose correctives as {int(s['corrective_keys'])} shape keys (within "
                     f"{s['corrective_error_mm']:.2f} mm)" if "corrective_keys" in s else ""),
                  file=sys.stderr)
    return created
