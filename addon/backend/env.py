# SPDX-License-Identifier: GPL-3.0-or-later
"""The managed backend environment on disk, and the plumbing for the Pythons it runs.

* `env_python`, our marker (`read_marker`/`write_marker`), `env_status`/`disk_status`,
  `venv_version`, `remove` (rename first, then delete; optionally on a thread).
* `check_env` / `EnvReport`: import the server's packages in the environment's Python.
* Child processes: `child_environment` (clean PYTHON*/PIP target variables),
  `process_group_kwargs` + `kill_tree` (cancel reaches grandchildren), `no_window`.

Standard library only (runs inside Blender). `env_status` and `read_marker` only look at files;
`check_env` and a foreground `remove` block (seconds) and belong in a background thread or an
explicit button press. The installer itself is `backend_install`.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

MARKER_NAME = "sam3d-body-env.json"
MARKER_TOOL = "sam3d-body-blender"
# import name -> pip name; check_env imports them all and every one must work.
REQUIRED_MODULES: dict[str, str] = {
    "torch": "torch", "numpy": "numpy", "cv2": "opencv-python-headless", "roma": "roma",
    "huggingface_hub": "huggingface_hub", "yaml": "pyyaml", "safetensors": "safetensors",
    "PIL": "pillow", "transformers": "transformers", "scipy": "scipy",
}


class InstallError(Exception):
    """A failure the user can act on; `str()` is a complete sentence, `log_tail` the evidence."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail



def env_python(env_dir: str | os.PathLike[str]) -> Path:
    env = Path(env_dir)
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"



def no_window() -> dict[str, Any]:
    """Popen arguments that keep Windows from flashing a console window over Blender."""
    return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}


def child_environment() -> dict[str, str]:
    """Our environment for the children, minus what would make them load the wrong Python.

    PYTHONPATH/PYTHONHOME (Blender's or the user's) would mix another Python's packages into
    pip's, and PIP_USER/PIP_TARGET/PIP_PREFIX/PIP_ROOT would install outside the environment;
    the other PIP_* settings (proxy, certificates, mirrors) are the user's and stay.
    """
    dropped = ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "PIP_USER", "PIP_TARGET", "PIP_PREFIX",
               "PIP_ROOT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in dropped}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PYTHONUTF8="1",
               PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def process_group_kwargs() -> dict[str, Any]:
    # Own process group/session, so cancel reaches pip's children (builds, downloads) too.
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | no_window()["creationflags"]
        return {"creationflags": flags}
    return {"start_new_session": True}


def kill_tree(proc: "subprocess.Popen[str]", grace: float = 3.0) -> None:
    """Stop `proc` and everything it started (blocking up to `grace` + a little)."""
    if os.name == "nt":
        try:
            subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], capture_output=True,
                           timeout=30, **no_window())
        except (OSError, subprocess.SubprocessError):
            pass
        if proc.poll() is None:
            proc.kill()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break  # the whole group is gone
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:  # not a group leader after all: at least stop the process itself
        proc.kill()


def venv_version(env_dir: Path) -> tuple[int, int] | None:
    """(major, minor) of the Python an existing virtual environment was made with."""
    try:
        text = (env_dir / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_marker(env_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Our marker's content, or None when the file is absent or not ours."""
    path = Path(env_dir) / MARKER_NAME
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == MARKER_TOOL else None


def write_marker(env_dir: Path, data: dict[str, Any]) -> None:
    tmp = env_dir / f".{MARKER_NAME}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, env_dir / MARKER_NAME)  # atomic: never a torn marker


_BUSY: set[str] = set()  # environments an Installer is working on, in this Blender session
_BUSY_LOCK = threading.Lock()


def env_status(env_dir: str | os.PathLike[str]) -> str:
    """One of "busy" (an Installer works on it now), "missing" (absent or empty), "foreign"
    (not made by us: never touched), "incomplete" (ours, not verified: Repair) or "ready"."""
    env = Path(env_dir)
    with _BUSY_LOCK:
        if _busy_key(env) in _BUSY:
            return "busy"
    return disk_status(env)


def disk_status(env: Path) -> str:
    """`env_status` from the files alone (what an Installer that claimed `env` sees)."""
    try:
        if not env.is_dir() or not any(env.iterdir()):
            return "missing"
    except OSError:  # unreadable: certainly not something we may touch
        return "foreign"
    marker = read_marker(env)
    if marker is None:
        return "foreign"
    return "ready" if marker.get("complete") and env_python(env).is_file() else "incomplete"


def _busy_key(env_dir: Path) -> str:
    return os.path.normcase(os.path.abspath(env_dir))


def claim(env_dir: Path) -> bool:
    """Mark `env_dir` as being worked on; False when it already is."""
    with _BUSY_LOCK:
        key = _busy_key(env_dir)
        if key in _BUSY:
            return False
        _BUSY.add(key)
        return True


def release(env_dir: Path) -> None:
    with _BUSY_LOCK:
        _BUSY.discard(_busy_key(env_dir))


def remove(env_dir: str | os.PathLike[str], *,
           background: bool = False) -> threading.Thread | None:
    """Delete an environment made by this module.

    The environment disappears at once (one rename, which fails before anything is deleted when
    files are in use); deleting the renamed tree takes a while for a multi-GB environment
    (~1 min for 6 GB here), so `background=True` does that on a daemon thread and returns it.
    Trees an earlier removal left behind (Blender quit meanwhile) are deleted along with it.
    """
    env = Path(os.path.abspath(os.path.expanduser(str(env_dir))))
    if not claim(env):
        raise InstallError(f"An installation into {env} is running; cancel it first.")
    try:
        trash = _take_away(env)
    finally:
        release(env)
    trees = [trash] + [tree for tree in _leftovers(env) if tree != trash]
    if background:
        worker = threading.Thread(target=_delete_trees, args=(trees, False),
                                  name="sam3d-backend-remove", daemon=True)
        worker.start()
        return worker
    _delete_trees(trees, True)
    return None


def _trash_prefix(env: Path) -> str:
    return f".{env.name}.removing-"


def _take_away(env: Path) -> Path:
    if env.is_symlink():
        raise InstallError(f"{env} is a symbolic link; remove it by hand.")
    if not env.is_dir():
        raise InstallError(f"There is no environment at {env}.")
    if read_marker(env) is None:
        raise InstallError(f"{env} was not created by this add-on (no {MARKER_NAME}); "
                           "it is left untouched.")
    trash = env.with_name(_trash_prefix(env) + secrets.token_hex(4))
    try:
        os.replace(env, trash)
    except OSError as exc:
        raise InstallError(f"Could not remove {env} ({exc.strerror or exc}); stop the server "
                           "and close programs using it, then try again.") from None
    return trash


def _leftovers(env: Path) -> list[Path]:
    """Renamed environments of ours that an interrupted removal left next to `env`."""
    try:
        siblings = list(env.parent.iterdir())
    except OSError:
        return []
    return [p for p in siblings if p.name.startswith(_trash_prefix(env)) and not p.is_symlink()
            and p.is_dir() and read_marker(p) is not None]


def _retry_writable(function: Callable[..., Any], path: str, _info: Any = None) -> None:
    # Read-only files (common on Windows) cannot be deleted until they are writable.
    os.chmod(path, 0o700)
    function(path)


def _delete_trees(trees: Sequence[Path], raise_errors: bool) -> None:
    for tree in trees:
        # The marker goes last: a tree interrupted half-way is still recognisably ours.
        try:
            for child in tree.iterdir():
                if child.name == MARKER_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    if sys.version_info >= (3, 12):
                        shutil.rmtree(child, onexc=_retry_writable)
                    else:
                        shutil.rmtree(child, onerror=_retry_writable)
                else:
                    try:
                        child.unlink()
                    except PermissionError:
                        _retry_writable(os.unlink, str(child))
            (tree / MARKER_NAME).unlink(missing_ok=True)
            tree.rmdir()
        except OSError as exc:
            if raise_errors:
                raise InstallError(f"The environment is removed, but its files in {tree} could "
                                   f"not all be deleted ({exc}); delete that folder by "
                                   "hand.") from None


# --- environment check -------------------------------------------------------------------------

CHECK_PREFIX = "SAM3D_ENV_CHECK "
_CHECK_SCRIPT = r"""
import importlib, importlib.metadata as md, json, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable, "modules": {}}
for name, dist in json.loads(sys.argv[1]).items():
    try:
        module = importlib.import_module(name)
        try:
            version = md.version(dist)
        except Exception:
            version = str(getattr(module, "__version__", "?"))
        out["modules"][name] = {"version": version, "error": None}
    except BaseException as exc:
        out["modules"][name] = {"version": None, "error": "%s: %s" % (type(exc).__name__, exc)}
torch = sys.modules.get("torch")
dev = {"cuda_build": None, "cuda": False, "device": None, "cuda_error": None, "mps": False}
if torch is not None:
    dev["cuda_build"] = getattr(torch.version, "cuda", None)
    try:
        if torch.cuda.is_available():
            dev["device"] = torch.cuda.get_device_name(0)
            # A kernel launch fails when the build lacks this GPU's architecture.
            (torch.ones(8, device="cuda") * 2).sum().item()
            dev["cuda"] = True
    except Exception as exc:
        dev["cuda_error"] = "%s: %s" % (type(exc).__name__, exc)
    mps = getattr(torch.backends, "mps", None)
    dev["mps"] = bool(mps is not None and mps.is_available())
out["devices"] = dev
print(PREFIX + json.dumps(out), flush=True)
""".replace("PREFIX", repr(CHECK_PREFIX))


@dataclass
class EnvReport:
    python: str
    executable: str
    modules: dict[str, dict[str, Any]]  # import name -> {"version", "error"}
    devices: dict[str, Any]  # cuda_build, cuda, device, cuda_error, mps
    pip_names: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [name for name, m in self.modules.items() if m.get("error")]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def best_device(self) -> str:
        return "cuda" if self.devices.get("cuda") else "mps" if self.devices.get("mps") else "cpu"

    def summary(self) -> str:
        if not self.ok:
            parts = [f"{n} ({self.pip_names.get(n, n)}): {self.modules[n]['error']}"
                     for n in self.missing]
            return "Missing or broken: " + "; ".join(parts) + ". Click Repair."
        versions = ", ".join(f"{n} {m['version']}" for n, m in self.modules.items())
        text = f"Python {self.python}; {versions}"
        if self.devices.get("cuda"):
            text += f"; CUDA {self.devices.get('cuda_build')} on {self.devices.get('device')}"
        elif self.devices.get("cuda_error"):
            text += f"; the GPU is not usable ({self.devices['cuda_error']}), CPU only"
        elif self.devices.get("mps"):
            text += "; Apple MPS"
        elif "torch" in self.modules:
            text += "; CPU only"
        return text + "."


def parse_report(lines: Sequence[str], modules: Mapping[str, str]) -> EnvReport | None:
    for line in reversed(lines):
        if line.startswith(CHECK_PREFIX):
            data = json.loads(line[len(CHECK_PREFIX):])
            return EnvReport(data["python"], data["executable"], data["modules"],
                             data.get("devices", {}), dict(modules))
    return None


def check_argv(env_dir: Path, modules: Mapping[str, str]) -> list[str]:
    return [str(env_python(env_dir)), "-c", _CHECK_SCRIPT, json.dumps(dict(modules))]


def check_env(env_dir: str | os.PathLike[str], modules: Mapping[str, str] | None = None,
              timeout: float = 300.0) -> EnvReport:
    """Blocking: import `modules` (import name -> pip name) in the environment's Python."""
    env = Path(env_dir)
    python = env_python(env)
    if not python.is_file():
        raise InstallError(f"There is no Python in {env} ({python} is missing); install or "
                           "repair it.")
    modules = dict(REQUIRED_MODULES if modules is None else modules)
    try:
        done = subprocess.run(check_argv(env, modules), capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL, env=child_environment(), cwd=env,
                              **no_window())
    except subprocess.TimeoutExpired:
        raise InstallError(f"Checking {env} took longer than {timeout:.0f} s.") from None
    except OSError as exc:
        raise InstallError(f"{python} cannot be run ({exc}); repair the environment.") from None
    output = (done.stdout + done.stderr).splitlines()
    report = parse_report(output, modules)
    if report is None:
        raise InstallError(f"{python} failed to run the check (exit code {done.returncode}).",
                           "\n".join(output[-30:]))
    return report

