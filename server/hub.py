"""Is the Hugging Face hub reachable? Asked once per process, answered in under 2 s.

Offline, huggingface_hub and transformers retry for tens of seconds before they fall back to the
local cache (a photo without a box sat silent for 24 s while the detector tried). Every hub
access of the server asks here first and, when the hub cannot be reached, loads with
`local_files_only=True`, which fails or succeeds at once.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from urllib.parse import urlparse

log = logging.getLogger("sam3d.server.hub")

CHECK_TIMEOUT_S = 1.5
_TRUE = {"1", "true", "yes", "on"}


def offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def endpoint() -> tuple[str, int]:
    """(host, port) of the hub huggingface_hub talks to (HF_ENDPOINT honoured)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "huggingface.co", port


@functools.lru_cache(maxsize=1)
def offline_reason() -> str | None:
    """None when the hub answers a TCP connection in time, else why not (said once per process)."""
    if offline_by_env():
        reason = "HF_HUB_OFFLINE is set"
    else:
        host, port = endpoint()
        outcome: list[str | None] = []

        def probe() -> None:
            try:
                # Name lookup has no timeout of its own: the thread join bounds it.
                with socket.create_connection((host, port), timeout=CHECK_TIMEOUT_S):
                    outcome.append(None)
            except OSError as exc:
                outcome.append(f"{host}:{port} cannot be reached ({exc.strerror or exc})")

        thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
        thread.start()
        thread.join(CHECK_TIMEOUT_S + 0.2)
        reason = outcome[0] if outcome else f"{host}:{port} did not answer within {CHECK_TIMEOUT_S:g} s"
    if reason:
        log.warning("Hugging Face hub offline (%s): using the local cache only", reason)
    return reason


def reachable() -> bool:
    return offline_reason() is None
