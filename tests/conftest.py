"""Shared test set-up.

Blender's user directories are isolated before anything imports `bpy`, so tests never read or
write the developer's real Blender configuration.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAM3D_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "fixtures" / "parity"
STANDIN = SHARED / "fixtures" / "mhr-standin"
MHR_DATA = SHARED / "data" / "mhr"
DATA = ROOT / "tests" / "data"

_user = tempfile.mkdtemp(prefix="sam3d-blender-user-")
os.environ.setdefault("BLENDER_USER_RESOURCES", _user)
os.environ.setdefault("BLENDER_USER_CONFIG", os.path.join(_user, "config"))
os.environ.setdefault("BLENDER_USER_SCRIPTS", os.path.join(_user, "scripts"))
os.environ.setdefault("BLENDER_USER_EXTENSIONS", os.path.join(_user, "extensions"))
# Never reach the Hugging Face hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `fast` on the CPU follows the hardware (server/cpu_features.py); the suite pins it to the fp32
# path so that it behaves alike on every CPU, and tests of the bf16 path switch it on themselves.
os.environ.setdefault("SAM3D_CPU_BF16", "0")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def require(path: Path) -> Path:
    """Skip (locally) when ../shared is absent; CI always has it."""
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI needs {path}")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require(PARITY)


@pytest.fixture(scope="session")
def standin_lod1() -> Path:
    return require(STANDIN / "mhr_standin_lod1.pt")


@pytest.fixture(scope="session")
def standin_small() -> Path:
    return require(STANDIN / "mhr_standin_small.pt")


@pytest.fixture(scope="session")
def mhr_samples() -> Path:
    return require(MHR_DATA)


def pytest_configure(config: pytest.Config) -> None:
    # Kernel-path switches for the tolerance runs (.ci/run, scripts/measure_tolerances.py):
    # ATEN_CPU_CAPABILITY is read by torch itself; oneDNN and the thread count are set here.
    mkldnn = os.environ.get("SAM3D_TEST_MKLDNN", "")
    threads = os.environ.get("SAM3D_TEST_THREADS", "")
    if mkldnn or threads:
        import torch

        if mkldnn:
            torch.backends.mkldnn.enabled = mkldnn not in ("0", "off", "false")
        if threads:
            torch.set_num_threads(int(threads))


def pytest_report_header(config: pytest.Config) -> str:
    parts = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "SAM3D_TEST_MKLDNN",
                                                       "SAM3D_TEST_THREADS") if os.environ.get(name)]
    return "kernel path: " + (" ".join(parts) if parts else "machine default")


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    # bpy 4.5 with torch in the same process can hang inside Blender's own shutdown (seen after
    # the glTF exporter was imported). Everything is reported by now, so leave at once with
    # pytest's status instead of running interpreter teardown.
    if "bpy" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
