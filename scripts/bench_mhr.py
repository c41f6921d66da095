"""MHR forward cost per call: Meta's TorchScript, our native forward, and the native forward
restricted to the vertices the 70 keypoints read (what intermediate decoder layers run).

    .venv/bin/python scripts/bench_mhr.py [--mhr PATH] [--device cpu|cuda] [--batch N]
                                          [--hidden 3000] [--repeat 20]

Prints milliseconds per call (median) and aten operations per call (each one is a kernel launch
on a GPU). `--hidden H` replaces the stand-in's small corrective layer (24 hidden units) by a
random one of the real model's size (real LOD1: 55,317 x H dense, 664 MB at H = 3000) so that
the corrective cost is realistic; its values are random, so only timings mean anything.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.mhr.forward import MHRBody  # noqa: E402
from server.mhr.torchscript import load_mhr  # noqa: E402

STANDIN = ROOT.parent / "shared" / "fixtures" / "mhr-standin" / "mhr_standin_lod1.pt"


def with_hidden(body: MHRBody, hidden: int) -> MHRBody:
    """The same body with a random corrective layer of `hidden` units (real-size timing)."""
    g = torch.Generator().manual_seed(0)
    n_feat = 6 * (body.num_joints - 2)
    fan_in = 8
    out_idx = torch.arange(hidden).repeat_interleave(fan_in)
    in_idx = torch.randint(0, n_feat, (hidden * fan_in,), generator=g)
    return MHRBody(
        joint_parents=body.joint_parents, joint_offsets=body.joint_offsets,
        joint_prerotations=body.joint_prerotations, parameter_transform=body.parameter_transform,
        inverse_bind_pose=body.inverse_bind_pose, skin_joints=body.skin_joints,
        skin_vertices=body.skin_vertices, skin_weights=body.skin_weights, base_shape=body.base_shape,
        identity_shapes=body.identity_shapes, expression_shapes=body.expression_shapes, faces=body.faces,
        corrective_indices=torch.stack([out_idx, in_idx]),
        corrective_weights=torch.randn(hidden * fan_in, generator=g) * 0.1,
        corrective_hidden=hidden,
        corrective_dense=torch.randn(body.num_vertices * 3, hidden, generator=g) * 1e-3)


def timed(fn, repeat: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def op_count(fn) -> int:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mhr", default=str(STANDIN))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=0, help="random corrective layer of this size")
    parser.add_argument("--keypoint-vertices", type=int, default=200,
                        help="vertices the 70 keypoints read (the fixtures' LOD1 mapping: ~200)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    ts = load_mhr(args.mhr, "cpu")
    native = MHRBody.from_torchscript(ts)
    if args.hidden:
        native = with_hidden(native, args.hidden)
    g = torch.Generator().manual_seed(1)
    subset = native.restricted_to(torch.randperm(native.num_vertices, generator=g)[:args.keypoint_vertices])
    ts.to(device)
    native.to(device)
    subset.to(device)
    params = torch.randn(args.batch, 204, generator=g, dtype=torch.float32).mul(0.1).to(device)
    shape = torch.randn(args.batch, 45, generator=g).to(device)
    expr = torch.zeros(args.batch, 72, device=device)
    rows = [("torchscript (as shipped)", lambda: ts(shape, params, expr))] if not args.hidden else []
    rows += [("native", lambda: native(shape, params, expr)),
             (f"native, {args.keypoint_vertices} keypoint vertices", lambda: subset(shape, params, expr))]
    print(f"MHR {Path(args.mhr).name}, {native.num_vertices} vertices, corrective hidden "
          f"{native.corrective_hidden}, device {device}, batch {args.batch}, threads {torch.get_num_threads()}")
    with torch.inference_mode():
        for name, fn in rows:
            print(f"  {name:<40} {timed(fn, args.repeat, device):8.2f} ms   {op_count(fn):5d} aten ops")


if __name__ == "__main__":
    main()
