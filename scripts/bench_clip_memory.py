"""Memory a clip job holds on the server: `.venv/bin/python scripts/bench_clip_memory.py [N]`.

Runs N person-frames through server/video/clip.py (the model's answer for one frame computed
once and reused, so only the clip job's own arrays count: tracking, shape lock, correctives) and
prints the peak numpy memory (tracemalloc) with the rows streamed to a sink, as the server sends
them, and with the rows joined in the job, as `python -m server reconstruct CLIP` keeps them.
Needs ../shared/fixtures/parity (the tiny checkpoint and the MHR stand-in).
"""
from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(n_rows: int) -> None:
    from PIL import Image

    from server.engine import ReconstructRequest, load_engine
    from server.video.bench_clip import MemoryClip
    from server.video.clip import ClipJob, ClipRequest

    parity = ROOT.parent / "shared" / "fixtures" / "parity"
    with tempfile.TemporaryDirectory() as cache:
        engine = load_engine(checkpoint=str(parity / "checkpoints" / "dinov3_tiny"), device="cpu",
                             detector=None, cache_dir=cache)
    image = np.asarray(Image.open(parity / "images" / "astronaut.png").convert("RGB"))
    box = np.array([[40.0, 20.0, 470.0, 500.0]], np.float32)
    answer = engine.reconstruct(ReconstructRequest(image=image, boxes=box, mode="body"))

    class Replay:  # the engine's interface to the clip job, the model pass replaced
        mhr, device = engine.mhr, engine.device

        def _detector(self) -> None:
            return None

        def reconstruct(self, request: ReconstructRequest, **_: object) -> dict[str, np.ndarray]:
            return {k: np.array(v, copy=True) for k, v in answer.items()}

    def job(n: int, sink=None) -> ClipJob:
        return ClipJob(Replay(), MemoryClip([image] * n),
                       ClipRequest(mode="body", frame_boxes={i: box for i in range(n)}), sink=sink)

    job(3).run()  # imports and first-call allocations out of the measurement
    sent = [0]
    for label in ("streamed", "joined"):
        sink = (lambda start, arrays, total: sent.__setitem__(0, sent[0] + sum(a.nbytes for a in arrays.values()))
                ) if label == "streamed" else None
        tracemalloc.start()
        t0 = time.perf_counter()
        result = job(n_rows, sink).run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows = sent[0] if label == "streamed" else sum(result[k].nbytes for k in result if k in (
            "frame", "track", "pred_cam_t", "mhr_skel_state", "mhr_model_params", "shape_params", "expr_params",
            "pred_keypoints_2d", "pred_keypoints_3d", "bbox", "focal_length", "corrective_weights"))
        print(f"{label:9s} {n_rows} person-frames: peak {peak / 2**20:6.1f} MiB for {rows / 2**20:.1f} MiB "
              f"of rows, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
