# SPDX-License-Identifier: GPL-3.0-or-later
"""Which machine this is and which PyTorch build suits it (for the managed backend installer).

`detect_platform` asks `nvidia-smi` (blocking, bounded by a timeout; call once and keep the
result); `choose_torch` is pure data -> decision, so every platform's choice is testable here.
Standard library only (runs inside Blender).
"""
from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .env import InstallError, no_window

SUPPORTED_PYTHON = ((3, 10), (3, 12))  # inclusive (major, minor) range the server supports

DEFAULT_CUDA_TAG = "cu126"
# PyTorch wheel index tags and the CUDA version each one needs from the driver.
CUDA_TAGS: dict[str, tuple[int, int]] = {
    "cu118": (11, 8), "cu121": (12, 1), "cu124": (12, 4), "cu126": (12, 6),
    "cu128": (12, 8), "cu129": (12, 9), "cu130": (13, 0),
}
BLACKWELL_MIN_TAG = "cu128"  # compute capability 10.x/12.x kernels first ship with CUDA 12.8
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
TORCH_VARIANTS = ("auto", "cuda", "cpu", "default", "none")


# --- platform ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlatformInfo:
    system: str  # "Linux", "Windows", "Darwin"
    machine: str  # "x86_64", "arm64", ...
    apple_silicon: bool = False
    nvidia_gpus: tuple[str, ...] = ()
    cuda_driver: tuple[int, int] | None = None  # newest CUDA the driver supports
    compute_caps: tuple[tuple[int, int], ...] = ()

    @property
    def has_nvidia(self) -> bool:
        return bool(self.nvidia_gpus)


def _quick_output(argv: Sequence[str], timeout: float) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL, **no_window())
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _find_nvidia_smi() -> str | None:
    found = shutil.which("nvidia-smi")
    if found is None and os.name == "nt":
        legacy = Path(os.environ.get("ProgramFiles", r"C:\Program Files"),
                      "NVIDIA Corporation", "NVSMI", "nvidia-smi.exe")
        found = str(legacy) if legacy.is_file() else None
    return found


def detect_platform(timeout: float = 3.0, nvidia_smi: str | None = None) -> PlatformInfo:
    """Blocking (each `nvidia-smi` call is bounded by `timeout`)."""
    system = _platform.system()
    machine = {"amd64": "x86_64", "aarch64": "arm64"}.get(_platform.machine().lower(),
                                                          _platform.machine().lower())
    if system == "Darwin":
        # An x86 Blender under Rosetta reports x86_64 on an Apple silicon Mac.
        translated = _quick_output(["sysctl", "-n", "sysctl.proc_translated"], timeout) or ""
        apple = machine == "arm64" or translated.strip() == "1"
        return PlatformInfo(system, machine, apple_silicon=apple)
    smi = nvidia_smi or _find_nvidia_smi()
    if smi is None:
        return PlatformInfo(system, machine)
    listing = _quick_output([smi, "-L"], timeout) or ""
    gpus = tuple(m.group(1).strip() for m in re.finditer(r"^GPU \d+:\s*(.+?)(?:\s*\(UUID:.*)?$",
                                                          listing, re.MULTILINE))
    if not gpus:
        return PlatformInfo(system, machine)
    header = _quick_output([smi], timeout) or ""
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", header)
    caps_text = _quick_output([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], timeout)
    caps = tuple((int(a), int(b)) for a, b in re.findall(r"^\s*(\d+)\.(\d+)\s*$", caps_text or "",
                                                         re.MULTILINE))
    return PlatformInfo(system, machine, False, gpus,
                        (int(m.group(1)), int(m.group(2))) if m else None, caps)


# --- torch choice ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchChoice:
    variant: str  # "cuda", "cpu", "default" (PyPI's build), "none" (not installed by us)
    index_url: str | None  # None: the general index (PyPI or the user's index_url)
    cuda_tag: str | None = None
    note: str = ""  # why, when the choice differs from what was asked


def choose_torch(platform: PlatformInfo | None, variant: str = "auto",
                 cuda_tag: str = DEFAULT_CUDA_TAG,
                 torch_index_url: str | None = None) -> TorchChoice:
    if variant not in TORCH_VARIANTS:
        raise InstallError(f"Unknown PyTorch variant {variant!r}; use one of "
                           f"{', '.join(TORCH_VARIANTS)}.")
    if cuda_tag not in CUDA_TAGS:
        raise InstallError(f"Unknown CUDA tag {cuda_tag!r}; PyTorch publishes "
                           f"{', '.join(CUDA_TAGS)}.")
    if variant == "none":
        return TorchChoice("none", None)
    requested = variant
    if variant == "auto":
        if platform is None:
            raise InstallError("Automatic PyTorch selection needs the platform "
                               "(detect_platform()).")
        if platform.system == "Darwin":
            if not platform.apple_silicon:
                raise InstallError("PyTorch publishes no builds newer than 2.2 for Intel Macs "
                                   "and the server needs 2.3 or newer; use an Apple silicon Mac "
                                   "or a remote server.")
            variant = "default"
        else:
            variant = "cuda" if platform.has_nvidia else "cpu"
    if variant == "cuda":
        if platform is not None and platform.system == "Darwin":
            raise InstallError("PyTorch has no CUDA builds for macOS; choose the automatic "
                               "variant.")
        tag, note = cuda_tag, ""
        blackwell = platform is not None and any(cap >= (10, 0) for cap in platform.compute_caps)
        floor = CUDA_TAGS[BLACKWELL_MIN_TAG] if blackwell else (0, 0)
        if CUDA_TAGS[tag] < floor:
            tag = BLACKWELL_MIN_TAG
            note = f"{tag}: this GPU needs CUDA 12.8 or newer builds. "
        driver = platform.cuda_driver if platform is not None else None
        if driver is not None and CUDA_TAGS[tag] > driver:
            # Builds for an older CUDA still run; only a driver older than every usable build fails.
            fits = [t for t, v in CUDA_TAGS.items() if floor <= v <= min(driver, CUDA_TAGS[tag])]
            if not fits:
                text = (f"The NVIDIA driver supports CUDA {driver[0]}.{driver[1]} only, too old "
                        "for PyTorch's CUDA builds for this GPU")
                if requested == "cuda":
                    raise InstallError(text + "; update the driver.")
                return TorchChoice("cpu", TORCH_INDEX.format(tag="cpu"), note=text + ": "
                                   "installing the CPU build (update the driver, then Repair).")
            tag = fits[-1]
            note += (f"{tag}: the NVIDIA driver supports CUDA {driver[0]}.{driver[1]} (update it "
                     "for newer builds).")
        index = torch_index_url or TORCH_INDEX.format(tag=tag)
        return TorchChoice("cuda", index, tag, note.strip())
    if variant == "cpu" and (platform is None or platform.system != "Darwin"):
        return TorchChoice("cpu", torch_index_url or TORCH_INDEX.format(tag="cpu"))
    return TorchChoice("default", torch_index_url)


def candidate_base_pythons() -> list[str]:
    """Pythons worth offering as the base, best first. No subprocess: only names and paths.

    Blender's own Python comes first when its version suits the server (Blender 4.2-4.5 ship
    3.11); the installer's first step checks whichever one is chosen.
    """
    found: list[str] = []
    if SUPPORTED_PYTHON[0] <= sys.version_info[:2] <= SUPPORTED_PYTHON[1] and sys.executable \
            and Path(sys.executable).name.lower().startswith("python"):
        found.append(sys.executable)
    for minor in range(SUPPORTED_PYTHON[1][1], SUPPORTED_PYTHON[0][1] - 1, -1):
        found.append(shutil.which(f"python3.{minor}") or "")
        if os.name == "nt":
            local = Path(os.environ.get("LOCALAPPDATA", ""), "Programs", "Python",
                         f"Python3{minor}", "python.exe")
            found.append(str(local) if local.is_file() else "")
    found += [shutil.which("python3") or "", shutil.which("python") or ""]
    unique: dict[str, str] = {}
    for path in found:
        if path:
            unique.setdefault(os.path.normcase(os.path.realpath(path)), path)
    return list(unique.values())
