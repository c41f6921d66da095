"""`python -m server bench`: per-stage wall times and peak memory of one reconstruction.

Stages (server/profiling.py marks them in the pipeline; a parent includes its children):
  crop       body crops (warp, normalisation, upload)
  backbone   body-crop backbone
  decoder    body decoder incl. its per-layer MHR calls (and a user keypoint-prompt pass)
  hands      full mode: hand crops, hand backbone + decoder passes, wrist/elbow re-prompt, merge
  skeleton   the engine's self-consistent MHR forward (Result skeleton arrays)
  total      Engine.reconstruct end to end
Times are medians over `--repeat` warm runs (one unmeasured warm-up run first). Peak memory:
CUDA `torch.cuda.max_memory_allocated` over the measured runs; elsewhere the process's RSS
high-water mark (`resource.getrusage`, which includes loading the model).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

STAGES = ("crop", "backbone", "decoder", "hands", "hands/crop", "hands/backbone", "hands/decoder",
          "hands/merge", "skeleton")
_SHARED_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity" / "images" / "astronaut.png"
TILE = 512  # px per person in the synthetic bench image
TILE_BOX = (20.0, 10.0, 370.0, 512.0)  # the parity fixtures' person box in a tile


def add_bench_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to the `python -m server` subparsers."""
    bench = commands.add_parser("bench", help="time the pipeline stages and report peak memory")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="official checkpoint folder")
    source.add_argument("--random-full", choices=("dinov3", "vith"),
                        help="full-size model with random weights (DINOv3 ViT-H+ 840M or ViT-H 631M "
                             "backbone, LOD1 MHR stand-in)")
    bench.add_argument("--mhr", metavar="PATH", help="mhr_model.pt (default: from the checkpoint / the "
                                                      "LOD1 stand-in for --random-full)")
    bench.add_argument("--mode", default="full", choices=("body", "full"))
    bench.add_argument("--persons", type=int, default=1, help="people in the synthetic image (default 1)")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    bench.add_argument("--repeat", type=int, default=3, help="measured runs (default 3), median reported")
    bench.add_argument("--precision", default=None, choices=("official", "fast", "fp32"),
                       help="numeric precision (default: fast = fp32 off CUDA)")
    bench.add_argument("--mhr-backend", default="auto", choices=("auto", "torchscript", "native"),
                       help="MHR implementation (server.engine.resolve_mhr_backend)")
    bench.add_argument("--image", metavar="PATH",
                       help="person image tiled --persons times (default: the parity astronaut)")
    bench.add_argument("--cache-dir", metavar="DIR", help="safetensors cache of the checkpoint")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--deviation", action="store_true",
                       help="instead of timing: run fp32, official, fast-fp16 and fast-bf16 (autocast, "
                            "on any device) and print each one's deviation from fp32")
    bench.add_argument("--video", type=int, metavar="FRAMES",
                       help="instead of one image: a synthetic clip of FRAMES frames through the clip job; "
                            "reports person-frames per second")
    bench.add_argument("--batch-frames", type=int, default=None, metavar="N",
                       help="with --video: frames per model pass (default: the clip job's, 8 on "
                            "a GPU, 1 on a CPU; 1 = one frame at a time)")
    return bench


def bench_image(persons: int, image_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image of `persons` tiles side by side, (persons, 4) xyxy boxes)."""
    if persons < 1:
        raise ValueError(f"--persons must be at least 1, got {persons}")
    path = Path(image_path) if image_path else _SHARED_IMAGE
    if path.is_file():
        from server.imageio import load_image
        import cv2

        tile = cv2.resize(load_image(str(path))[0], (TILE, TILE), interpolation=cv2.INTER_AREA)
    elif image_path:
        raise FileNotFoundError(f"--image {image_path} not found")
    else:
        # No fixture image: a smooth deterministic pattern (the timings do not depend on content).
        y, x = np.mgrid[0:TILE, 0:TILE] / TILE
        tile = (np.stack([x, y, (x + y) / 2], axis=-1) * 255).astype(np.uint8)
    image = np.ascontiguousarray(np.concatenate([tile] * persons, axis=1))
    boxes = np.array([[TILE_BOX[0] + TILE * i, TILE_BOX[1], TILE_BOX[2] + TILE * i, TILE_BOX[3]]
                      for i in range(persons)], dtype=np.float32)
    return image, boxes


def load_bench_engine(args: argparse.Namespace) -> Any:
    """The Engine to time: a checkpoint folder or the random full-size model."""
    from server.engine import Engine, load_engine, pick_device, resolve_mhr_backend, use_mhr_backend
    from server.precision import apply_precision, check_precision

    if args.checkpoint:
        # --deviation switches between every mode, which needs the fp32 weights (`fast` on a
        # bf16 CPU would load the backbone's Linear weights in bf16 only).
        return load_engine(checkpoint=args.checkpoint, mhr=args.mhr, device=args.device,
                           cache_dir=args.cache_dir,
                           precision="fp32" if getattr(args, "deviation", False) else args.precision,
                           mhr_backend=args.mhr_backend)
    from server.bench_model import DEFAULT_STANDIN, build_random_full_model
    from server.checkpoint import CheckpointFiles

    dev = pick_device(args.device)
    precision = check_precision(args.precision, dev)
    model, cfg = build_random_full_model(args.random_full, mhr_path=args.mhr)
    backend = resolve_mhr_backend(args.mhr_backend, precision, dev)
    use_mhr_backend(model, backend)
    model.to(dev).eval()
    dtypes = apply_precision(model, precision, dev)
    mhr = Path(args.mhr or DEFAULT_STANDIN)
    files = CheckpointFiles(checkpoint=Path("<random>"), config=Path("<generated>"), mhr=mhr,
                            source=f"random-full-{args.random_full}")
    engine = Engine(model, cfg, files, dev)
    engine.info.update(precision=precision, dtype=dtypes["backbone"], mhr_backend=backend)
    if dev.type == "cpu":
        from server.cpu_features import describe

        engine.info["cpu_bf16"] = describe()
    return engine


def peak_memory_text(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (torch.cuda.max_memory_allocated)"
    try:
        import resource
    except ImportError:  # Windows
        return "n/a (no resource module on this platform)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB
    return f"{peak_bytes / 2**20:.0f} MiB (process RSS high-water mark)"


def run_bench(engine: Any, image: np.ndarray, boxes: np.ndarray, mode: str, repeat: int) -> dict[str, Any]:
    """Warm-up + `repeat` timed runs; {"stages": {path: median s}, "counts", "runs": [...]}."""
    import torch

    from server.engine import ReconstructRequest
    from server.profiling import StageRecorder

    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    device = engine.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    request = ReconstructRequest(image=image, boxes=boxes, mode=mode, detect=False)
    engine.reconstruct(request)  # warm-up: lazy inits, allocator, kernel selection
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs: list[dict[str, float]] = []
    counts: dict[str, int] = {}
    for _ in range(repeat):
        with StageRecorder(sync=sync) as rec:
            start = rec.clock()
            engine.reconstruct(request)
            total = rec.clock() - start
        times = dict(rec.times)
        times["total"] = total
        runs.append(times)
        counts = dict(rec.counts)
    names = sorted({k for r in runs for k in r})
    medians = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in names}
    return {"stages": medians, "counts": counts, "runs": runs, "peak_memory": peak_memory_text(device)}


DEVIATION_MODES = (("official", None), ("fast", "float16"), ("fast", "bfloat16"))


def _deviation(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    verts = np.linalg.norm(got["pred_vertices"].astype(np.float64) - ref["pred_vertices"], axis=-1) * 1000
    kp2d = np.linalg.norm(got["pred_keypoints_2d"].astype(np.float64) - ref["pred_keypoints_2d"], axis=-1)
    return {"vert_max_mm": float(verts.max()), "vert_mean_mm": float(verts.mean()),
            "kp2d_max_px": float(kp2d.max()), "kp2d_mean_px": float(kp2d.mean())}


def precision_deviation(engine: Any, image: np.ndarray, boxes: np.ndarray, mode: str) -> list[tuple[str, dict, float]]:
    """[(label, deviation from fp32, seconds)] for each of DEVIATION_MODES on the same weights.

    The fp32 backbone weights are kept aside and restored between modes, so `official`'s fp16
    rounding never leaks into the next mode."""
    import torch

    from server.engine import ReconstructRequest
    from server.precision import apply_precision

    model, device = engine.model, engine.device
    request = ReconstructRequest(image=image, boxes=boxes, mode=mode, detect=False)
    apply_precision(model, "fp32", device)
    fp32_backbone = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    def timed() -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        out = engine.reconstruct(request)
        return out, time.perf_counter() - start

    engine.reconstruct(request)  # warm-up, so that the fp32 time is comparable
    ref, ref_s = timed()
    rows = [("fp32", _deviation(ref, ref), ref_s)]
    for precision, autocast in DEVIATION_MODES:
        dtype = getattr(torch, autocast) if autocast else None
        try:
            apply_precision(model, precision, device, fast_dtype=dtype)
            out, seconds = timed()
            rows.append((f"{precision}" + (f" ({autocast} autocast)" if autocast else ""), _deviation(ref, out), seconds))
        finally:
            apply_precision(model, "fp32", device)
            model.backbone.load_state_dict(fp32_backbone)
    return rows


def format_deviation(rows: list[tuple[str, dict, float]]) -> str:
    lines = [f"{'mode':<28}{'vert max mm':>12}{'vert mean mm':>13}{'kp2d max px':>12}{'kp2d mean px':>13}{'seconds':>9}"]
    for label, d, seconds in rows:
        lines.append(f"{label:<28}{d['vert_max_mm']:>12.4f}{d['vert_mean_mm']:>13.4f}{d['kp2d_max_px']:>12.4f}"
                     f"{d['kp2d_mean_px']:>13.4f}{seconds:>9.2f}")
    return "\n".join(lines)


def format_report(engine: Any, args: argparse.Namespace, result: dict[str, Any]) -> str:
    stages = result["stages"]
    lines = [
        f"model      {engine.info['model']} ({engine.info['variant']})",
        f"device     {engine.device}  precision {engine.info.get('precision')} (backbone {engine.info.get('dtype')})"
        f"  MHR {engine.info.get('mhr_backend', 'torchscript')}",
        *([f"cpu        {engine.info['cpu_bf16']}"] if "cpu_bf16" in engine.info else []),
        *([f"crop warp  {engine.info['crop_warp']}"] if "crop_warp" in engine.info else []),
        f"mode       {args.mode}, {args.persons} person(s), median of {args.repeat} warm run(s)",
        f"{'stage':<16}{'seconds':>10}{'calls':>7}",
    ]
    for name in (*STAGES, *sorted(k for k in stages if k not in STAGES and k != "total"), "total"):
        indent = "  " if "/" in name else ""
        calls = result["counts"].get(name, 0) if name != "total" else 1
        lines.append(f"{indent + name:<16}{stages.get(name, 0.0):>10.4f}{calls:>7}")
    lines.append(f"peak memory  {result['peak_memory']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry point of `python -m server bench` (args from `add_bench_parser`)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    image, boxes = bench_image(args.persons, args.image)
    t0 = time.perf_counter()
    engine = load_bench_engine(args)
    load_s = time.perf_counter() - t0
    if args.deviation:
        print(f"model {engine.info['model']} ({engine.info['variant']}), {args.mode}, {args.persons} person(s), "
              f"device {engine.device}; deviation from fp32")
        print(format_deviation(precision_deviation(engine, image, boxes, args.mode)))
        return 0
    if args.video:
        from server.video.bench_clip import run_video_bench

        clip = run_video_bench(engine, image, boxes, args.mode, args.video, args.batch_frames)
        print(f"model      {engine.info['model']} ({engine.info['variant']}), device {engine.device}, "
              f"precision {engine.info.get('precision')}, mode {args.mode}")
        if "crop_warp" in engine.info:
            print(f"crop warp  {engine.info['crop_warp']}")
        print(f"video      {clip['frames']:.0f} frames x {args.persons} person(s) = {clip['person_frames']:.0f} "
              f"person-frames, {clip['tracks']:.0f} track(s) in {clip['seconds']:.2f} s: "
              f"{clip['person_frames_per_s']:.2f} person-frames/s ({clip['batch_frames']:.0f} frame(s) per pass; "
              f"the next pass's crops {'during' if clip['crops_overlapped'] else 'after'} each pass)")
        if clip["host_reads_per_pass"] == clip["host_reads_per_pass"]:  # not NaN: body mode
            print(f"host reads {clip['host_reads_per_pass']:.0f} in one model pass of "
                  f"{clip['batch_frames']:.0f} frame(s): the GPU waits on each; fixed, whatever the frames and people")
        print(f"peak memory  {peak_memory_text(engine.device)}")
        return 0
    result = run_bench(engine, image, boxes, args.mode, args.repeat)
    print(format_report(engine, args, result))
    print(f"load         {load_s:.2f} s; torch threads {torch.get_num_threads()}")
    return 0


def standalone(argv: Sequence[str] | None = None) -> int:
    """`python -m server.bench ...` without the server CLI (same arguments)."""
    parser = argparse.ArgumentParser(prog="python -m server")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return main(parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(standalone())
