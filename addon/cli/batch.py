# SPDX-License-Identifier: GPL-3.0-or-later
"""A folder of photos -> one rigged character scene per photo:
``python -m addon.cli PHOTOS_DIR --out-dir OUT [--fbx] [--glb] [options of the photo CLI]``.

One server start for the whole batch (the model stays resident). Every photo becomes
``OUT/<stem>.blend`` (+ ``.fbx`` / ``.glb``; with --recursive the subfolders are kept). A photo that
fails (unreadable, no person, too small) is reported with its reason and skipped; the others go
on. At the end: a summary table on stderr and ``OUT/batch.json`` (per photo: status, people,
seconds, outputs, error). Photos whose outputs are newer than the photo are skipped unless
--force. Exit codes: 0 every photo done or up to date, 3 some failed, 1 the batch itself failed
(the server would not start), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import queue
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..protocol import cli_args
from ..protocol.client import JobEvent, JobRunner
from .server_options import add_model_options, add_server_options, server_process
from .from_result import add_build_options, apply_options, new_scene, save_outputs

PROG = "python -m addon.cli PHOTOS_DIR --out-dir OUT"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".heic")
EXIT_SOME_FAILED = 3
SUMMARY_FILE = "batch.json"


@dataclass
class PhotoReport:
    photo: str
    status: str = "pending"          # done | skipped | failed
    people: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    error: str = ""


def is_batch(argv: Sequence[str]) -> bool:
    return any(a == "--out-dir" or a.startswith("--out-dir=") for a in argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reconstruct every photo of a folder "
                                     "with SAM 3D Body: one .blend (and FBX / glTF) per photo.")
    parser.add_argument("folder", metavar="PHOTOS_DIR", help="folder of photos")
    parser.add_argument("--out-dir", required=True, metavar="OUT", help="where the scenes go")
    parser.add_argument("--fbx", action="store_true", help="also export each photo's characters as FBX")
    parser.add_argument("--glb", action="store_true", help="also export each photo's characters as glTF")
    parser.add_argument("--glob", metavar="PATTERN", help="only file names matching this pattern "
                        "(e.g. 'IMG_*.jpg'; default: every image file)")
    parser.add_argument("--recursive", action="store_true", help="also the photos in subfolders")
    parser.add_argument("--force", action="store_true", help="redo photos whose outputs are up to date")
    add_model_options(parser)
    parser.add_argument("--mode", choices=("body", "full"), default="full")
    parser.add_argument("--intrinsics", type=cli_args.intrinsics, metavar="fx,fy,cx,cy",
                        help="camera intrinsics shared by every photo (pixels)")
    add_server_options(parser)
    add_build_options(parser)
    return parser


def find_photos(folder: Path, pattern: str | None, recursive: bool) -> list[Path]:
    """Image files of the folder, sorted by their path below it."""
    walk = folder.rglob("*") if recursive else folder.glob("*")
    photos = [p for p in walk if p.is_file() and not p.name.startswith(".")
              and (fnmatch.fnmatch(p.name, pattern) if pattern else p.suffix.lower() in IMAGE_SUFFIXES)]
    return sorted(photos, key=lambda p: p.relative_to(folder).as_posix())


def outputs_for(photo: Path, folder: Path, out_dir: Path, fbx: bool, glb: bool) -> dict[str, Path]:
    stem = out_dir / photo.relative_to(folder).with_suffix("")
    outs = {"blend": stem.with_suffix(".blend")}
    if fbx:
        outs["fbx"] = stem.with_suffix(".fbx")
    if glb:
        outs["glb"] = stem.with_suffix(".glb")
    return outs


def up_to_date(photo: Path, outputs: dict[str, Path]) -> bool:
    mtime = photo.stat().st_mtime
    return all(p.is_file() and p.stat().st_mtime >= mtime for p in outputs.values())


def wait_for(runner: JobRunner, job_id: int, progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The job's result arrays; RuntimeError with the server's reason when it failed."""
    while True:
        try:
            event: JobEvent = runner.events.get(timeout=1.0)
        except queue.Empty:
            continue
        if event.job_id != job_id:
            continue
        if event.kind == "progress":
            progress(event.fraction, event.message)
        elif event.kind == "result":
            return dict(event.data or {})
        else:
            code = f" [{event.code}]" if event.code else ""
            raise RuntimeError(f"{event.message}{code}")


def _scene_args(args: argparse.Namespace, outputs: dict[str, Path]) -> argparse.Namespace:
    """The per-photo namespace save_outputs/apply_options read (paths of this photo)."""
    ns = argparse.Namespace(**vars(args))
    ns.blend = str(outputs["blend"])
    ns.fbx = str(outputs["fbx"]) if "fbx" in outputs else None
    ns.glb = str(outputs["glb"]) if "glb" in outputs else None
    return ns


def build_one(args: argparse.Namespace, photo: Path, outputs: dict[str, Path], rig: dict[str, Any],
              result: dict[str, Any], stage: Callable[[str], None] = lambda message: None) -> int:
    """Build and save one photo's scene (each step named to ``stage``); returns the number of
    people."""
    from ..scene.apply import apply_result
    from ..scene.tags import tag_armatures

    outputs["blend"].parent.mkdir(parents=True, exist_ok=True)
    context = new_scene()
    created = apply_result(context, result, rig, image_path=str(photo), options=apply_options(args))
    tag_armatures(created, result, str(photo))
    save_outputs(context, _scene_args(args, outputs), created, stage)
    return sum(1 for obj in created if getattr(obj, "type", "") == "ARMATURE")


def summary_table(reports: Sequence[PhotoReport]) -> str:
    width = max([len("photo")] + [len(r.photo) for r in reports])
    lines = [f"{'photo':<{width}}  status   people  seconds  error",
             f"{'-' * width}  -------  ------  -------  -----"]
    for r in reports:
        lines.append(f"{r.photo:<{width}}  {r.status:<7}  {r.people:>6}  {r.seconds:>7.1f}  {r.error}")
    counts = {s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed")}
    lines.append(f"{len(reports)} photos: {counts['done']} done, {counts['skipped']} up to date, "
                 f"{counts['failed']} failed")
    return "\n".join(lines)


def _progress_bar(total: int) -> Any:
    try:
        tqdm = importlib.import_module("tqdm").tqdm  # by name: it ships no type stubs
    except ImportError:  # the plain per-photo lines below still say k/N
        return None
    return tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True)


def run_batch(args: argparse.Namespace, photos: list[Path], runner: JobRunner) -> list[PhotoReport]:
    folder, out_dir = Path(args.folder), Path(args.out_dir)
    reports = [PhotoReport(p.relative_to(folder).as_posix()) for p in photos]
    todo = []
    for photo, report in zip(photos, reports):
        outs = outputs_for(photo, folder, out_dir, args.fbx, args.glb)
        if not args.force and up_to_date(photo, outs):
            report.status, report.outputs = "skipped", [str(p) for p in outs.values()]
        else:
            todo.append((photo, report, outs))
    bar = _progress_bar(len(todo))
    people = 0
    rig: dict[str, Any] | None = None
    try:
        for k, (photo, report, outs) in enumerate(todo, start=1):
            start = time.monotonic()
            label = f"photo {k}/{len(todo)} {report.photo}"

            def progress(fraction: float, message: str, label: str = label) -> None:
                if bar is not None:
                    bar.set_description_str(f"{label}: {message}"[:60])
                else:
                    print(f"[{label}] {fraction * 100:3.0f}% {message}", file=sys.stderr, flush=True)

            try:
                if rig is None:
                    rig = wait_for(runner, runner.submit_rig().id, progress)
                request: dict[str, Any] = {"image_path": str(photo.resolve()), "mode": args.mode}
                if args.intrinsics:
                    request["intrinsics"] = list(args.intrinsics)
                result = wait_for(runner, runner.submit_reconstruct(**request).id, progress)
                progress(1.0, "building the scene")
                report.people = build_one(args, photo, outs, rig, result,
                                          lambda message: progress(1.0, message))
                report.status, report.outputs = "done", [str(p) for p in outs.values()]
                people += report.people
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                report.status, report.error = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"{report.photo}: skipped: {report.error}", file=sys.stderr, flush=True)
                if "[server_start]" in report.error:  # no server, no photo: stop here
                    for _, rest, _ in todo[k:]:
                        rest.status, rest.error = "failed", report.error
                    break
            report.seconds = round(time.monotonic() - start, 3)
            if bar is not None:
                bar.set_postfix(people=people, failed=sum(r.status == "failed" for r in reports))
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return reports


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"{parser.prog}: error: not a folder: {folder}", file=sys.stderr)
        return 2
    if args.checkpoint and not os.path.isdir(args.checkpoint):
        print(f"{parser.prog}: error: --checkpoint folder not found: {args.checkpoint}", file=sys.stderr)
        return 2
    from .retarget_options import check_retarget

    problem = check_retarget(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    photos = find_photos(folder, args.glob, args.recursive)
    if not photos:
        print(f"{parser.prog}: error: no photos in {folder}"
              + (f" matching {args.glob!r}" if args.glob else ""), file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{parser.prog}: error: cannot create {out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    runner = JobRunner(server_process(args))
    try:
        reports = run_batch(args, photos, runner)
    except KeyboardInterrupt:
        return 130
    finally:
        runner.stop()
    summary = {"folder": str(folder.resolve()), "photos": [asdict(r) for r in reports]}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    print(summary_table(reports), file=sys.stderr)
    failed = [r for r in reports if r.status == "failed"]
    if failed and all("[server_start]" in r.error for r in failed):
        code = 1  # the server never started: nothing was tried
    else:
        code = EXIT_SOME_FAILED if failed else 0
    if args.glb and "torch" in sys.modules:  # see from_result.leave_if_gltf_would_hang
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
