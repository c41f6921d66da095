# SPDX-License-Identifier: GPL-3.0-or-later
"""Socket round-trip overhead of one reconstruct request, beyond inference.

Starts ``python -m server serve`` with a zero-cost engine (this module's `make_engine`: it
returns a prepared Result of realistic size, full mode, one person, MHR's 18439 vertices and
36874 faces) and times, on loopback:

* ``bytes``: a 12 MP JPEG sent as file bytes (frame encode + send + server-side JPEG decode to
  RGB + result frame back + decode), the add-on's default;
* ``path``: the same JPEG by server-side path (decode on the server only);
* ``pixels``: the 12 MP image as raw RGB (36 MB on the wire, no JPEG decode);
* the JPEG decode alone (server.imageio.load_image), to split the numbers.

Usage: python scripts/bench_roundtrip.py [--repeat 10] [--width 4000 --height 3000]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VERTICES, FACES, JOINTS = 18439, 36874, 127


class PreparedEngine:
    """Returns the same realistic-size Result at once: the time measured is the transport."""

    info = {"model": "bench/prepared-result", "variant": "none", "device": "cpu",
            "dtype": "float32"}

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        f32 = lambda *shape: rng.standard_normal((1, *shape)).astype(np.float32)  # noqa: E731
        self.result = {
            "pred_vertices": f32(VERTICES, 3), "pred_keypoints_3d": f32(70, 3),
            "pred_keypoints_2d": f32(70, 2), "pred_cam_t": f32(3), "focal_length": f32(),
            "pred_joint_coords": f32(JOINTS, 3), "pred_global_rots": f32(JOINTS, 3, 3),
            "global_rot": f32(3), "body_pose_params": f32(133), "hand_pose_params": f32(108),
            "shape_params": f32(45), "scale_params": f32(28), "expr_params": f32(72),
            "mhr_model_params": f32(204), "pred_pose_raw": f32(266), "bbox": f32(4),
            "lhand_bbox": f32(4), "rhand_bbox": f32(4),
            "faces": rng.integers(0, VERTICES, (FACES, 3)).astype(np.int32),
            "cam_int": np.eye(3, dtype=np.float32), "image_size": np.array([1, 1], np.int32),
            "intrinsics_source": np.array("default"), "mode": np.array("full"),
            "mhr_skel_state": f32(JOINTS, 8), "mhr_vertices": f32(VERTICES, 3),
            "mhr_rest_vertices": f32(VERTICES, 3), "mhr_rest_skel_state": f32(JOINTS, 8),
        }

    def rig_data(self) -> dict:
        raise NotImplementedError("the benchmark engine has no rig")

    def reconstruct(self, request, progress=lambda f, s: None, cancelled=lambda: False) -> dict:
        progress(0.5, "prepared")
        return self.result


def make_engine(**_: object) -> PreparedEngine:
    return PreparedEngine()


# The server imports this file as `scripts.bench_roundtrip` and takes the request type from the
# module that provides the engine factory; the prepared engine ignores the request.
def ReconstructRequest(**fields: object) -> dict:  # noqa: N802 (the name the server looks up)
    return fields


def make_jpeg(width: int, height: int) -> bytes:
    """A photo-like 12 MP JPEG (smooth shapes plus sensor noise), quality 92."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(1)
    channels = []
    for c in range(3):
        base = 128 + 60 * np.sin(x / (150 + 40 * c)) * np.cos(y / (110 + 30 * c))
        channels.append(base + rng.normal(0, 6, (height, width)))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up (first connection, page faults)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(f"{name:<44} median {statistics.median(ms):8.1f} ms   min {ms[0]:8.1f} ms   "
          f"max {ms[-1]:8.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()

    from addon.protocol.client import ServerProcess
    from server import imageio

    jpeg = make_jpeg(args.width, args.height)
    pixels, _ = imageio.load_image(jpeg)
    engine = PreparedEngine()
    result_bytes = sum(np.asarray(v).nbytes for v in engine.result.values())
    print(f"image {args.width}x{args.height} = {args.width * args.height / 1e6:.1f} MP, "
          f"JPEG {len(jpeg) / 1e6:.2f} MB, RGB {pixels.nbytes / 1e6:.1f} MB; "
          f"result {len(engine.result)} arrays, {result_bytes / 1e6:.2f} MB")

    server = ServerProcess(sys.executable, root=ROOT, device="cpu",
                           extra_args=["--engine", "scripts.bench_roundtrip:make_engine"],
                           ready_timeout=120)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(jpeg)
        try:
            with server.client(timeout=60) as client:
                decode = timed(lambda: imageio.load_image(jpeg), args.repeat)
                report("JPEG decode alone (imageio.load_image)", decode)
                via_bytes = timed(lambda: client.reconstruct(image_bytes=jpeg), args.repeat)
                report("round trip, JPEG bytes (incl. decode)", via_bytes)
                report("round trip, server-side path (incl. decode)",
                       timed(lambda: client.reconstruct(image_path=path), args.repeat))
                report("round trip, raw RGB pixels (no decode)",
                       timed(lambda: client.reconstruct(image=pixels), args.repeat))
                tiny = np.zeros((2, 2, 3), np.uint8)
                report("round trip, 2x2 image (result frame only)",
                       timed(lambda: client.reconstruct(image=tiny), args.repeat))
                report("connect + hello",
                       timed(lambda: server.client(timeout=10).close(), args.repeat))
        finally:
            server.stop()
    overhead = statistics.median(via_bytes) - statistics.median(decode)
    print(f"overhead beyond inference and JPEG decode (JPEG bytes, medians): "
          f"{overhead * 1000:.1f} ms")
    print(f"(python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
