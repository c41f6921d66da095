#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Validate and build the extension zip with Blender's own extension CLI.

The CLI (`blender_ext.py`) ships inside the PyPI `bpy` wheel and runs under plain Python 3.11,
so no Blender binary is needed. Prints the path of the built zip on the last line of stdout.

    python scripts/build_extension.py [--output-dir dist] [--blender-ext PATH]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_blender_ext() -> Path:
    """blender_ext.py inside the installed `bpy` wheel (without importing bpy: that is slow)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'bpy' module is not installed in this Python; run this script with the "
            "project's .venv/bin/python or pass --blender-ext"
        )
    bpy_dir = Path(list(spec.submodule_search_locations)[0])
    pattern = str(bpy_dir / "*" / "scripts" / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py")
    found = sorted(glob.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no blender_ext.py under {bpy_dir} (looked for {pattern})")
    return Path(found[-1])


def run_cli(blender_ext: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(blender_ext), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise RuntimeError(f"blender_ext.py {args[0]} failed:\n{output}")


def build(output_dir: Path, blender_ext: Path | None = None) -> Path:
    """Validate the manifest, build the zip into `output_dir`, return the zip's path."""
    tool = blender_ext or find_blender_ext()
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if zip_path.exists():
        # The CLI refuses nothing here, but a stale zip must never pass for a fresh one.
        zip_path.unlink()
    run_cli(tool, ["validate", str(ROOT)])
    run_cli(
        tool,
        ["build", "--source-dir", str(ROOT), "--output-filepath", str(zip_path)],
    )
    if not zip_path.is_file():
        raise RuntimeError(f"blender_ext.py build reported success but {zip_path} is missing")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, help="path to blender_ext.py")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.output_dir.resolve(), args.blender_ext)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(os.fspath(zip_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
