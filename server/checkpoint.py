"""Finding, downloading and safely loading official SAM 3D Body checkpoints.

A checkpoint is either an official-format directory (`model.ckpt`, `model_config.yaml`,
`assets/mhr_model.pt`) or a Hugging Face repo id fetched with `huggingface_hub` (gated repos:
the token comes from `HF_TOKEN` or `hf auth login`). Loading never executes code from the file:
`torch.load(weights_only=True)`, with inert stand-ins for the non-tensor objects a Lightning
checkpoint may carry (server/weight_cache.py keeps the prepared weights for fast restarts).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .errors import (
    ACCESS_DENIED,
    CHECKPOINT_INVALID,
    CHECKPOINT_MISSING,
    OFFLINE,
    UNSUPPORTED_MODEL,
    ServerError,
)

log = logging.getLogger(__name__)

DEFAULT_REPO = "facebook/sam-3d-body-dinov3"
KNOWN_REPOS = ("facebook/sam-3d-body-dinov3", "facebook/sam-3d-body-vith")
CHECKPOINT_FILE = "model.ckpt"
CONFIG_FILE = "model_config.yaml"
MHR_FILE = "assets/mhr_model.pt"
# Keys that live in assets/mhr_model.pt, not in model.ckpt (the official loader is non-strict
# and only logs them as missing).
MHR_KEY = re.compile(r"^head_pose(_hand)?\.mhr\.")


@dataclass(frozen=True)
class CheckpointFiles:
    checkpoint: Path
    config: Path
    mhr: Path
    source: str  # the repo id or the directory the user gave

    @property
    def name(self) -> str:
        return self.source


def _existing(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise ServerError(CHECKPOINT_MISSING, f"{what} not found at {path}. {hint}")
    return path


def locate_directory(checkpoint: str | os.PathLike[str], mhr: str | os.PathLike[str] | None = None) -> CheckpointFiles:
    """Resolve a local checkpoint: a directory, or the path of its `model.ckpt`.

    Like the official loader, `model_config.yaml` is looked up next to the checkpoint file and
    then in its parent directory.
    """
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ServerError(
            CHECKPOINT_MISSING,
            f"Checkpoint {path} does not exist. Give a folder with model.ckpt, model_config.yaml "
            "and assets/mhr_model.pt (e.g. `hf download facebook/sam-3d-body-dinov3 --local-dir DIR`), "
            "or a Hugging Face repo id with --repo.",
        )
    ckpt = path / CHECKPOINT_FILE if path.is_dir() else path
    hint = "An official checkpoint folder holds model.ckpt, model_config.yaml and assets/mhr_model.pt."
    _existing(ckpt, CHECKPOINT_FILE, hint)
    config = ckpt.parent / CONFIG_FILE
    if not config.is_file():
        config = ckpt.parent.parent / CONFIG_FILE
    _existing(config, CONFIG_FILE, hint)
    mhr_path = Path(mhr).expanduser() if mhr else ckpt.parent / MHR_FILE
    _existing(mhr_path, "The MHR body model (mhr_model.pt)", "Pass --mhr PATH or put it in assets/.")
    return CheckpointFiles(ckpt, config, mhr_path, str(path))


def download(repo_id: str = DEFAULT_REPO, mhr: str | os.PathLike[str] | None = None,
             token: str | None = None, cache_dir: str | None = None) -> CheckpointFiles:
    """Fetch (or reuse from the hub cache) an official checkpoint; errors say what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    if repo_id not in KNOWN_REPOS:
        log.warning("%s is not one of the released checkpoints %s", repo_id, ", ".join(KNOWN_REPOS))
    page = f"https://huggingface.co/{repo_id}"
    patterns = [CHECKPOINT_FILE, CONFIG_FILE] + ([] if mhr else [MHR_FILE])
    from server.hub import reachable

    try:
        # Offline: the local cache only, answered at once instead of after the hub's retries.
        from server.stages import hub_progress_class, stage

        online = reachable()
        stage(f"fetching {repo_id} from Hugging Face" if online else f"looking for {repo_id} in the local cache")
        local = snapshot_download(repo_id, allow_patterns=patterns, token=token or None, cache_dir=cache_dir,
                                  local_files_only=not online, tqdm_class=hub_progress_class(repo_id))
    except hf_errors.GatedRepoError as exc:
        raise ServerError(
            ACCESS_DENIED,
            f"{repo_id} is gated and this Hugging Face account has no access yet: open {page}, "
            "accept the SAM License, wait for approval, then log in with `hf auth login` or set HF_TOKEN.",
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ServerError(
            ACCESS_DENIED,
            f"{repo_id} was not found or needs a login: check the repo id (released: "
            f"{', '.join(KNOWN_REPOS)}) and log in with `hf auth login` or set HF_TOKEN.",
        ) from exc
    except hf_errors.LocalEntryNotFoundError as exc:
        raise ServerError(
            OFFLINE,
            f"Cannot reach huggingface.co and {repo_id} is not in the local cache: connect to the "
            "internet once (or unset HF_HUB_OFFLINE), or download it elsewhere and pass the folder "
            "with --checkpoint.",
        ) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ServerError(
                ACCESS_DENIED,
                f"Hugging Face refused access to {repo_id} (HTTP {status}): the token is missing, "
                f"expired or lacks access; request access at {page} and log in with `hf auth login`.",
            ) from exc
        raise ServerError(OFFLINE, f"Downloading {repo_id} failed: {exc}") from exc
    except OSError as exc:  # connection errors surface as OSError subclasses
        raise ServerError(OFFLINE, f"Downloading {repo_id} failed ({exc}); check the network.") from exc
    files = locate_directory(Path(local), mhr=mhr)
    return CheckpointFiles(files.checkpoint, files.config, files.mhr, repo_id)


def resolve(checkpoint: str | None = None, repo: str | None = None, mhr: str | None = None) -> CheckpointFiles:
    """A local folder wins; otherwise the repo id (default: the DINOv3 release)."""
    if checkpoint and repo:
        raise ServerError("bad_input", "Give either --checkpoint or --repo, not both.")
    if checkpoint:
        return locate_directory(checkpoint, mhr=mhr)
    return download(repo or DEFAULT_REPO, mhr=mhr, token=os.environ.get("HF_TOKEN"))


class _Inert(dict):
    """Stands in for any non-tensor class a Lightning checkpoint pickles (yacs CfgNode,
    argparse Namespace, ...). It only stores what the unpickler hands it and runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self["__state__"] = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()


def _allowed_globals() -> dict[str, Any]:
    """The globals torch's own `weights_only` unpickler accepts (tensor rebuilders, dtypes)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - private API; fall back to the essentials
        import collections

        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch.Size": torch.Size,
            **{f"torch.{n}": getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")},
        }


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only torch's tensor-rebuilding globals; every other class becomes `_Inert`.

    Torch's weights_only unpickler refuses dict subclasses such as yacs' CfgNode that Lightning
    stores beside the weights; this one accepts them as inert data instead. Code can only run
    through `find_class`, so nothing outside the allow-list can execute.
    """

    _allowed = _allowed_globals()
    _blocked_modules = ("os", "posix", "nt", "subprocess", "builtins", "sys", "importlib", "shutil", "socket")

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        if module.split(".")[0] in self._blocked_modules:
            raise pickle.UnpicklingError(f"refusing {key}: checkpoints may not reference it")
        return _Inert


class _RestrictedPickle:
    """A `pickle_module` for torch.load that unpickles with `_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(pickle.load)
    __name__ = "restricted_pickle"


def _torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`; for Lightning extras, the restricted unpickler."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        first = exc
    if "was not an allowed global" not in str(first) and "Can only" not in str(first):
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{path} could not be read as a PyTorch checkpoint without running code: {_short(first)}",
        ) from first
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{path} could not be read as a PyTorch checkpoint without running code: {_short(exc)}",
        ) from exc


def _short(exc: BaseException) -> str:
    """The informative line of torch's long unpickling errors."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Can only" in ln or "refusing" in ln or "zip" in ln.lower():
            return ln
    return lines[-1] if lines else type(exc).__name__


def default_cache_dir() -> Path:
    root = os.environ.get("SAM3D_BODY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sam3d_body")
    return Path(root)


def load_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, loaded without running code from the file (`_torch_load`).
    `weight_cache.load_weights` keeps them, prepared, for fast restarts."""
    obj = _torch_load(ckpt)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise ServerError(CHECKPOINT_INVALID, f"{ckpt} holds no state_dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ServerError(CHECKPOINT_INVALID, f"{ckpt} holds no tensors")
    return tensors


def _listing(title: str, items: Iterable[str], limit: int = 12) -> str:
    items = list(items)
    shown = ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
    return f"{title} ({len(items)}): {shown}"


def check_state_dict(expected: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Strict key/shape check, except the MHR keys that come from mhr_model.pt."""
    need = {k: v for k, v in expected.items() if not MHR_KEY.match(k)}
    missing = sorted(k for k in need if k not in loaded)
    unexpected = sorted(k for k in loaded if k not in need and not MHR_KEY.match(k))
    wrong = sorted(
        f"{k} {tuple(loaded[k].shape)} != {tuple(need[k].shape)}"
        for k in need if k in loaded and tuple(loaded[k].shape) != tuple(need[k].shape)
    )
    if not (missing or unexpected or wrong):
        return
    parts = [p for p in (
        _listing("missing keys", missing) if missing else "",
        _listing("unexpected keys", unexpected) if unexpected else "",
        _listing("wrong shapes", wrong) if wrong else "",
    ) if p]
    code = UNSUPPORTED_MODEL if (wrong or len(missing) > len(need) // 2) else CHECKPOINT_INVALID
    raise ServerError(
        code,
        f"{source} does not match the model described by its model_config.yaml: " + "; ".join(parts)
        + ". Is the config from the same release as model.ckpt (dinov3 vs vith)?",
    )
