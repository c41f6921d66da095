"""Measure how far every parity quantity lands from Meta's fixtures on each CPU kernel path.

Runs the parity tests once per kernel path (ATEN_CPU_CAPABILITY, oneDNN on/off, 1 or 2 threads)
with SAM3D_TOL_MEASURE=1 (record, never fail) and prints, per tolerance class of
tests/tolerances.py, the worst error on each path, the tolerance and the margin. The table in
docs/TOLERANCES.md is this script's output.

    .venv/bin/python scripts/measure_tolerances.py [--out table.md] [--jobs-k EXPR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY_TESTS = ["tests/engine", "tests/pipeline", "tests/bench/test_precision.py",
                "tests/e2e/test_cli_paths.py::test_reconstruct_writes_the_documented_contract",
                "tests/e2e/test_cli_paths.py::test_reconstruct_with_keypoint_prompts_matches_case_06"]


def kernel_paths() -> list[tuple[str, dict[str, str]]]:
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()  # e.g. "avx2", "avx512"
    paths = [(f"{best} (machine)", {}),
             ("default", {"ATEN_CPU_CAPABILITY": "default"}),
             (f"{best}, oneDNN off", {"SAM3D_TEST_MKLDNN": "0"}),
             (f"{best}, 1 thread", {"SAM3D_TEST_THREADS": "1"}),
             ("default, oneDNN off, 1 thread", {"ATEN_CPU_CAPABILITY": "default", "SAM3D_TEST_MKLDNN": "0",
                                                "SAM3D_TEST_THREADS": "1"})]
    if best.startswith("avx512"):
        paths.insert(1, ("avx2", {"ATEN_CPU_CAPABILITY": "avx2"}))
    return paths


def run_path(env_extra: dict[str, str], record: Path, k: str | None) -> int:
    env = {**os.environ, **env_extra, "SAM3D_TOL_MEASURE": "1", "SAM3D_TOL_RECORD": str(record)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_TESTS]
    if k:
        cmd += ["-k", k]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def load(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def shown(e: dict) -> tuple[float, float]:
    """(error, limit) in the class's own units: relative to the RMS for fp32 features."""
    if e["class"] == "features" and e["scale"]:
        return e["err"] / e["scale"], e["limit"] / e["scale"]
    return e["err"], e["limit"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("-k", dest="k", help="pytest -k filter (quick runs)")
    args = ap.parse_args()

    paths = kernel_paths()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in paths:
            record = Path(tmp) / f"{len(results)}.jsonl"
            rc = run_path(extra, record, args.k)
            results[name] = load(record)
            print(f"{name:32s} {len(results[name]):5d} comparisons (pytest rc {rc})", file=sys.stderr)

    # class -> path -> (worst ratio entry); the margin is limit / worst error over all paths.
    worst: dict[str, dict[str, dict]] = defaultdict(dict)
    overall: dict[str, dict] = {}
    for name, entries in results.items():
        for e in entries:
            ratio = e["err"] / e["limit"] if e["limit"] else float("inf")
            e = {**e, "ratio": ratio}
            cur = worst[e["class"]].get(name)
            if cur is None or ratio > cur["ratio"]:
                worst[e["class"]][name] = e
            if e["class"] not in overall or ratio > overall[e["class"]]["ratio"]:
                overall[e["class"]] = {**e, "path": name}

    names = [n for n, _ in paths]
    lines = ["| class | " + " | ".join(names) + " | limit | worst quantity | margin |",
             "|---|" + "---|" * len(names) + "---|---|---|"]
    for cls in sorted(worst):
        cells = []
        for n in names:
            e = worst[cls].get(n)
            cells.append("-" if e is None else f"{shown(e)[0]:.2e}")
        o = overall[cls]
        margin = "exact" if o["err"] == 0 else f"{1 / o['ratio']:.1f}x"
        limit = f"{shown(o)[1]:.1e}"
        lines.append(f"| {cls} | " + " | ".join(cells) + f" | {limit} | `{o['what'].strip()}` ({o['path']}) | {margin} |")
    failures = [(n, e) for n, es in results.items() for e in es if e["err"] > e["limit"]]
    lines.append("")
    lines.append(f"Comparisons over the limit on any path: {len(failures)}")
    for n, e in failures[:20]:
        lines.append(f"- {n}: {e['what'].strip()} {e['err']:.3e} > {e['limit']:.1e}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
