"""Does this CPU compute bfloat16 natively? (Intel AMX / AVX-512 BF16, Arm BF16.)

`fast` precision autocasts the backbone to bf16 on the CPU only where the hardware has bf16 dot
products: there it is ~3x faster than fp32 (measured in issue 14 on an AMX CPU: 2.28 s vs
7.24 s per body pass of the full-size DINOv3); elsewhere bf16 is emulated and slower than fp32.
`SAM3D_CPU_BF16=1|0` overrides the detection (a studio that measured otherwise, and the tests).
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess

NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")  # Linux /proc/cpuinfo names
OVERRIDE_ENV = "SAM3D_CPU_BF16"


def _linux_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _macos_arm_bf16() -> bool:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True,
                             text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


@functools.lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """(present, why): e.g. (True, "amx_bf16"), (False, "no amx_bf16/avx512_bf16 (AVX2)")."""
    override = os.environ.get(OVERRIDE_ENV, "").strip().lower()
    if override in ("1", "true", "yes", "on"):
        return True, f"{OVERRIDE_ENV}=1"
    if override in ("0", "false", "no", "off"):
        return False, f"{OVERRIDE_ENV}=0"
    system, machine = platform.system(), platform.machine().lower()
    if system == "Linux":
        flags = _linux_flags()
        found = [f for f in NATIVE_FLAGS if f in flags]
        if found:
            return True, found[0]
        if "bf16" in flags and machine in ("aarch64", "arm64"):
            return True, "arm bf16"
    elif system == "Darwin" and machine == "arm64" and _macos_arm_bf16():
        return True, "arm FEAT_BF16"
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        capability = "unknown"
    return False, f"no {'/'.join(NATIVE_FLAGS)} ({capability})"


def describe() -> str:
    present, why = native_bf16()
    return f"native bf16 ({why})" if present else f"fp32: {why}"
