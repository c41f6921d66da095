# SPDX-License-Identifier: GPL-3.0-or-later
"""pip's text output, read by the managed-backend installer (`backend_install`).

* `PipProgress` turns the lines of one `pip install` into a fraction and a short label.
* `pip_supports_raw` says whether an environment's pip has `--progress-bar raw` (24.1+).
* `explain_failure` turns a failed step's log into one sentence the user can act on.

Standard library only (runs inside Blender); pure text functions, no subprocesses.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

PIP_RAW_PROGRESS = (24, 1)

_SIZE = re.compile(r"\(([\d.]+)\s*(bytes|kB|KB|MB|GB)\)")
_RAW = re.compile(r"^\s*Progress (\d+) of (\d+|\?)")
_RESOLVING = ("Collecting ", "Requirement already satisfied", "Processing ", "Obtaining ")
_UNITS = {"bytes": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}


class PipProgress:
    """One pip install's output lines -> fraction (0..1, never decreasing) and a label.

    Downloads fill 0..0.85 by bytes against the step's expected size (finished files from their
    "(12.3 MB)" sizes, the current file from raw "Progress a of b" lines); each collected
    requirement adds a little so cached installs still move; "Installing collected packages"
    is 0.85 and "Successfully installed" 1.0.
    """

    DOWNLOAD_SHARE = 0.85

    def __init__(self, expected_bytes: float = 0.0) -> None:
        self.expected = max(float(expected_bytes), 1.0)
        self.fraction = 0.0
        self.label = ""
        self.collected = 0
        self._done_bytes = 0.0
        self._current_size = 0.0
        self._current_bytes = 0.0

    def _finish_file(self) -> None:
        self._done_bytes += max(self._current_size, self._current_bytes)
        self._current_size = self._current_bytes = 0.0

    def feed(self, line: str) -> bool:
        """Take one line; True when the fraction or the label changed."""
        text = line.strip()
        before = (self.fraction, self.label)
        raw = _RAW.match(text)
        if raw:
            self._current_bytes = float(raw.group(1))
            if raw.group(2) != "?" and int(raw.group(2)) > 0:
                self._current_size = float(raw.group(2))
        elif text.startswith(_RESOLVING):
            self._finish_file()
            self.collected += 1
            name = (text.split(":", 1)[-1].strip() if text.startswith("Requirement")
                    else text.split(" ", 1)[1])
            self.label = f"Resolving {Path(name.split(' ')[0]).name}"
        elif text.startswith("Downloading "):
            self._finish_file()
            size = _SIZE.search(text)
            self._current_size = float(size.group(1)) * _UNITS[size.group(2)] if size else 0.0
            target = text.split(" ", 1)[1].split(" (")[0].rsplit("/", 1)[-1]
            shown = f" ({size.group(1)} {size.group(2)})" if size else ""
            self.label = f"Downloading {target}{shown}"
        elif text.startswith("Using cached "):
            self._finish_file()
        elif text.startswith("Installing collected packages:"):
            self._finish_file()
            count = len([p for p in text.split(":", 1)[1].split(",") if p.strip()])
            self.label = f"Installing {count} package{'s' if count != 1 else ''}"
            self.fraction = max(self.fraction, self.DOWNLOAD_SHARE)
        elif text.startswith("Successfully installed"):
            self.label, self.fraction = "Installed", 1.0
        elif text.startswith("Building wheel for "):
            self.label = f"Building {text.split()[3]}"
        done = self._done_bytes + self._current_bytes
        by_bytes = min(done / self.expected, 1.0) * 0.8
        by_count = 0.05 * (1.0 - 0.8 ** self.collected)
        if self.fraction < self.DOWNLOAD_SHARE:
            self.fraction = max(self.fraction, min(by_bytes + by_count, self.DOWNLOAD_SHARE - 0.01))
        return (self.fraction, self.label) != before


def pip_supports_raw(env_dir: str | os.PathLike[str]) -> bool:
    """From pip's dist-info folder name in the environment, without running it."""
    env = Path(env_dir)
    for pattern in ("lib/python*/site-packages/pip-*.dist-info",
                    "Lib/site-packages/pip-*.dist-info"):
        for info in env.glob(pattern):
            m = re.match(r"pip-(\d+)\.(\d+)", info.name)
            if m and (int(m.group(1)), int(m.group(2))) >= PIP_RAW_PROGRESS:
                return True
    return False


# (substrings of the log, sentence) in priority order: the first match explains the failure.
_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("No space left on device", "[Errno 28]", "not enough space on the disk", "[WinError 112]"),
     "The disk is full. Free some space (PyTorch's CUDA build needs about 8 GB), then click "
     "Repair."),
    (("Permission denied", "[Errno 13]", "Access is denied", "[WinError 5]", "PermissionError"),
     "Permission denied while writing to {env}. Choose a folder you own, or stop the server and "
     "close programs using the environment, then click Repair."),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED"),
     "The secure connection to the package index failed (SSL certificate); a proxy may intercept "
     "it. Set pip's certificate (PIP_CERT) or fix the network, then click Repair."),
    (("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name "
      "resolution", "Name or service not known", "getaddrinfo failed", "ConnectTimeoutError",
      "ReadTimeoutError", "Read timed out", "ProxyError", "Network is unreachable",
      "Max retries exceeded", "nodename nor servname"),
     "pip could not reach the package index: no network, or a proxy or firewall blocks it. Check "
     "the connection, then click Repair."),
    (("THESE PACKAGES DO NOT MATCH THE HASHES",),
     "A download arrived corrupted. Click Repair to download it again."),
)
_NO_MATCH = re.compile(r"No matching distribution found for ([^\s]+)")


def explain_failure(stage: str, title: str, returncode: int, lines: Sequence[str],
                    python_version: str | None = None, env_dir: str = "") -> str:
    """One sentence for a step that exited with `returncode` after printing `lines`."""
    text = "\n".join(lines)
    for needles, sentence in _FAILURES:
        if any(needle in text for needle in needles):
            return sentence.format(env=env_dir or "the environment folder")
    if stage == "venv" and "ensurepip" in text:
        minor = ".".join((python_version or "3").split(".")[:2])
        return (f"Python could not put pip into the new environment (ensurepip failed). On "
                f"Debian/Ubuntu install the python{minor}-venv package, or choose another Python.")
    missing = _NO_MATCH.search(text)
    if missing:
        where = f"Python {python_version}" if python_version else "this Python"
        return (f"pip found no build of {missing.group(1)} for {where} on this platform (or the "
                f"package source lacks it). The server needs a 64-bit Python 3.10-3.12.")
    return f"{title} failed (exit code {returncode}); see the log below."
