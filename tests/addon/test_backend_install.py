# SPDX-License-Identifier: GPL-3.0-or-later
"""The managed backend installer (addon/backend/install.py and its helper modules).

No network: the real `Installer` runs `python -m venv` and pip with `--no-index --find-links`
over tiny wheels written here by hand; PyTorch is skipped (torch_variant="none") and its
commands are checked as data. One environment is shared by the tests of this module.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from addon.backend import install as bi
from addon.backend.pip import PipProgress, explain_failure, pip_supports_raw

BASE_PYTHON = sys.executable
TINY_MODULES = {"tinya": "tinya", "tinyb": "tinyb"}
POSIX = os.name != "nt"


def write_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A valid pure-Python wheel with one module whose __version__ is `version`."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def isolated_pip() -> Iterator[None]:
    """Only our wheel folder: no pip.conf, no PIP_FIND_LINKS/index of this machine."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("PIP_"):
                mp.delenv(key)
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        yield


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    write_wheel(folder, "tinya", "1.0")
    write_wheel(folder, "tinyb", "2.0", requires=("tinya>=1.0",))
    return folder


def tiny_plan(env: Path, wheels: Path, base: str = BASE_PYTHON) -> bi.InstallPlan:
    return bi.plan_install(env, base, None, ["tinyb"], torch_variant="none", find_links=str(wheels),
                           offline=True, check_modules=TINY_MODULES)


def run_to_end(installer: bi.Installer, timeout: float = 120.0) -> list[bi.InstallEvent]:
    installer.start()
    assert installer.wait(timeout), "installer did not finish"
    return installer.poll(100000)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheels: Path, isolated_pip: None):
    env = tmp_path_factory.mktemp("envs") / "server env"  # a space, as in real user paths
    installer = bi.Installer(tiny_plan(env, wheels))
    events = run_to_end(installer)
    return env, installer, events


def terminal(events: list[bi.InstallEvent]) -> bi.InstallEvent:
    ends = [e for e in events if e.kind in bi.TERMINAL_EVENTS]
    assert len(ends) == 1 and events[-1] is ends[0], [e.kind for e in events]
    return ends[0]


def failed_start(env: Path, base: str, wheels: Path) -> bi.InstallEvent:
    installer = bi.Installer(tiny_plan(env, wheels, base))
    end = terminal(run_to_end(installer))
    assert end.kind == "error" and installer.state == "failed"
    return end


def fake_python(folder: Path, probe: dict) -> str:
    """An executable that answers the installer's probe like a Python with these properties."""
    script = folder / "python-fake"
    script.write_text("#!/bin/sh\necho 'SAM3D_PROBE " + json.dumps(probe) + "'\n")
    script.chmod(0o755)
    return str(script)


# --- the real installer -------------------------------------------------------------------------

def test_install_events_arrive_in_order_and_reach_one(installed) -> None:
    env, installer, events = installed
    end = terminal(events)
    assert end.kind == "done", end.message + "\n" + end.log_tail
    assert installer.state == "done" and end.fraction == 1.0
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages == [s.stage for s in installer.plan.steps]
    assert stages == ["check", "prepare", "venv", "pip", "requirements", "verify"]
    fractions = [e.fraction for e in events]
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    pip_fractions = [e.fraction for e in events
                     if e.kind == "progress" and e.stage == "requirements"]
    assert 0.0 < max(pip_fractions) < 1.0
    logs = [e.message for e in events if e.kind == "log"]
    assert any(line.startswith("Successfully installed tinya-1.0 tinyb-2.0") for line in logs)
    assert "tinya 1.0" in end.message and "tinyb 2.0" in end.message
    assert end.report is not None and end.report.ok
    assert bi.env_status(env) == "ready"
    assert bi.env_python(env).is_file()
    marker = bi.read_marker(env)
    assert marker is not None and marker["complete"] is True
    assert marker["settings"]["requirements"] == {"list": ["tinyb"]}
    log_text = installer.plan.log_path.read_text(encoding="utf-8")
    assert "-m venv" in log_text and "Successfully installed" in log_text


def test_check_env_reports_versions_and_what_is_missing(installed) -> None:
    env = installed[0]
    report = bi.check_env(env, {"tinyb": "tinyb", "numpy": "numpy"})
    assert report.modules["tinyb"]["version"] == "2.0"
    assert report.missing == ["numpy"] and not report.ok
    assert "numpy" in report.summary() and "Repair" in report.summary()
    assert report.python == "%d.%d.%d" % sys.version_info[:3]
    assert report.devices["cuda"] is False and report.best_device == "cpu"
    default = bi.check_env(env)  # the server's real requirements: none are in this env
    assert set(default.missing) == set(bi.REQUIRED_MODULES)
    assert "cv2 (opencv-python-headless)" in default.summary()


def test_check_env_without_an_environment_says_so(tmp_path: Path) -> None:
    with pytest.raises(bi.InstallError, match="no Python"):
        bi.check_env(tmp_path / "nothing")


def test_repair_restores_a_deleted_package(installed) -> None:
    env = installed[0]
    site = next(env.glob("lib/python*/site-packages")) if POSIX else env / "Lib" / "site-packages"
    for path in site.glob("tinya*"):
        shutil.rmtree(path)
    assert bi.check_env(env, TINY_MODULES).missing == ["tinya"]
    assert bi.plan_repair(env).commands() == installed[1].plan.commands()
    events = run_to_end(bi.Installer(bi.plan_repair(env)))  # what repair() starts
    end = terminal(events)
    assert end.kind == "done", end.message + "\n" + end.log_tail
    assert bi.check_env(env, TINY_MODULES).ok
    assert bi.env_status(env) == "ready"


SLOW_STEP = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('child', child.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not POSIX, reason="checks the killed process tree with os.kill(pid, 0)")
def test_cancel_mid_step_kills_the_tree_and_repair_finishes(tmp_path: Path, wheels: Path,
                                                            isolated_pip: None) -> None:
    env = tmp_path / "env"
    plan = tiny_plan(env, wheels)
    slow = bi.Step("slow", "A step that hangs", (BASE_PYTHON, "-c", SLOW_STEP))
    index = [s.stage for s in plan.steps].index("prepare") + 1
    plan = dataclasses.replace(plan, steps=plan.steps[:index] + (slow,) + plan.steps[index:])
    installer = bi.Installer(plan).start()
    seen: list[bi.InstallEvent] = []
    child = None
    while child is None:
        event = installer.events.get(timeout=60)
        seen.append(event)
        assert event.kind not in bi.TERMINAL_EVENTS, event.message
        if event.kind == "log" and event.message.startswith("child "):
            child = int(event.message.split()[1])
    assert bi.env_status(env) == "busy"
    with pytest.raises(bi.InstallError, match="running"):
        bi.remove(env)
    with pytest.raises(bi.InstallError, match="already running"):
        bi.Installer(tiny_plan(env, wheels)).start()
    installer.cancel()
    assert installer.wait(60)
    end = terminal(seen + installer.poll())
    assert end.kind == "cancelled" and installer.state == "cancelled"
    assert "Repair" in end.message
    assert gone(child), "the step's child process survived the cancel"
    assert bi.env_status(env) == "incomplete"
    assert (env / bi.MARKER_NAME).is_file()
    assert not bi.env_python(env).exists()  # cancelled before the venv step

    repaired = bi.repair(env)
    assert repaired.wait(120)
    end = terminal(repaired.poll(100000))
    assert end.kind == "done", end.message + "\n" + end.log_tail
    assert bi.env_status(env) == "ready"

    bi.remove(env)
    assert not env.exists()
    assert not [p for p in tmp_path.iterdir() if ".removing-" in p.name]


def test_cancel_right_after_start(tmp_path: Path, wheels: Path, isolated_pip: None) -> None:
    installer = bi.Installer(tiny_plan(tmp_path / "env", wheels)).start()
    installer.cancel()
    assert installer.wait(60)
    assert terminal(installer.poll()).kind == "cancelled"
    assert installer.state == "cancelled"
    installer.cancel()  # harmless once finished
    with pytest.raises(bi.InstallError, match="already run"):
        installer.start()


# --- clear errors --------------------------------------------------------------------------------

def test_missing_base_python(tmp_path: Path, wheels: Path) -> None:
    end = failed_start(tmp_path / "env", str(tmp_path / "no-such-python"), wheels)
    assert "Base Python not found" in end.message and "3.10-3.12" in end.message
    assert bi.env_status(tmp_path / "env") == "missing"  # nothing was written


@pytest.mark.skipif(not POSIX, reason="shell-script stand-ins")
def test_a_program_that_is_not_python(tmp_path: Path, wheels: Path) -> None:
    end = failed_start(tmp_path / "env", "/bin/false", wheels)
    assert "did not run as a Python interpreter" in end.message


@pytest.mark.skipif(not POSIX, reason="shell-script stand-ins")
@pytest.mark.parametrize("probe, expected", [
    ({"version": [3, 13, 0], "bits": 64, "venv": True, "ensurepip": True},
     "is Python 3.13.0; the server needs Python 3.10-3.12"),
    ({"version": [3, 9, 18], "bits": 64, "venv": True, "ensurepip": True}, "is Python 3.9.18"),
    ({"version": [3, 11, 4], "bits": 32, "venv": True, "ensurepip": True}, "32-bit"),
    ({"version": [3, 11, 4], "bits": 64, "venv": True, "ensurepip": False}, "python3.11-venv"),
])
def test_unsuitable_base_python(tmp_path: Path, wheels: Path, probe: dict, expected: str) -> None:
    base = fake_python(tmp_path, dict(probe, executable="/fake/python"))
    assert expected in failed_start(tmp_path / "env", base, wheels).message


def test_refuses_a_folder_that_is_not_ours(tmp_path: Path, wheels: Path) -> None:
    env = tmp_path / "precious"
    env.mkdir()
    (env / "thesis.txt").write_text("do not delete")
    end = failed_start(env, BASE_PYTHON, wheels)
    assert "not created by this add-on" in end.message
    assert sorted(p.name for p in env.iterdir()) == ["thesis.txt"]


def test_refuses_an_environment_of_another_python_version(tmp_path: Path, wheels: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    bi.write_marker(env, {"tool": bi.MARKER_TOOL, "complete": True, "settings": {}})
    (env / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.8.10\n")
    end = failed_start(env, BASE_PYTHON, wheels)
    assert "made with Python 3.8" in end.message and "Remove" in end.message


# --- remove --------------------------------------------------------------------------------------

def test_remove_refuses_without_marker(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("version = 3.11.7\n")
    with pytest.raises(bi.InstallError, match="not created by this add-on"):
        bi.remove(folder)
    (folder / bi.MARKER_NAME).write_text(json.dumps({"tool": "someone else"}))
    with pytest.raises(bi.InstallError, match="not created by this add-on"):
        bi.remove(folder)
    assert (folder / "pyvenv.cfg").is_file() and (folder / "bin").is_dir()
    with pytest.raises(bi.InstallError, match="no environment"):
        bi.remove(tmp_path / "absent")


@pytest.mark.skipif(not POSIX, reason="symbolic links")
def test_remove_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    bi.write_marker(real, {"tool": bi.MARKER_TOOL})
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(bi.InstallError, match="symbolic link"):
        bi.remove(link)
    assert (real / bi.MARKER_NAME).is_file()


def test_remove_deletes_a_marked_folder_with_read_only_files(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "lib" / "pkg").mkdir(parents=True)
    bi.write_marker(env, {"tool": bi.MARKER_TOOL, "complete": False})
    locked = env / "lib" / "pkg" / "data.bin"
    locked.write_bytes(b"x")
    locked.chmod(0o400)
    bi.remove(env)
    assert list(tmp_path.iterdir()) == []


# --- plans as data ------------------------------------------------------------------------

LINUX_GPU = bi.PlatformInfo("Linux", "x86_64", nvidia_gpus=("NVIDIA RTX A4000",),
                            cuda_driver=(12, 8), compute_caps=((8, 6),))


def step_argv(plan: bi.InstallPlan, stage: str) -> list[str]:
    found = [list(s.argv) for s in plan.steps if s.stage == stage]
    assert len(found) == 1, f"{stage} in {[s.stage for s in plan.steps]}"
    return found[0]


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_plan_linux_nvidia_uses_the_cuda_index(tmp_path: Path) -> None:
    plan = bi.plan_install(tmp_path / "env", BASE_PYTHON, LINUX_GPU)
    py = str(bi.env_python(plan.env_dir))
    assert [s.stage for s in plan.steps] == ["check", "prepare", "venv", "pip", "torch",
                                             "requirements", "verify"]
    assert step_argv(plan, "venv") == [BASE_PYTHON, "-m", "venv", str(plan.env_dir)]
    assert step_argv(plan, "pip") == [py, "-m", "pip", "install", "--upgrade", "pip"]
    torch = step_argv(plan, "torch")
    assert torch[:5] == [py, "-m", "pip", "install", bi.TORCH_REQUIREMENT]
    assert option(torch, "--index-url") == ["https://download.pytorch.org/whl/cu126"]
    reqs = step_argv(plan, "requirements")
    assert option(reqs, "-r") == [str(bi.DEFAULT_REQUIREMENTS)] and "--index-url" not in reqs
    assert plan.torch.variant == "cuda" and plan.torch.cuda_tag == "cu126" and not plan.notes
    assert plan.commands() == [list(s.argv) for s in plan.steps if s.argv]
    assert plan.describe().count("\n") == 3


def test_cuda_tag_is_a_parameter(tmp_path: Path) -> None:
    plan = bi.plan_install(tmp_path / "e", BASE_PYTHON, LINUX_GPU, cuda_tag="cu128")
    assert option(step_argv(plan, "torch"), "--index-url") == [
        "https://download.pytorch.org/whl/cu128"]
    assert "CUDA, cu128" in next(s.title for s in plan.steps if s.stage == "torch")


def with_(info: bi.PlatformInfo, **changes) -> bi.PlatformInfo:
    return dataclasses.replace(info, **changes)


@pytest.mark.parametrize("platform, variant, tag, note", [
    (LINUX_GPU, "cuda", "cu126", ""),
    (with_(LINUX_GPU, cuda_driver=(12, 4)), "cuda", "cu124", "supports CUDA 12.4"),
    (with_(LINUX_GPU, cuda_driver=None), "cuda", "cu126", ""),
    (with_(LINUX_GPU, compute_caps=((12, 0),)), "cuda", "cu128", "needs CUDA 12.8"),
    (with_(LINUX_GPU, cuda_driver=(10, 2)), "cpu", None, "too old"),
    (with_(LINUX_GPU, cuda_driver=(12, 4), compute_caps=((12, 0),)), "cpu", None, "too old"),
    (with_(LINUX_GPU, cuda_driver=(12, 9), compute_caps=((10, 0),)), "cuda", "cu128",
     "needs CUDA 12.8"),
    (bi.PlatformInfo("Windows", "x86_64", nvidia_gpus=("NVIDIA GeForce RTX 3060",)), "cuda",
     "cu126", ""),
    (bi.PlatformInfo("Windows", "x86_64"), "cpu", None, ""),
    (bi.PlatformInfo("Linux", "arm64"), "cpu", None, ""),
    (bi.PlatformInfo("Darwin", "arm64", apple_silicon=True), "default", None, ""),
])
def test_automatic_torch_choice(platform: bi.PlatformInfo, variant: str, tag: str | None,
                                note: str) -> None:
    choice = bi.choose_torch(platform)
    assert (choice.variant, choice.cuda_tag) == (variant, tag)
    assert note in choice.note and (note or not choice.note)
    expected = {"cuda": f"https://download.pytorch.org/whl/{tag}",
                "cpu": "https://download.pytorch.org/whl/cpu", "default": None}[variant]
    assert choice.index_url == expected


def test_apple_silicon_torch_comes_from_pypi(tmp_path: Path) -> None:
    plan = bi.plan_install(tmp_path / "e", BASE_PYTHON, bi.PlatformInfo("Darwin", "arm64", True))
    assert "--index-url" not in step_argv(plan, "torch")
    assert "Installing PyTorch" == next(s.title for s in plan.steps if s.stage == "torch")


@pytest.mark.parametrize("platform, kwargs, match", [
    (bi.PlatformInfo("Darwin", "x86_64"), {}, "Intel Macs"),
    (bi.PlatformInfo("Darwin", "arm64", True), {"torch_variant": "cuda"},
     "no CUDA builds for macOS"),
    (with_(LINUX_GPU, cuda_driver=(10, 2)), {"torch_variant": "cuda"}, "update the driver"),
    (LINUX_GPU, {"torch_variant": "rocm"}, "Unknown PyTorch variant"),
    (LINUX_GPU, {"cuda_tag": "cu999"}, "Unknown CUDA tag"),
    (None, {}, "needs the platform"),
    (LINUX_GPU, {"offline": True}, "needs a folder of wheels"),
    (LINUX_GPU, {"requirements": "/no/such/requirements.txt"}, "does not exist"),
])
def test_plan_rejects_bad_input_clearly(tmp_path: Path, platform, kwargs, match) -> None:
    with pytest.raises(bi.InstallError, match=match):
        bi.plan_install(tmp_path / "e", BASE_PYTHON, platform, **kwargs)


@pytest.mark.parametrize("env_dir, base", [("", BASE_PYTHON), ("/tmp/x", ""), ("/tmp/x", "  ")])
def test_plan_needs_a_folder_and_a_python(env_dir: str, base: str) -> None:
    with pytest.raises(bi.InstallError, match="No (folder|base Python) chosen"):
        bi.plan_install(env_dir, base, LINUX_GPU)


def test_offline_and_mirror_sources(tmp_path: Path) -> None:
    offline = bi.plan_install(tmp_path / "e", BASE_PYTHON, LINUX_GPU, find_links=["/w1", "/w2"],
                              offline=True)
    for stage in ("pip", "torch", "requirements"):
        argv = step_argv(offline, stage)
        assert "--no-index" in argv and option(argv, "--find-links") == ["/w1", "/w2"]
        assert "--index-url" not in argv
    mirror = "https://mirror.example/simple"
    plan = bi.plan_install(tmp_path / "e", BASE_PYTHON, LINUX_GPU, index_url=mirror)
    assert option(step_argv(plan, "requirements"), "--index-url") == [mirror]
    assert option(step_argv(plan, "pip"), "--index-url") == [mirror]
    assert option(step_argv(plan, "torch"), "--index-url") == [
        "https://download.pytorch.org/whl/cu126"]
    default = bi.plan_install(tmp_path / "e", BASE_PYTHON, None, torch_variant="default",
                              index_url=mirror)
    assert option(step_argv(default, "torch"), "--index-url") == [mirror]
    own = bi.plan_install(tmp_path / "e", BASE_PYTHON, LINUX_GPU,
                          torch_index_url="https://t.example/cu126")
    assert option(step_argv(own, "torch"), "--index-url") == ["https://t.example/cu126"]


def test_torch_none_skips_the_torch_step(tmp_path: Path) -> None:
    plan = bi.plan_install(tmp_path / "e", BASE_PYTHON, None, ["tinyb"], torch_variant="none")
    assert "torch" not in [s.stage for s in plan.steps]
    assert step_argv(plan, "requirements")[4:] == ["tinyb"]


def test_server_requirements_file_lists_the_runtime_and_not_torch() -> None:
    text = bi.DEFAULT_REQUIREMENTS.read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    names = {re.split(r"[<>=!~ ]", line)[0].lower() for line in lines if line}
    assert names == {"numpy", "roma", "opencv-python-headless", "huggingface_hub", "pyyaml",
                     "safetensors", "pillow", "transformers", "scipy"}
    assert set(bi.REQUIRED_MODULES.values()) == names | {"torch"}


def test_env_python_path() -> None:
    expected = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
    assert bi.env_python("/envs/a").parts[-2:] == expected


def test_env_status(tmp_path: Path) -> None:
    assert bi.env_status(tmp_path / "absent") == "missing"
    assert bi.env_status(tmp_path) == "missing"  # empty
    (tmp_path / "x").write_text("")
    assert bi.env_status(tmp_path) == "foreign"
    bi.write_marker(tmp_path, {"tool": bi.MARKER_TOOL, "complete": True})
    assert bi.env_status(tmp_path) == "incomplete"  # complete, but there is no python
    (tmp_path / bi.MARKER_NAME).write_text("{not json")
    assert bi.env_status(tmp_path) == "foreign"


def test_plan_repair_needs_our_marker(tmp_path: Path) -> None:
    with pytest.raises(bi.InstallError, match="no environment"):
        bi.plan_repair(tmp_path / "absent")
    (tmp_path / "x").write_text("")
    with pytest.raises(bi.InstallError, match="not created by this add-on"):
        bi.plan_repair(tmp_path)


# --- platform detection -------------------------------------------------------------------

FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) printf 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5e4f0c1a-0000-1111-2222-333344445555)\\n'
      printf 'GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-aa)\\n' ;;
  --query-gpu=compute_cap) printf '9.0\\n8.9\\n' ;;
  "") printf '+---------------------------------------------------------------+\\n'
      printf '| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |\\n' ;;
  *) exit 2 ;;
esac
"""


@pytest.mark.skipif(not POSIX or sys.platform == "darwin", reason="fake nvidia-smi shell script")
def test_detect_platform_reads_nvidia_smi(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    info = bi.detect_platform(nvidia_smi=str(smi))
    assert info.nvidia_gpus == ("NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090")
    assert info.cuda_driver == (12, 4) and info.compute_caps == ((9, 0), (8, 9))
    assert info.has_nvidia and not info.apple_silicon
    assert bi.choose_torch(info).cuda_tag == "cu124"
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not "
                      "communicate'\nexit 9\n")
    broken.chmod(0o755)
    assert bi.detect_platform(nvidia_smi=str(broken)).nvidia_gpus == ()
    assert bi.choose_torch(bi.detect_platform(nvidia_smi=str(broken))).variant == "cpu"


def test_detect_platform_on_this_machine() -> None:
    info = bi.detect_platform()
    assert info.system in ("Linux", "Windows", "Darwin") and info.machine
    assert bi.choose_torch(info).variant in ("cuda", "cpu", "default")


# --- pip output ---------------------------------------------------------------------------

PIP_OLD = """\
Looking in indexes: https://download.pytorch.org/whl/cu126
Collecting torch>=2.3
  Downloading https://download.pytorch.org/whl/cu126/torch-2.7.1%2Bcu126-cp311-cp311-manylinux_2_28_x86_64.whl (2000.0 MB)
Collecting filelock (from torch>=2.3)
  Using cached filelock-3.13.1-py3-none-any.whl (11 kB)
Collecting nvidia-cudnn-cu12==9.5.1.17 (from torch>=2.3)
  Downloading nvidia_cudnn_cu12-9.5.1.17-py3-none-manylinux_2_28_x86_64.whl (1000.0 MB)
Requirement already satisfied: typing-extensions>=4.10.0 in ./lib/python3.11/site-packages (from torch>=2.3) (4.12.2)
Installing collected packages: filelock, nvidia-cudnn-cu12, torch
Successfully installed filelock-3.13.1 nvidia-cudnn-cu12-9.5.1.17 torch-2.7.1+cu126
"""


def feed_all(progress: PipProgress, text: str) -> list[tuple[float, str]]:
    seen = []
    for line in text.splitlines():
        progress.feed(line)
        seen.append((progress.fraction, progress.label))
    return seen


def test_pip_progress_from_plain_lines() -> None:
    progress = PipProgress(expected_bytes=3e9)
    seen = feed_all(progress, PIP_OLD)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[2][1].startswith("Downloading torch-2.7.1%2Bcu126") and "(2000.0 MB)" in seen[2][1]
    # the 2 GB torch file counts once the next requirement starts: about 2/3 of the download part
    assert 0.5 < seen[3][0] < 0.6
    assert seen[-2] == (PipProgress.DOWNLOAD_SHARE, "Installing 3 packages")
    assert progress.collected == 4


def test_pip_progress_from_raw_lines() -> None:
    progress = PipProgress(expected_bytes=1000)
    lines = ["Collecting tiny", "  Downloading tiny-1.0.tar.gz (1000 bytes)", "Progress 0 of 1000",
             "Progress 250 of 1000", "Progress 500 of 1000 bytes", "Progress 1000 of 1000"]
    seen = feed_all(progress, "\n".join(lines))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[3] < fractions[4] < fractions[5]
    assert fractions[-1] < PipProgress.DOWNLOAD_SHARE
    newest = PipProgress(expected_bytes=100)
    newest.feed("Progress 50 of ? bytes")  # size unknown: bytes still count
    assert newest.fraction > 0.0
    assert newest.feed("Successfully installed tiny-1.0") and newest.fraction == 1.0


def test_pip_progress_never_goes_back() -> None:
    progress = PipProgress(expected_bytes=10)
    progress.feed("Installing collected packages: a")
    progress.feed("Collecting b")  # a later resolver line must not pull the bar back
    progress.feed("Progress 1 of 10")
    assert progress.fraction == PipProgress.DOWNLOAD_SHARE


def test_pip_supports_raw_reads_the_dist_info(tmp_path: Path) -> None:
    site = tmp_path / ("Lib/site-packages" if os.name == "nt" else "lib/python3.11/site-packages")
    site.mkdir(parents=True)
    (site / "pip-23.2.1.dist-info").mkdir()
    assert not pip_supports_raw(tmp_path)
    (site / "pip-23.2.1.dist-info").rename(site / "pip-24.1.dist-info")
    assert pip_supports_raw(tmp_path)
    assert not pip_supports_raw(tmp_path / "absent")


@pytest.mark.parametrize("stage, log, expected", [
    ("torch", "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
     "The disk is full"),
    ("requirements", "ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: "
     "'/envs/x/lib'", "Permission denied while writing to /envs/x"),
    ("torch", "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...: "
     "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')'\n"
     "ERROR: Could not find a version that satisfies the requirement torch>=2.3 (from versions: none)\n"
     "ERROR: No matching distribution found for torch>=2.3", "could not reach the package index"),
    ("pip", "Could not fetch URL https://pypi.org/simple/pip/: There was a problem confirming the ssl "
     "certificate: HTTPSConnectionPool(...): Max retries exceeded (Caused by SSLError(...))",
     "SSL certificate"),
    ("pip", "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]'))", "SSL certificate"),
    ("venv", "Error: Command '['/e/bin/python', '-m', 'ensurepip', '--upgrade', '--default-pip']' "
     "returned non-zero exit status 1.", "python3.11-venv"),
    ("torch", "ERROR: Could not find a version that satisfies the requirement torch>=2.3 (from versions: "
     "none)\nERROR: No matching distribution found for torch>=2.3",
     "pip found no build of torch>=2.3 for Python 3.11.7"),
    ("requirements", "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
     "corrupted"),
    ("requirements", "something odd happened", "Installing stuff failed (exit code 1)"),
])
def test_failures_become_sentences(stage: str, log: str, expected: str) -> None:
    message = explain_failure(stage, "Installing stuff", 1, log.splitlines(), "3.11.7", "/envs/x")
    assert expected in message


def test_not_enough_disk_space(tmp_path: Path, wheels: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=10**12, used=10**12 - 5, free=5))
    end = failed_start(tmp_path / "env", BASE_PYTHON, wheels)
    assert "Not enough disk space" in end.message and "needs about 0.5 GB" in end.message
    assert not (tmp_path / "env").exists()


def test_a_folder_that_cannot_be_created(tmp_path: Path, wheels: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    end = failed_start(blocker / "env", BASE_PYTHON, wheels)
    assert end.message.startswith(f"Cannot write to {blocker / 'env'}")
    assert "choose a folder you can write to" in end.message


def test_candidate_base_pythons_are_existing_files() -> None:
    found = bi.candidate_base_pythons()
    assert all(Path(p).is_file() for p in found)
    assert len({os.path.realpath(p) for p in found}) == len(found)
    if bi.SUPPORTED_PYTHON[0] <= sys.version_info[:2] <= bi.SUPPORTED_PYTHON[1]:
        assert found[0] == sys.executable


def test_plan_check_runs_in_the_background_and_leaves_foreign_envs_alone(tmp_path: Path) -> None:
    own = tmp_path / "users-own-env"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(own)], check=True)
    installer = bi.Installer(bi.plan_check(own, {"json": "json", "tinya": "tinya"}))
    end = terminal(run_to_end(installer))
    assert end.kind == "error" and "tinya (tinya): ModuleNotFoundError" in end.message
    assert installer.report is not None and installer.report.modules["json"]["version"]
    assert bi.read_marker(own) is None and bi.env_status(own) == "foreign"
    ok = terminal(run_to_end(bi.Installer(bi.plan_check(own, {"json": "json"}))))
    assert ok.kind == "done" and ok.report is not None and ok.report.ok
    assert bi.read_marker(own) is None
    missing = terminal(run_to_end(bi.Installer(bi.plan_check(tmp_path / "absent"))))
    assert missing.kind == "error" and "install or repair" in missing.message


def test_remove_in_the_background_also_sweeps_interrupted_removals(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    bi.write_marker(env, {"tool": bi.MARKER_TOOL})
    interrupted = tmp_path / ".env.removing-0badf00d"  # Blender quit during an earlier removal
    (interrupted / "lib").mkdir(parents=True)
    bi.write_marker(interrupted, {"tool": bi.MARKER_TOOL})
    not_ours = tmp_path / ".env.removing-12345678"
    not_ours.mkdir()
    worker = bi.remove(env, background=True)
    assert worker is not None and not env.exists()  # gone before the thread finishes
    worker.join(60)
    assert sorted(p.name for p in tmp_path.iterdir()) == [not_ours.name]
