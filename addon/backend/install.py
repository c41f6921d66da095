# SPDX-License-Identifier: GPL-3.0-or-later
"""The managed backend: a virtual environment for the server, made and repaired from Blender.

Standard library only (this runs inside Blender's Python; no `bpy`). Nothing here blocks the
caller except the functions documented as blocking: long work runs in subprocesses driven by a
background thread that puts `InstallEvent`s on a `queue.Queue`; Blender drains it from a timer.

API (the helpers live in backend_platform, backend_env and backend_pip; import from here)
* `detect_platform() -> PlatformInfo` - OS, CPU, Apple silicon, NVIDIA GPUs, the CUDA version
  the driver supports and compute capabilities (`nvidia-smi`). Blocking, up to ~1 s with a
  GPU (3 s timeout per call): call it once, off the draw code, and keep the result.
* `candidate_base_pythons()` - Pythons to offer as the base (no subprocess).
* `choose_torch(platform, variant, cuda_tag) -> TorchChoice` - which PyTorch build and index:
  CUDA index (`cuda_tag`, default cu126; older when the driver is older, cu128 for Blackwell)
  with an NVIDIA GPU on Windows/Linux, PyPI on Apple silicon (MPS), the CPU index otherwise.
* `plan_install(env_dir, base_python, platform, requirements, torch_variant="auto", *,
  cuda_tag, index_url, find_links, offline, torch_index_url, check_modules) -> InstallPlan` -
  the steps: check the base Python (version 3.10-3.12, 64-bit, venv + ensurepip, disk space),
  write our marker, `python -m venv`, upgrade pip, install torch from its index, install
  server/requirements.txt, verify. `plan.commands()` / `plan.describe()` give the exact command
  lines. Raises `InstallError` (a sentence) for bad arguments; runs nothing.
* `Installer(plan).start()`, `.cancel()`, `.events` (queue of `InstallEvent`), `.poll()`,
  `.state` ("idle", "running", "cancelling", "done", "failed", "cancelled"), `.wait()`.
  Events: "stage" (a step begins), "progress" (overall fraction 0..1 + label), "log" (one output
  line), then exactly one terminal event: "done" (with the `EnvReport`), "error" (a sentence +
  the log tail) or "cancelled". Fractions never decrease; "done" carries 1.0. The full log is
  also written to `plan.log_path` (<env>/install.log). Cancel running installers when the
  add-on unregisters: the worker thread is a daemon, pip is not.
* `plan_repair(env_dir)` / `repair(env_dir) -> Installer` - the same plan again over an existing
  environment, with the settings recorded in its marker (pip skips what is already there).
* `plan_check(env_dir)` - only the verify step, for an `Installer`: a non-blocking Check
  button for any environment (its "done" event carries the `EnvReport`).
* `remove(env_dir, background=False)` - deletes only a directory that carries our marker. It is
  renamed away first (instant; fails before deleting anything when files are in use), so a
  failure never leaves a half-deleted environment behind; the multi-GB delete itself runs on a
  daemon thread with `background=True` (use that from Blender).
* `env_python(env_dir)`; `env_status(env_dir)`: "busy", "missing", "foreign", "incomplete" or
  "ready" (no subprocess, fine in draw code); `check_env(env_dir) -> EnvReport` (blocking:
  imports the packages in the environment's Python and reports versions and devices;
  `.summary()` names what is missing).

pip progress: `--progress-bar raw` when the environment's pip supports it (24.1+, decided when
the step starts; `off` before), parsed together with "Collecting"/"Downloading"/"Installing
collected packages" lines by `PipProgress`. Cancel kills the whole process tree (own session /
process group; taskkill /T on Windows) and deletes nothing: the marker stays "incomplete" and
Repair finishes the job.

Blender side, in short::

    installer = Installer(plan_install(env_dir, base_python, detect_platform())).start()
    def tick():                      # bpy.app.timers.register(tick)
        for event in installer.poll():
            ...                      # update the UI from event.kind / fraction / message
            if event.kind in TERMINAL_EVENTS:
                return None          # the last event: stop the timer
        return 0.2
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

# The UI imports everything from this module; the helpers live in the modules named below.
from .env import (CHECK_PREFIX, MARKER_NAME, MARKER_TOOL, REQUIRED_MODULES, EnvReport,
                          InstallError, check_argv, check_env, child_environment, claim,
                          disk_status, env_python, env_status, kill_tree, parse_report,
                          process_group_kwargs, read_marker, release, remove, venv_version,
                          write_marker)
from .pip import PipProgress, explain_failure, pip_supports_raw
from .platform import (CUDA_TAGS, DEFAULT_CUDA_TAG, SUPPORTED_PYTHON, TORCH_INDEX,
                               TORCH_VARIANTS, PlatformInfo, TorchChoice, candidate_base_pythons,
                               choose_torch, detect_platform)

__all__ = [
    "CUDA_TAGS", "DEFAULT_CUDA_TAG", "DEFAULT_REQUIREMENTS", "MARKER_NAME", "REQUIRED_MODULES",
    "SUPPORTED_PYTHON", "TORCH_INDEX", "TORCH_VARIANTS", "EnvReport", "InstallError",
    "InstallEvent", "InstallPlan", "Installer", "PipProgress", "PlatformInfo", "Step",
    "TorchChoice", "candidate_base_pythons", "check_env", "choose_torch", "detect_platform",
    "env_python", "env_status", "plan_check", "plan_install", "plan_repair", "read_marker",
    "remove", "repair",
]

TORCH_REQUIREMENT = "torch>=2.3"
LOG_NAME = "install.log"
DEFAULT_REQUIREMENTS = Path(__file__).resolve().parents[2] / "server" / "requirements.txt"
_GB = 1024**3
# (download bytes, disk bytes) per torch variant: drives the progress bar and the space check.
_TORCH_SIZES = {"cuda": (3.2 * _GB, 8 * _GB), "cpu": (0.25 * _GB, 2 * _GB),
                "default": (0.1 * _GB, 1.5 * _GB), "none": (0.0, 0.5 * _GB)}
_REQUIREMENTS_BYTES = 0.12 * _GB
TERMINAL_EVENTS = ("done", "error", "cancelled")

Requirements = Union[str, "os.PathLike[str]", Sequence[str]]


class _Cancelled(Exception):
    pass


def _python_range() -> str:
    (a, b), (c, d) = SUPPORTED_PYTHON
    return f"{a}.{b}-{c}.{d}"


# --- plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    stage: str  # "check", "prepare", "venv", "pip", "torch", "requirements", "verify" or custom
    title: str
    argv: tuple[str, ...] = ()  # empty for the steps done in-process (check, prepare, verify)
    weight: float = 1.0  # share of the progress bar
    pip: bool = False  # a pip install: gets the progress flag and progress parsing
    expected_bytes: float = 0.0  # rough download size, for the progress bar only


@dataclass(frozen=True)
class InstallPlan:
    env_dir: Path
    base_python: str
    steps: tuple[Step, ...]
    torch: TorchChoice
    settings: dict[str, Any]  # recorded in the marker; plan_repair() rebuilds the plan from it
    check_modules: dict[str, str]
    required_bytes: float
    notes: tuple[str, ...] = ()

    @property
    def log_path(self) -> Path:
        return self.env_dir / LOG_NAME

    def commands(self) -> list[list[str]]:
        return [list(s.argv) for s in self.steps if s.argv]

    def describe(self) -> str:
        return "\n".join(_join_command(argv) for argv in self.commands())


def _join_command(argv: Sequence[str]) -> str:
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def _source_args(index_url: str | None, find_links: Sequence[str], offline: bool) -> list[str]:
    args = ["--no-index"] if offline else (["--index-url", index_url] if index_url else [])
    for link in find_links:
        args += ["--find-links", link]
    return args


def plan_install(env_dir: str | os.PathLike[str], base_python: str | os.PathLike[str],
                 platform: PlatformInfo | None = None, requirements: Requirements | None = None,
                 torch_variant: str = "auto", *, cuda_tag: str = DEFAULT_CUDA_TAG,
                 index_url: str | None = None, find_links: str | Sequence[str] | None = None,
                 offline: bool = False, torch_index_url: str | None = None,
                 check_modules: Mapping[str, str] | None = None) -> InstallPlan:
    """The steps that make (or repair) the server's environment; runs nothing."""
    if not str(env_dir).strip():
        raise InstallError("No folder chosen for the server environment.")
    if not str(base_python).strip():
        raise InstallError(f"No base Python chosen; pick a Python {_python_range()} executable.")
    env = Path(os.path.abspath(os.path.expanduser(str(env_dir))))
    base = str(base_python)
    if os.sep not in base and (os.altsep is None or os.altsep not in base):
        base = shutil.which(base) or base  # a bare name like "python3.11" is looked up on PATH
    links = [find_links] if isinstance(find_links, (str, os.PathLike)) else list(find_links or [])
    links = [str(link) for link in links]
    if offline and not links:
        raise InstallError("An offline install needs a folder of wheels (find_links).")
    choice = choose_torch(platform, torch_variant, cuda_tag, torch_index_url)
    if requirements is None:
        requirements = DEFAULT_REQUIREMENTS
    if isinstance(requirements, (str, os.PathLike)):
        req_file = Path(requirements).resolve()
        if not req_file.is_file():
            raise InstallError(f"The requirements file {req_file} does not exist.")
        recorded_reqs: dict[str, Any] = {"file": str(req_file)}
        req_args = ["-r", str(req_file)]
    else:
        req_list = [str(r) for r in requirements]
        req_args, recorded_reqs = req_list, {"list": req_list}
    modules = dict(REQUIRED_MODULES if check_modules is None else check_modules)
    py = str(env_python(env))
    pip = [py, "-m", "pip", "install"]
    source = _source_args(index_url, links, offline)
    torch_source = _source_args(choice.index_url or index_url, links, offline)
    download, disk = _TORCH_SIZES[choice.variant]
    steps = [
        Step("check", f"Checking {base}", weight=0.5),
        Step("prepare", f"Preparing {env}", weight=0.2),
        Step("venv", "Creating the virtual environment", (base, "-m", "venv", str(env)), 4.0),
        Step("pip", "Updating pip", tuple(pip + ["--upgrade", "pip"] + source), 2.0, True, 2e6),
    ]
    if choice.variant != "none":
        title = {"cuda": f"Installing PyTorch (CUDA, {choice.cuda_tag})",
                 "cpu": "Installing PyTorch (CPU)", "default": "Installing PyTorch"}[choice.variant]
        steps.append(Step("torch", title, tuple(pip + [TORCH_REQUIREMENT] + torch_source),
                          max(5.0, 60.0 * download / _TORCH_SIZES["cuda"][0]), True, download))
    steps += [
        Step("requirements", "Installing the server's requirements",
             tuple(pip + req_args + source), 15.0, True, _REQUIREMENTS_BYTES),
        Step("verify", "Verifying the environment", weight=3.0),
    ]
    settings = {"base_python": base, "requirements": recorded_reqs, "torch_variant": choice.variant,
                "cuda_tag": choice.cuda_tag or cuda_tag, "torch_index_url": torch_index_url,
                "index_url": index_url, "find_links": links, "offline": offline,
                "check_modules": modules}
    return InstallPlan(env, base, tuple(steps), choice, settings, modules, disk,
                       (choice.note,) if choice.note else ())


def plan_repair(env_dir: str | os.PathLike[str], *, platform: PlatformInfo | None = None,
                base_python: str | None = None) -> InstallPlan:
    """The plan that made `env_dir` (from its marker), to run again over it."""
    env = Path(os.path.abspath(os.path.expanduser(str(env_dir))))
    marker = read_marker(env)
    if marker is None:
        if env_status(env) == "missing":
            raise InstallError(f"There is no environment at {env} to repair; install one.")
        raise InstallError(f"{env} was not created by this add-on (no {MARKER_NAME}); it is left "
                           "untouched.")
    s = marker.get("settings") or {}
    recorded = s.get("requirements") or {}
    requirements: Requirements | None = recorded.get("list")
    if requirements is None and recorded.get("file") and Path(recorded["file"]).is_file():
        requirements = recorded["file"]
    return plan_install(env, base_python or s.get("base_python") or "", platform, requirements,
                        s.get("torch_variant", "auto"),
                        cuda_tag=s.get("cuda_tag") or DEFAULT_CUDA_TAG,
                        index_url=s.get("index_url"), find_links=s.get("find_links"),
                        offline=bool(s.get("offline")), torch_index_url=s.get("torch_index_url"),
                        check_modules=s.get("check_modules"))


def plan_check(env_dir: str | os.PathLike[str],
               modules: Mapping[str, str] | None = None) -> InstallPlan:
    """Only the verify step, for any environment (ours or the user's): `check_env` run by an
    `Installer`, so a Check button does not block Blender. Writes nothing into foreign ones."""
    env = Path(os.path.abspath(os.path.expanduser(str(env_dir))))
    checked = dict(REQUIRED_MODULES if modules is None else modules)
    steps = (Step("verify", "Checking the environment"),)
    return InstallPlan(env, "", steps, TorchChoice("none", None), {}, checked, 0.0)


def repair(env_dir: str | os.PathLike[str], events: "queue.Queue[InstallEvent] | None" = None,
           **kwargs: Any) -> Installer:
    """Start re-running the recorded plan over `env_dir` (see `plan_repair` for `kwargs`)."""
    return Installer(plan_repair(env_dir, **kwargs), events).start()


# --- installer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstallEvent:
    kind: str  # "stage", "progress", "log", then one of TERMINAL_EVENTS
    stage: str = ""
    message: str = ""  # stage title, progress label, log line, or the final sentence
    fraction: float = 0.0  # overall progress of the plan
    log_tail: str = ""  # "error" only
    report: EnvReport | None = None  # "done" only


_PROBE_PREFIX = "SAM3D_PROBE "
_PROBE_SCRIPT = (
    "import json, struct, sys, importlib.util as u; "
    f"print({_PROBE_PREFIX!r} + json.dumps({{'version': list(sys.version_info[:3]), "
    "'executable': sys.executable, 'bits': struct.calcsize('P') * 8, "
    "'venv': u.find_spec('venv') is not None, 'ensurepip': u.find_spec('ensurepip') is not None}))")


class Installer:
    """Runs an `InstallPlan` on a background thread; see the module docstring for the events."""

    def __init__(self, plan: InstallPlan, events: "queue.Queue[InstallEvent] | None" = None,
                 tail_lines: int = 60) -> None:
        self.plan = plan
        self.events: queue.Queue[InstallEvent] = events if events is not None else queue.Queue()
        self.report: EnvReport | None = None
        self._state = "idle"
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._log_file: Any = None
        self._fraction = 0.0
        self._label = ""
        self._probe: dict[str, Any] = {}
        total = sum(step.weight for step in plan.steps) or 1.0
        self._weights = [step.weight / total for step in plan.steps]
        self._starts = [sum(self._weights[:i]) for i in range(len(plan.steps))]

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def log_tail(self) -> str:
        return "\n".join(self._tail)

    def start(self) -> "Installer":
        with self._lock:
            if self._state != "idle":
                raise InstallError("This installer has already run; make a new one.")
            if not claim(self.plan.env_dir):
                raise InstallError(f"An installation into {self.plan.env_dir} is already running.")
            self._state = "running"
        threading.Thread(target=self._run, name="sam3d-backend-install", daemon=True).start()
        return self

    def cancel(self) -> None:
        """Stop soon (returns at once); the "cancelled" event follows. Deletes nothing."""
        with self._lock:
            if self._state != "running":
                return
            self._state = "cancelling"
            self._cancel.set()
            proc = self._proc
        if proc is not None:
            threading.Thread(target=kill_tree, args=(proc,), daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocking; True once the terminal event is queued (for tests and scripts)."""
        return self._finished.wait(timeout)

    def poll(self, max_events: int = 500) -> list[InstallEvent]:
        """The queued events, without blocking (for Blender's timer)."""
        out: list[InstallEvent] = []
        while len(out) < max_events:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        return out

    # -- worker thread --

    def _emit(self, kind: str, stage: str = "", message: str = "", **extra: Any) -> None:
        self.events.put(InstallEvent(kind, stage, message, self._fraction, **extra))

    def _progress(self, index: int, step_fraction: float, label: str = "") -> None:
        step = self.plan.steps[index]
        overall = self._starts[index] + self._weights[index] * min(max(step_fraction, 0.0), 1.0)
        if overall >= self._fraction + 0.002 or (label and label != self._label):
            self._fraction, self._label = max(self._fraction, min(overall, 1.0)), label
            self._emit("progress", step.stage, label or step.title)

    def _log(self, stage: str, line: str) -> None:
        self._tail.append(line)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()
        self._emit("log", stage, line)

    def _run(self) -> None:
        final: tuple[str, dict[str, Any]]
        try:
            for index, step in enumerate(self.plan.steps):
                if self._cancel.is_set():
                    raise _Cancelled()
                self._emit("stage", step.stage, step.title)
                handler = {"check": self._check, "prepare": self._prepare,
                           "verify": self._verify}.get(step.stage, self._command)
                handler(index, step)
                self._progress(index, 1.0)
            message = self.report.summary() if self.report else "Installed."
            final = ("done", {"message": " ".join((message,) + self.plan.notes),
                              "report": self.report})
        except _Cancelled:
            final = ("cancelled", {"message": "Installation cancelled; click Repair to finish it."})
        except InstallError as exc:
            final = ("error", {"message": exc.message, "log_tail": exc.log_tail or self.log_tail})
        except Exception as exc:  # a bug here must still end the job visibly
            self._tail.extend(traceback.format_exc().splitlines())
            final = ("error", {"message": f"The installer failed unexpectedly ({exc!r}).",
                               "log_tail": self.log_tail})
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            release(self.plan.env_dir)
        kind, fields = final
        if kind == "done":
            self._fraction = 1.0
        with self._lock:
            self._state = {"done": "done", "error": "failed", "cancelled": "cancelled"}[kind]
            self._proc = None
        self._emit(kind, "", **fields)
        self._finished.set()

    def _run_process(self, argv: Sequence[str], on_line: Callable[[str], None], cwd: Path | None,
                     missing: str) -> int:
        with self._lock:
            if self._cancel.is_set():
                raise _Cancelled()
            try:
                proc = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                    env=child_environment(), cwd=cwd, **process_group_kwargs())
            except FileNotFoundError:
                raise InstallError(missing) from None
            except OSError as exc:
                raise InstallError(f"{argv[0]} cannot be run ({exc.strerror or exc}).") from None
            self._proc = proc
        try:
            pumped = self._pump(proc, on_line)
            code = proc.wait()
        finally:
            with self._lock:
                self._proc = None
        if pumped and proc.stdout is not None:
            proc.stdout.close()
        if self._cancel.is_set():
            raise _Cancelled()
        return code

    def _pump(self, proc: "subprocess.Popen[str]", on_line: Callable[[str], None]) -> bool:
        """Hand the output to `on_line` until EOF; True when EOF came.

        Reading happens on its own thread so that an orphan that keeps the pipe open (a
        grandchild that survived a cancel) cannot hang this worker: once the process itself has
        exited, its pipe gets a grace period, and then it is abandoned.
        """
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # universal newlines: pip's \r redraws arrive as lines
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, name="sam3d-backend-output", daemon=True).start()
        exited_at: float | None = None
        while True:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                if proc.poll() is None:
                    continue
                exited_at = exited_at or time.monotonic()
                grace = 5.0 if self._cancel.is_set() else 30.0
                if time.monotonic() - exited_at > grace:
                    return False
                continue
            if line is None:
                return True
            on_line(line.rstrip("\r\n"))

    def _check(self, index: int, step: Step) -> None:
        env, base = self.plan.env_dir, self.plan.base_python
        if disk_status(env) == "foreign":
            venv_hint = (" (It is a virtual environment: pick its python as Server Python "
                         "instead.)" if (env / "pyvenv.cfg").is_file() else "")
            raise InstallError(f"{env} is not empty and was not created by this add-on; choose an "
                               "empty or new folder." + venv_hint)
        wanted = f"a Python {_python_range()} executable"
        lines: list[str] = []
        code = self._run_process([base, "-I", "-c", _PROBE_SCRIPT], lines.append, None,
                                 f"Base Python not found: {base}. Choose {wanted}.")
        self._tail.extend(lines[-20:])
        found = [line for line in lines if line.startswith(_PROBE_PREFIX)]
        if code != 0 or not found:
            raise InstallError(f"{base} did not run as a Python interpreter (exit code {code}); "
                               f"choose {wanted}.", "\n".join(lines[-20:]))
        probe = self._probe = json.loads(found[-1][len(_PROBE_PREFIX):])
        version = tuple(probe["version"][:2])
        text = ".".join(str(v) for v in probe["version"])
        if not SUPPORTED_PYTHON[0] <= version <= SUPPORTED_PYTHON[1]:
            raise InstallError(f"{base} is Python {text}; the server needs Python "
                               f"{_python_range()} (PyTorch and its other packages are built for "
                               "those). Choose another Python.")
        if probe["bits"] != 64:
            raise InstallError(f"{base} is a {probe['bits']}-bit Python; PyTorch needs a 64-bit "
                               "one.")
        if not probe["venv"] or not probe["ensurepip"]:
            missing = "venv" if not probe["venv"] else "ensurepip"
            raise InstallError(f"{base} has no {missing} module, so it cannot make virtual "
                               f"environments (on Debian/Ubuntu install "
                               f"python{version[0]}.{version[1]}-venv).")
        existing = venv_version(env)
        if existing is not None and existing != version:
            raise InstallError(f"{env} was made with Python {existing[0]}.{existing[1]}, not "
                               f"{text}; Remove it and install again, or choose that Python.")
        anchor = env
        while not anchor.exists() and anchor.parent != anchor:
            anchor = anchor.parent
        need = self.plan.required_bytes
        if read_marker(env) is not None:  # a repair: most of it is already there
            need = min(need, _GB)
        free = shutil.disk_usage(anchor).free
        if free < need:
            raise InstallError(f"Not enough disk space: {free / _GB:.1f} GB free at {anchor}, the "
                               f"installation needs about {need / _GB:.1f} GB.")

    def _prepare(self, index: int, step: Step) -> None:
        env = self.plan.env_dir
        try:
            env.mkdir(parents=True, exist_ok=True)
            old = read_marker(env) or {}
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            base = self._probe.get("executable", self.plan.base_python)
            write_marker(env, {"tool": MARKER_TOOL, "format": 1, "complete": False,
                               "created": old.get("created", now), "updated": now,
                               "python": self._python_version() or "",
                               "settings": dict(self.plan.settings, base_python=base)})
            self._log_file = open(self.plan.log_path, "a", encoding="utf-8")
            self._log_file.write(f"\n=== {now} ===\n{self.plan.describe()}\n{self.log_tail}\n")
        except OSError as exc:
            reason = ("permission denied" if isinstance(exc, PermissionError)
                      else exc.strerror or str(exc))
            raise InstallError(f"Cannot write to {env} ({reason}); choose a folder you can write "
                               "to.") from None

    def _python_version(self) -> str | None:
        return ".".join(str(v) for v in self._probe.get("version", [])) or None

    def _command(self, index: int, step: Step) -> None:
        argv = list(step.argv)
        progress: PipProgress | None = None
        if step.pip:
            argv += ["--progress-bar", "raw" if pip_supports_raw(self.plan.env_dir) else "off"]
            progress = PipProgress(step.expected_bytes)
        lines: list[str] = []

        def on_line(line: str) -> None:
            if progress is not None and progress.feed(line):
                self._progress(index, progress.fraction, progress.label)
            if not re.match(r"\s*Progress \d+ of ", line):  # raw progress is not log material
                lines.append(line)
                self._log(step.stage, line)

        self._log(step.stage, "$ " + _join_command(argv))
        missing = f"{argv[0]} does not exist" + (
            "; the environment is incomplete, click Repair." if step.pip else ".")
        code = self._run_process(argv, on_line, self.plan.env_dir, missing)
        if code != 0:
            raise InstallError(explain_failure(step.stage, step.title, code, lines[-200:],
                                               self._python_version(), str(self.plan.env_dir)),
                               self.log_tail)

    def _verify(self, index: int, step: Step) -> None:
        env = self.plan.env_dir
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            if not line.startswith(CHECK_PREFIX):  # the report itself is data, not log
                self._log(step.stage, line)

        argv = check_argv(env, self.plan.check_modules)
        code = self._run_process(argv, on_line, env,
                                 f"{argv[0]} does not exist; install or repair the environment.")
        report = parse_report(lines, self.plan.check_modules)
        if report is None:
            raise InstallError(f"The new environment's Python failed to start (exit code {code}).",
                               self.log_tail)
        self.report = report
        if not report.ok:
            raise InstallError("The installation finished, but some packages do not work. "
                               + report.summary(), self.log_tail)
        marker = read_marker(env)
        if marker is not None:  # never mark an environment that is not ours
            marker.update(complete=True, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          python=report.python)
            write_marker(env, marker)
