"""``python -m server reconstruct CLIP --out RESULT.npz``: a movie file or an image folder through
the clip job (server/video/clip.py), progress per frame on stderr, one clip result file."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from addon.protocol import cli_args
from addon.protocol.clip_result import check_clip
from addon.protocol.sequence import is_clip_source


def is_clip_input(path: str) -> bool:
    return is_clip_source(path)


def add_clip_args(rec: argparse.ArgumentParser) -> None:
    clip = rec.add_argument_group("clips (a movie file or a folder of numbered images as IMAGE)")
    clip.add_argument("--start", type=cli_args.int_at_least(0), default=0, metavar="N",
                      help="first frame (0-based, default 0)")
    clip.add_argument("--stop", type=cli_args.int_at_least(1), default=None, metavar="N",
                      help="stop before this frame")
    clip.add_argument("--step", type=cli_args.int_at_least(1), default=1, metavar="N",
                      help="every N-th frame (default 1)")
    clip.add_argument("--fps", type=cli_args.positive_float, default=None,
                      help="frame rate (default: the movie's; 24 for an image folder)")
    clip.add_argument("--max-people", type=cli_args.int_at_least(1), default=None, metavar="N",
                      help="track at most N people (default: everyone found)")
    clip.add_argument("--track-boxes", metavar="BOXES.json",
                      help='boxes per frame from another tracker: {"FRAME": [[x1,y1,x2,y2], ...], ...}')
    clip.add_argument("--batch-frames", type=cli_args.int_at_least(1), default=None, metavar="N",
                      help="body mode: frames per model pass when their boxes are known (from the "
                           "detector or --track-boxes); default 8 on a GPU, 1 on a CPU (no "
                           "faster there); more uses more memory")


def read_track_boxes(path: str) -> dict[int, np.ndarray]:
    """The per-frame boxes file; ValueError with the reason when it is malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read --track-boxes {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--track-boxes {path} must hold an object {{frame: [[x1,y1,x2,y2], ...]}}")
    out = {}
    for key, boxes in data.items():
        try:
            frame = int(key)
            arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--track-boxes {path}: frame {key!r}: {exc}") from exc
        if frame < 0 or not np.all(np.isfinite(arr)) or np.any(arr[:, 2:] <= arr[:, :2]):
            raise ValueError(f"--track-boxes {path}: frame {key!r} needs boxes x1<x2, y1<y2")
        out[frame] = arr
    return out


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def cmd_reconstruct_clip(args: argparse.Namespace, make: Callable[[], Any],
                         save: Callable[[Path, dict[str, Any]], None], usage: type[Exception],
                         remote: bool = False) -> int:
    """`make()` gives the engine, or with `remote` a Client of the --connect server, which gets
    the clip uploaded (server/clip_upload.py) and streams the rows back."""
    from addon.protocol.result_file import with_rig_arrays

    from .clip import ClipJob, ClipRequest
    from .source import open_clip

    for flag in ("mask", "prompt"):
        if getattr(args, flag):
            raise usage(f"--{flag} applies to photos, not to clips")
    if args.batch_frames is not None and args.batch_frames < 1:
        raise usage("--batch-frames must be at least 1")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise usage(f"the folder of --out {args.out!r} does not exist")
    try:
        frame_boxes = read_track_boxes(args.track_boxes) if args.track_boxes else None
    except ValueError as exc:
        raise usage(str(exc)) from exc
    source = open_clip(args.image, args.start, args.stop, args.step, args.fps)  # before the model load
    if remote:
        return _reconstruct_remote_clip(args, make(), out, save, len(source), frame_boxes)
    request = ClipRequest(mode=args.mode, intrinsics=tuple(args.intrinsics) if args.intrinsics else None,
                          boxes=np.asarray(args.box, dtype=np.float32).reshape(-1, 4) if args.box else None,
                          frame_boxes=frame_boxes, max_people=args.max_people,
                          **({} if args.batch_frames is None else {"batch_frames": args.batch_frames}))
    engine = make()
    result = ClipJob(engine, source, request, progress=_print_progress).run()
    check_clip(result)
    save(out, with_rig_arrays(result, engine.rig_data()))
    print(f"wrote {out}: {len(source)} frames, {len(result['track_ids'])} track(s), "
          f"{len(result['failed_frames'])} frame(s) skipped", file=sys.stderr)
    return 0


def _reconstruct_remote_clip(args: argparse.Namespace, client: Any, out: Path,
                             save: Callable[[Path, dict[str, Any]], None], n_frames: int,
                             frame_boxes: dict[int, np.ndarray] | None) -> int:
    from addon.protocol.result_file import with_rig_arrays

    with client:
        rid = client.send_clip(clip_path=os.path.abspath(args.image), mode=args.mode, start=args.start,
                               stop=args.stop, step=args.step, fps=args.fps, max_people=args.max_people,
                               boxes=args.box or None, intrinsics=args.intrinsics, upload=True,
                               frame_boxes=frame_boxes, batch_frames=args.batch_frames)
        client.send_clip_data(rid, lambda sent, total: print(
            f"uploading the clip: {sent / 1e6:.0f} of {total / 1e6:.0f} MB", file=sys.stderr, flush=True))
        result = client.wait_for(rid, "result", _print_progress).arrays
        rig = client.rig()
    check_clip(result)
    save(out, with_rig_arrays(result, rig))
    print(f"wrote {out}: {n_frames} frames, {len(result['track_ids'])} track(s), "
          f"{len(result['failed_frames'])} frame(s) skipped", file=sys.stderr)
    return 0
