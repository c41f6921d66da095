"""Can this Python download a Hugging Face checkpoint? One JSON line says what is missing.

    python -m server.hf_access REPO_ID    ->  {"status": ..., "repo": ..., "detail": ...}

Statuses: `ok`, `not_logged_in` (no token and the repo needs one), `no_access` (logged in, but
the gated repo has not granted access), `not_found`, `offline` (HF_HUB_OFFLINE, or the hub is
unreachable). The add-on's "Check access" button runs this in the server's Python, so it sees
the same login (`hf auth login`) and HF_TOKEN the server will use. Exit status 0 for `ok`, 1
otherwise.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

STATUSES = ("ok", "not_logged_in", "no_access", "not_found", "offline")


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_access(repo_id: str, token: str | None = None, api: Any = None) -> dict[str, str]:
    """{"status", "repo", "detail"} for `repo_id`; never raises for hub or network errors."""
    if not repo_id or repo_id.count("/") != 1:
        return {"status": "not_found", "repo": repo_id,
                "detail": "a repository id looks like 'owner/name'"}
    if _offline_env():
        return {"status": "offline", "repo": repo_id, "detail": "HF_HUB_OFFLINE is set"}
    from huggingface_hub import HfApi, get_token
    from huggingface_hub import errors as hf_errors

    token = token or os.environ.get("HF_TOKEN") or get_token()
    api = api if api is not None else HfApi()

    def answer(status: str, detail: str = "") -> dict[str, str]:
        return {"status": status, "repo": repo_id, "detail": detail}

    try:
        api.auth_check(repo_id, token=token)
    except hf_errors.GatedRepoError as exc:
        if not token:
            return answer("not_logged_in", "the repository is gated: log in with "
                          "`hf auth login` or set HF_TOKEN")
        return answer("no_access", f"request access at https://huggingface.co/{repo_id} "
                      f"({_first_line(exc)})")
    except hf_errors.RepositoryNotFoundError as exc:
        if not token:  # private or gated repos look missing to anonymous users
            return answer("not_logged_in", f"not found without a token ({_first_line(exc)})")
        return answer("not_found", _first_line(exc))
    except hf_errors.OfflineModeIsEnabled as exc:
        return answer("offline", _first_line(exc))
    except hf_errors.HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        if code == 401:
            return answer("not_logged_in", "HTTP 401: the token is missing or invalid")
        if code == 403:
            return answer("no_access", f"HTTP 403 for {repo_id}")
        return answer("offline", _first_line(exc))
    except OSError as exc:  # connection errors surface as OSError subclasses
        return answer("offline", _first_line(exc))
    return answer("ok")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(json.dumps({"status": "not_found", "repo": "",
                          "detail": "usage: python -m server.hf_access REPO_ID"}))
        return 2
    result = check_access(args[0])
    print(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
