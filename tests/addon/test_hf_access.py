"""server/hf_access.py: each hub failure maps to the sentence the add-on shows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from server import hf_access
from tests.conftest import ROOT

hub_errors = pytest.importorskip("huggingface_hub.errors")

REPO = "facebook/sam-3d-body-dinov3"


def response(code: int) -> SimpleNamespace:
    return SimpleNamespace(headers={}, status_code=code, request=None)


class FakeApi:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc
        self.calls: list[tuple[str, str | None]] = []

    def auth_check(self, repo_id: str, token: str | None = None) -> None:
        self.calls.append((repo_id, token))
        if self.exc is not None:
            raise self.exc


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


@pytest.mark.parametrize("exc, token, expected", [
    (None, "hf_x", "ok"),
    (hub_errors.GatedRepoError("gated", response=response(401)), None, "not_logged_in"),
    (hub_errors.GatedRepoError("gated", response=response(403)), "hf_x", "no_access"),
    (hub_errors.RepositoryNotFoundError("nope", response=response(404)), "hf_x", "not_found"),
    (hub_errors.RepositoryNotFoundError("nope", response=response(401)), None, "not_logged_in"),
    (hub_errors.HfHubHTTPError("denied", response=response(403)), "hf_x", "no_access"),
    (hub_errors.HfHubHTTPError("bad token", response=response(401)), "hf_x", "not_logged_in"),
    (ConnectionError("no route to host"), "hf_x", "offline"),
])
def test_hub_errors_map_to_statuses(exc, token, expected) -> None:
    api = FakeApi(exc)
    answer = hf_access.check_access(REPO, token=token, api=api)
    assert answer["status"] == expected, answer
    assert api.calls == [(REPO, token)]


def test_hf_token_environment_variable_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    api = FakeApi(None)
    assert hf_access.check_access(REPO, api=api)["status"] == "ok"
    assert api.calls == [(REPO, "hf_from_env")]


def test_bad_repo_id_is_named() -> None:
    answer = hf_access.check_access("not-a-repo", api=FakeApi(None))
    assert answer["status"] == "not_found" and "owner/name" in answer["detail"]


def test_command_line_offline_prints_one_json_line() -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "server.hf_access", REPO], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and done.returncode == 1, done.stderr
    assert json.loads(lines[0]) == {"status": "offline", "repo": REPO,
                                    "detail": "HF_HUB_OFFLINE is set"}
