"""Time apply_result() (rig math + bpy build) for 1 and 10 persons on the MHR stand-in.

    .venv/bin/python scripts/bench_rig_build.py [--model PT] [--samples DIR] [--repeat N]

The MHR forward (server side) runs once up front and is not timed; the timing covers what the
add-on does when a result arrives: validation, rest/pose math, mesh, armature, vertex groups,
pose, optional corrective shape key, camera. Each run starts from an empty factory scene.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAM3D_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))

# Keep Blender away from the user's configuration (as tests/conftest.py does).
_user = tempfile.mkdtemp(prefix="sam3d-bench-user-")
os.environ.setdefault("BLENDER_USER_RESOURCES", _user)
os.environ.setdefault("BLENDER_USER_CONFIG", os.path.join(_user, "config"))
os.environ.setdefault("BLENDER_USER_SCRIPTS", os.path.join(_user, "scripts"))


def make_inputs(model_path: Path, samples: Path, n_persons: int) -> tuple[dict, dict]:
    import torch

    from server.mhr.rig_data import person_rig_state, rig_data_from_mhr

    module = torch.jit.load(str(model_path), map_location="cpu").eval()
    rig = rig_data_from_mhr(module)
    names = sorted(p.stem for p in samples.glob("img_subj*.npz"))
    if not names:
        raise SystemExit(f"no img_subj*.npz samples in {samples}")
    per = []
    for i in range(n_persons):
        with np.load(samples / f"{names[i % len(names)]}.npz") as d:
            p = {k: d[k].astype(np.float32) for k in ("mhr_model_params", "shape_params",
                                                       "expr_params", "pred_cam_t")}
        p["pred_cam_t"] = p["pred_cam_t"] + np.float32(0.9 * i) * np.array([1, 0, 0], np.float32)
        per.append(p)
    result = {k: np.stack([p[k] for p in per]) for k in per[0]}
    result.update(person_rig_state(module, result["mhr_model_params"], result["shape_params"],
                                   result["expr_params"]))
    f = 2535.27  # the samples' solved focal length (px) for a 1920x890 photo
    result["focal_length"] = np.full(n_persons, f, np.float32)
    result["cam_int"] = np.array([[f, 0, 960], [0, f, 445], [0, 0, 1]], np.float32)
    result["image_size"] = np.array([1920, 890], np.int32)
    return rig, result


def bench(rig: dict, result: dict, correctives: bool, repeat: int,
          proportions: str = "baked") -> list[float]:
    import bpy

    from addon.scene.apply import apply_result

    times = []
    for _ in range(repeat):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        t0 = time.perf_counter()
        apply_result(bpy.context, result, rig,
                     options={"correctives": correctives, "proportions": proportions})
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED / "fixtures/mhr-standin/mhr_standin_lod1.pt")
    ap.add_argument("--samples", type=Path, default=SHARED / "data/mhr")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"MHR TorchScript not found: {args.model}")
    inputs = {n: make_inputs(args.model, args.samples, n) for n in (1, 10)}
    import bpy

    print(f"bpy {bpy.app.version_string}, numpy {np.__version__}, "
          f"{len(inputs[1][0]['template_vertices'])} vertices, {args.repeat} runs each (median)")
    for proportions in ("baked", "exact"):
        for n, (rig, result) in inputs.items():
            for correctives in (False, True):
                t = bench(rig, result, correctives, args.repeat, proportions)
                print(f"proportions={proportions} persons={n:2d} "
                      f"correctives={'on ' if correctives else 'off'} "
                      f"build {statistics.median(t):.3f} s (min {min(t):.3f}, max {max(t):.3f})")


if __name__ == "__main__":
    main()
