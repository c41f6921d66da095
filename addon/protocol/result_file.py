"""Import a saved reconstruction (RESULT.npz) into the scene without running the model.

``python -m server reconstruct IMAGE --out RESULT.npz`` writes the Result arrays; when it also
writes the model's RigData under the ``rig_`` prefix (``rig_joint_names``, ``rig_faces``, ...,
see :func:`with_rig_arrays`) the file is self-contained and the add-on imports it with numpy
only. Otherwise the rig comes from a separate rig npz (:func:`addon.result.save_rig_npz`) or,
where torch is available (the headless CLI's environment), from MHR's TorchScript file. A file
with only Meta's official output names (addon/official_result.py) gets its skeleton and rest mesh
from that same file's forward.

No bpy here: addon/scene/import_result.py builds the scene from what this module loads.
"""
from __future__ import annotations

import importlib
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from . import official_result as official
from .results import RIG_ARRAYS, Result, RigData, load_rig_npz

RIG_PREFIX = "rig_"


def with_rig_arrays(result: Mapping[str, Any], rig: RigData | Mapping[str, Any]) -> dict[str, Any]:
    """``result`` plus the rig's arrays under the ``rig_`` prefix (for RESULT.npz)."""
    clash = sorted(k for k in result if k.startswith(RIG_PREFIX))
    if clash:
        raise ValueError(f"result already has rig arrays {clash}")
    out = dict(result)
    for name, value in RigData.from_mapping(rig).to_mapping().items():
        out[RIG_PREFIX + name] = np.asarray(value)
    return out


def split_rig_arrays(arrays: Mapping[str, Any]) -> tuple[dict[str, Any], RigData | None]:
    """Separate the ``rig_`` arrays from the Result arrays; the rig is None when absent."""
    rig = {k[len(RIG_PREFIX):]: v for k, v in arrays.items() if k.startswith(RIG_PREFIX)}
    rest = {k: v for k, v in arrays.items() if not k.startswith(RIG_PREFIX)}
    if not rig:
        return rest, None
    missing = [k for k in RIG_ARRAYS if k not in rig]
    if missing:
        raise ValueError(f"the result file has incomplete rig arrays: missing "
                         f"{', '.join(RIG_PREFIX + k for k in missing)}")
    return rest, RigData.from_mapping(rig)


def load_result_file(path: str | os.PathLike, mhr: str | os.PathLike | None = None,
                     image_size: tuple[int, int] | None = None) -> tuple[Result, RigData | None]:
    """Load and validate RESULT.npz; returns the Result and its embedded rig (or None).

    A file with only Meta's official names needs `mhr` (MHR's .pt or a checkpoint folder) to
    compute the skeleton and rest mesh; `image_size` (W, H) stands in for a missing one."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"result file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{p} is not a readable result .npz ({exc})") from exc
    rest, rig = split_rig_arrays(arrays)
    rest = official.with_person_axis(rest)
    if official.is_official_only(rest):
        if mhr is None:
            raise ValueError(f"{p} holds only Meta's official outputs (no mhr_skel_state / "
                             f"mhr_rest_vertices): {official.MHR_FLAG_HINT}, so the skeleton and "
                             "rest mesh are computed from its mhr_model_params and shape_params")
        torch, rig_data = _server_mhr()
        module = torch.jit.load(mhr_file(mhr), map_location="cpu").eval()
        rest = official.complete_skeleton(rest, rig_data.person_rig_state, module)
    rest = official.camera_arrays(rest, image_size)
    return Result.from_mapping(rest), rig


def mhr_file(path: str | os.PathLike) -> str:
    """MHR's TorchScript file: the path itself, or `assets/mhr_model.pt` of a checkpoint folder."""
    p = os.fspath(path)
    if os.path.isdir(p):
        for candidate in (os.path.join(p, "assets", "mhr_model.pt"), os.path.join(p, "mhr_model.pt")):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"{p} has no assets/mhr_model.pt: pass MHR's mhr_model.pt or the "
                                "checkpoint folder that holds it")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"MHR model not found: {p}")
    return p


def _server_mhr() -> tuple[Any, Any]:
    try:
        # By name: the add-on (and its type check) must not depend on torch or the server.
        return importlib.import_module("torch"), importlib.import_module("server.mhr.rig_data")
    except ImportError as exc:
        raise RuntimeError("reading the rig from an MHR .pt file needs torch and the server "
                           f"package ({exc}); use a result file with embedded rig_ arrays or "
                           "a rig .npz instead") from exc


def rig_from_mhr(mhr_path: str | os.PathLike) -> RigData:
    """RigData from MHR's TorchScript file or checkpoint folder (needs torch and the server)."""
    p = mhr_file(mhr_path)
    torch, rig_data = _server_mhr()
    module = torch.jit.load(p, map_location="cpu").eval()
    return RigData.from_mapping(rig_data.rig_data_from_mhr(module))


def resolve_rig(embedded: RigData | None, rig: RigData | Mapping[str, Any] | str | os.PathLike | None
                ) -> RigData:
    """The rig to build with: an explicit one (RigData, mapping, rig .npz or MHR .pt path) wins
    over the one embedded in the result file."""
    if rig is None:
        if embedded is None:
            raise ValueError("the result file carries no rig_ arrays: pass the rig (a rig .npz "
                             "or MHR's mhr_model.pt)")
        return embedded
    if isinstance(rig, (str, os.PathLike)):
        path = os.fspath(rig)
        if path.lower().endswith(".npz"):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"rig file not found: {path}")
            return load_rig_npz(path)
        return rig_from_mhr(path)
    return RigData.from_mapping(rig)
