"""Headless clip -> animated characters: ``python -m addon.cli CLIP.mp4 --blend OUT.blend [--fbx OUT.fbx]``.

The clip runs through ``<python> -m server reconstruct CLIP --out RESULT.npz`` (the server's
clip job: tracking, shape lock) in a subprocess, its per-frame progress shown as a bar; then
`apply_clip` builds one keyed character per tracked person and the camera with the clip as its
background movie. A folder of images given with ``--blend`` is an image-sequence clip (with
``--out-dir`` it is a batch of photos). ``--keep-result X.npz`` keeps the clip result, which
``python -m addon.cli --from-result X.npz --blend ...`` rebuilds with other smoothing options.

Exit codes: 0 done, 1 the reconstruction or the build failed, 2 bad arguments, 130 cancelled.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from ..protocol import cli_args
from ..protocol.clip_result import is_video_file
from ..protocol.sequence import is_clip_source, is_sequence_pattern
from .clip_scene import add_motion_options, build
from .from_result import add_build_options, check_outputs, leave_if_gltf_would_hang, new_scene
from .server_options import DEFAULT_REPO, add_model_options, precision_args

PROG = "python -m addon.cli CLIP"
_PROGRESS = re.compile(r"^\[\s*(\d+)%\] frame (\d+)/(\d+)")


def is_clip_argv(argv: Sequence[str]) -> bool:
    """The first positional argument is a movie file, or a folder without --out-dir."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None:
        return False
    if is_video_file(first) or (is_sequence_pattern(first) and not os.path.exists(first)):
        return True
    return os.path.isdir(first) and not any(a == "--out-dir" or a.startswith("--out-dir=") for a in argv)


def add_clip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=cli_args.int_at_least(0), default=0, metavar="N",
                        help="first frame (0-based)")
    parser.add_argument("--stop", type=cli_args.int_at_least(1), metavar="N", help="stop before this frame")
    parser.add_argument("--step", type=cli_args.int_at_least(1), default=1, metavar="N", help="every N-th frame")
    parser.add_argument("--fps", type=cli_args.positive_float,
                        help="frame rate (default: the movie's; 24 for images)")
    parser.add_argument("--max-people", type=cli_args.int_at_least(1), metavar="N",
                        help="track at most N people")
    parser.add_argument("--box", type=cli_args.box, action="append", default=[], metavar="x1,y1,x2,y2",
                        help="person box on the first frame (repeat for several people)")
    parser.add_argument("--track-boxes", metavar="BOXES.json",
                        help='boxes per frame from another tracker: {"FRAME": [[x1,y1,x2,y2], ...]}')
    parser.add_argument("--intrinsics", type=cli_args.intrinsics, metavar="fx,fy,cx,cy",
                        help="camera intrinsics in pixels")
    add_motion_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reconstruct the people of a video clip "
                                     "with SAM 3D Body as animated, rigged characters in a .blend.")
    parser.add_argument("clip", metavar="CLIP", help="movie file (mp4, mov, mkv, webm, avi) or image folder")
    add_model_options(parser)
    parser.add_argument("--mode", choices=("body", "full"), default="body",
                        help="body (default: the fast mode for clips) or full (hands refined)")
    add_clip_options(parser)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--precision", choices=("auto", "official", "fp32", "fast"), default="auto")
    parser.add_argument("--python", metavar="PATH", default=sys.executable,
                        help="Python that runs the server (default: this one)")
    parser.add_argument("--keep-result", metavar="RESULT.npz", help="also keep the clip result file")
    parser.add_argument("--blend", required=True, metavar="OUT.blend")
    parser.add_argument("--fbx", metavar="OUT.fbx", help="also export the animated characters as FBX")
    parser.add_argument("--glb", metavar="OUT.glb", help="also export them as glTF with animation")
    add_build_options(parser)
    return parser


def server_command(args: argparse.Namespace, out: str) -> list[str]:
    cmd = [args.python, "-m", "server", "reconstruct", os.path.abspath(args.clip), "--out", out,
           "--mode", args.mode, "--device", args.device, "--start", str(args.start), "--step", str(args.step)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    else:
        cmd += ["--repo", args.repo or DEFAULT_REPO]
    for flag in ("mhr", "stop", "fps", "max_people", "track_boxes"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    for box in args.box:
        cmd.append("--box=" + ",".join(f"{v:g}" for v in box))
    if args.intrinsics:
        cmd.append("--intrinsics=" + ",".join(f"{v:g}" for v in args.intrinsics))
    return cmd + precision_args(args.precision)


def run_server(cmd: list[str]) -> None:
    """Run the clip job, its frame progress as a bar (tqdm) and its other lines as they come."""
    from ..protocol.client import project_root  # the folder holding addon/ and server/

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root()), env.get("PYTHONPATH")) if p)
    bar = None
    tail: list[str] = []
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                match = _PROGRESS.match(line)
                if match:
                    done, total = int(match.group(2)), int(match.group(3))
                    if bar is None:
                        import importlib

                        tqdm = importlib.import_module("tqdm").tqdm  # by name: it ships no type stubs
                        bar = tqdm(total=total, unit="frame", file=sys.stderr)
                    bar.update(done - bar.n)
                    continue
                tail = (tail + [line.rstrip()])[-20:]
                if line.startswith("error") or " WARNING " in line:
                    print(line.rstrip(), file=sys.stderr)
        except KeyboardInterrupt:
            proc.terminate()
            raise
        finally:
            if bar is not None:
                bar.close()
    if proc.returncode != 0:
        raise RuntimeError("the clip reconstruction failed:\n" + "\n".join(tail))


def _has_images(folder: str) -> bool:
    from ..protocol.clip_result import IMAGE_SUFFIXES

    return any(os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES for name in os.listdir(folder))


def main(argv: Sequence[str]) -> int:
    from .from_result import save_outputs

    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_outputs(args)
    if not is_clip_source(args.clip):
        problem = problem or f"clip not found: {args.clip}"
    elif os.path.isdir(args.clip) and not _has_images(args.clip):
        problem = problem or (f"{args.clip} holds no images: give a movie file, a folder of numbered "
                              "frames (an image sequence), or a folder of photos with --out-dir OUT (a batch)")
    if args.checkpoint and not os.path.isdir(args.checkpoint):
        problem = problem or f"--checkpoint folder not found: {args.checkpoint}"
    if args.stop is not None and args.stop <= args.start:
        problem = problem or f"--stop {args.stop} must come after --start {args.start}"
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sam3d_clip_") as tmp:
        out = os.path.abspath(args.keep_result) if args.keep_result else os.path.join(tmp, "clip.npz")
        try:
            run_server(server_command(args, out))
            context = new_scene()
            created = build(context, out, os.path.abspath(args.clip), args)
            save_outputs(context, args, created)
        except KeyboardInterrupt:
            return 130
        except (ValueError, RuntimeError, OSError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    leave_if_gltf_would_hang(args)
    return 0
