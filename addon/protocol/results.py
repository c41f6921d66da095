"""Result and RigData containers (numpy + stdlib only): validation, npz load/save, per-person split.

The array names, shapes and units are the contract of docs/ARCHITECTURE.md ("Result", "RigData").
Every check raises ``ValueError`` naming the offending array, so a bad server reply or a hand-made
RESULT.npz fails with a readable message before anything touches the Blender scene.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# Per-person arrays: name -> (shape after the person axis, dtype kind). "V" is the vertex count,
# "H"/"W" the mask size; None marks a free axis.
PERSON_ARRAYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "pred_vertices": (("V", 3), "f"),
    "pred_keypoints_3d": ((70, 3), "f"),
    "pred_keypoints_2d": ((70, 2), "f"),
    "pred_cam_t": ((3,), "f"),
    "focal_length": ((), "f"),
    "pred_joint_coords": ((127, 3), "f"),
    "pred_global_rots": ((127, 3, 3), "f"),
    "global_rot": ((3,), "f"),
    "body_pose_params": ((133,), "f"),
    "hand_pose_params": ((108,), "f"),
    "shape_params": ((45,), "f"),
    "scale_params": ((28,), "f"),
    "expr_params": ((72,), "f"),
    "mhr_model_params": ((204,), "f"),
    "pred_pose_raw": ((266,), "f"),
    "bbox": ((4,), "f"),
    "lhand_bbox": ((4,), "f"),
    "rhand_bbox": ((4,), "f"),
    "mask": (("H", "W", 1), "u"),
    "mhr_skel_state": ((127, 8), "f"),
    "mhr_vertices": (("V", 3), "f"),
    "mhr_rest_vertices": (("V", 3), "f"),
    "mhr_rest_skel_state": ((127, 8), "f"),
}
# What the add-on needs to build a posed character and its camera.
REQUIRED_PERSON = ("pred_cam_t", "mhr_skel_state", "mhr_rest_vertices")
REQUIRED_SHARED = ("cam_int", "image_size")
STRING_ARRAYS = ("intrinsics_source", "mode")
INTRINSICS_SOURCES = ("user", "exif", "default")
MODES = ("body", "full")

RIG_ARRAYS = ("joint_names", "joint_parents", "bind_skel_state", "faces", "texcoords",
              "texcoord_faces", "skin_indices", "skin_weights", "template_vertices")


def _kind_ok(arr: np.ndarray, kind: str) -> bool:
    if kind == "f":
        return np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if kind == "i":
        return np.issubdtype(arr.dtype, np.integer)
    if kind == "u":
        return arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)
    raise AssertionError(kind)


def _check_array(name: str, value: Any, shape: tuple[Any, ...], kind: str,
                 dims: dict[str, int]) -> np.ndarray:
    """Check shape (binding symbolic axes in ``dims``), dtype kind and finiteness."""
    arr = np.asarray(value)
    if arr.dtype == object:
        raise ValueError(f"{name}: object arrays are not allowed")
    if arr.ndim != len(shape):
        raise ValueError(f"{name}: expected {len(shape)} axes {_fmt(shape)}, got shape {arr.shape}")
    for axis, (want, got) in enumerate(zip(shape, arr.shape)):
        if want is None:
            continue
        if isinstance(want, str):
            if dims.setdefault(want, got) != got:
                raise ValueError(f"{name}: axis {axis} ({want}) is {got}, but other arrays have "
                                 f"{want} = {dims[want]}")
        elif want != got:
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {arr.shape}")
    if not _kind_ok(arr, kind):
        raise ValueError(f"{name}: expected {'floating' if kind == 'f' else 'integer'} data, "
                         f"got dtype {arr.dtype}")
    if kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _string(value: Any, name: str) -> str:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "US":
        raise ValueError(f"{name}: expected a 0-d string array, got dtype {arr.dtype} shape {arr.shape}")
    return str(arr.item() if arr.dtype.kind == "U" else arr.item().decode("utf-8"))


# --- RigData ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RigData:
    """Model-level rig: skeleton, bind pose, mesh topology, UVs and skin weights (MHR cm)."""

    joint_names: list[str]
    joint_parents: np.ndarray     # (J,) int32, -1 for the root
    bind_skel_state: np.ndarray   # (J, 8) float32: t cm, q xyzw, s
    faces: np.ndarray             # (F, 3) int32
    texcoords: np.ndarray         # (T, 2) float32
    texcoord_faces: np.ndarray    # (F, 3) int32
    skin_indices: np.ndarray      # (V, K) int32
    skin_weights: np.ndarray      # (V, K) float32, rows sum to 1
    template_vertices: np.ndarray  # (V, 3) float32 cm

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_vertices(self) -> int:
        return int(self.template_vertices.shape[0])

    @classmethod
    def from_mapping(cls, data: "RigData | Mapping[str, Any]") -> "RigData":
        if isinstance(data, RigData):
            return data
        missing = [k for k in RIG_ARRAYS if k not in data]
        if missing:
            raise ValueError(f"rig data is missing {', '.join(missing)}")
        names_arr = np.asarray(data["joint_names"])
        if names_arr.ndim != 1 or names_arr.dtype.kind not in "US":
            raise ValueError(f"joint_names: expected a list of strings, got {names_arr.dtype} "
                             f"shape {names_arr.shape}")
        names = [str(n) for n in names_arr.tolist()]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError("joint_names must be unique and non-empty")
        dims: dict[str, int] = {"J": len(names)}
        parents = _check_array("joint_parents", data["joint_parents"], ("J",), "i", dims)
        idx = np.arange(len(names))
        if np.any((parents >= idx) | (parents < -1)):
            j = int(np.flatnonzero((parents >= idx) | (parents < -1))[0])
            raise ValueError(f"joint_parents: joint {j} has parent {int(parents[j])}; parents must "
                             "be -1 or precede their children")
        bind = _check_array("bind_skel_state", data["bind_skel_state"], ("J", 8), "f", dims)
        if np.any(bind[:, 7] <= 0):
            raise ValueError("bind_skel_state: joint scales must be positive")
        faces = _check_array("faces", data["faces"], ("F", 3), "i", dims)
        tex = _check_array("texcoords", data["texcoords"], ("T", 2), "f", dims)
        tex_faces = _check_array("texcoord_faces", data["texcoord_faces"], ("F", 3), "i", dims)
        skin_i = _check_array("skin_indices", data["skin_indices"], ("V", "K"), "i", dims)
        skin_w = _check_array("skin_weights", data["skin_weights"], ("V", "K"), "f", dims)
        template = _check_array("template_vertices", data["template_vertices"], ("V", 3), "f", dims)
        n_v = dims["V"]
        if faces.size and (faces.min() < 0 or faces.max() >= n_v):
            raise ValueError(f"faces: vertex indices must lie in [0, {n_v})")
        if tex_faces.size and (tex_faces.min() < 0 or tex_faces.max() >= dims["T"]):
            raise ValueError(f"texcoord_faces: indices must lie in [0, {dims['T']})")
        if skin_i.size and (skin_i.min() < 0 or skin_i.max() >= len(names)):
            raise ValueError(f"skin_indices: joint indices must lie in [0, {len(names)})")
        if np.any(skin_w < 0):
            raise ValueError("skin_weights: negative weights")
        sums = skin_w.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            bad = int(np.argmax(np.abs(sums - 1.0)))
            raise ValueError(f"skin_weights: rows must sum to 1 (vertex {bad} sums to {sums[bad]:.4f})")
        return cls(joint_names=names, joint_parents=parents.astype(np.int32),
                   bind_skel_state=bind.astype(np.float32), faces=faces.astype(np.int32),
                   texcoords=tex.astype(np.float32), texcoord_faces=tex_faces.astype(np.int32),
                   skin_indices=skin_i.astype(np.int32), skin_weights=skin_w.astype(np.float32),
                   template_vertices=template.astype(np.float32))

    def to_mapping(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in RIG_ARRAYS}
        out["joint_names"] = np.asarray(self.joint_names, dtype=str)
        return out


def load_rig_npz(path: str | os.PathLike) -> RigData:
    with np.load(path, allow_pickle=False) as data:
        return RigData.from_mapping({k: data[k] for k in data.files})


def save_rig_npz(path: str | os.PathLike, rig: RigData | Mapping[str, Any]) -> None:
    np.savez(path, **RigData.from_mapping(rig).to_mapping())


# --- Result ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PersonResult:
    """One person's slice of a Result (arrays without the leading person axis)."""

    index: int
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"person {self.index} has no '{name}' array") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.arrays.get(name, default)

    @property
    def cam_t(self) -> np.ndarray:
        return self.arrays["pred_cam_t"]

    @property
    def skel_state(self) -> np.ndarray:
        return self.arrays["mhr_skel_state"]

    @property
    def rest_vertices(self) -> np.ndarray:
        return self.arrays["mhr_rest_vertices"]


@dataclass(frozen=True)
class Result:
    """A validated reconstruction of one photo (docs/ARCHITECTURE.md "Result")."""

    arrays: dict[str, np.ndarray]
    persons: list[PersonResult] = field(default_factory=list)
    intrinsics_source: str = "default"
    mode: str = "body"

    @property
    def n_persons(self) -> int:
        return len(self.persons)

    @property
    def cam_int(self) -> np.ndarray:
        return self.arrays["cam_int"]

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = (int(x) for x in self.arrays["image_size"])
        return w, h

    @property
    def faces(self) -> np.ndarray | None:
        return self.arrays.get("faces")

    @classmethod
    def from_mapping(cls, data: "Result | Mapping[str, Any]") -> "Result":
        if isinstance(data, Result):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a result must be a mapping of arrays, got {type(data).__name__}")
        arrays: dict[str, np.ndarray] = {}
        dims: dict[str, int] = {}
        missing = [k for k in REQUIRED_PERSON + REQUIRED_SHARED if k not in data]
        if missing:
            raise ValueError(f"result is missing {', '.join(missing)}")
        n = np.asarray(data["pred_cam_t"]).shape[0] if np.ndim(data["pred_cam_t"]) == 2 else -1
        if n < 0:
            raise ValueError(f"pred_cam_t: expected shape (N, 3), got {np.shape(data['pred_cam_t'])}")
        dims["N"] = n
        for name, value in data.items():
            if name in PERSON_ARRAYS:
                shape, kind = PERSON_ARRAYS[name]
                arrays[name] = _check_array(name, value, ("N",) + shape, kind, dims)
            elif name == "cam_int":
                k = _check_array(name, value, (3, 3), "f", dims)
                if k[0, 0] <= 0 or k[1, 1] <= 0:
                    raise ValueError(f"cam_int: focal lengths must be positive, got {k[0, 0]}, {k[1, 1]}")
                arrays[name] = k
            elif name == "image_size":
                size = _check_array(name, value, (2,), "i", dims)
                if np.any(size < 1):
                    raise ValueError(f"image_size: (W, H) must be positive, got {size.tolist()}")
                arrays[name] = size
            elif name == "faces":
                arrays[name] = _check_array(name, value, ("F", 3), "i", dims)
            elif name in STRING_ARRAYS:
                arrays[name] = np.asarray(_string(value, name))
            else:
                arr = np.asarray(value)
                if arr.dtype == object:
                    raise ValueError(f"{name}: object arrays are not allowed")
                arrays[name] = arr  # unknown extras travel untouched
        if "faces" in arrays and "V" in dims and arrays["faces"].size:
            if arrays["faces"].min() < 0 or arrays["faces"].max() >= dims["V"]:
                raise ValueError(f"faces: vertex indices must lie in [0, {dims['V']})")
        source = str(arrays.get("intrinsics_source", np.asarray("default")))
        if source not in INTRINSICS_SOURCES:
            raise ValueError(f"intrinsics_source must be one of {INTRINSICS_SOURCES}, got {source!r}")
        mode = str(arrays.get("mode", np.asarray("body")))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        persons = [PersonResult(i, {k: v[i] for k, v in arrays.items() if k in PERSON_ARRAYS})
                   for i in range(n)]
        return cls(arrays=arrays, persons=persons, intrinsics_source=source, mode=mode)

    def to_mapping(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)


def stack_persons(persons: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack per-person dicts (arrays without the person axis) into (N, ...) arrays."""
    if not persons:
        raise ValueError("cannot stack an empty list of persons")
    keys = set(persons[0])
    for i, p in enumerate(persons[1:], start=1):
        if set(p) != keys:
            raise ValueError(f"person {i} has arrays {sorted(set(p) ^ keys)} that person 0 "
                             "does not share")
    return {k: np.stack([np.asarray(p[k]) for p in persons]) for k in sorted(keys)}


def load_result_npz(path: str | os.PathLike) -> Result:
    """Load and validate a RESULT.npz (no pickle)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"result file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        return Result.from_mapping({k: data[k] for k in data.files})


def save_result_npz(path: str | os.PathLike, result: Result | Mapping[str, Any],
                    compressed: bool = True) -> None:
    """Validate and write a result as npz (string fields as 0-d str arrays)."""
    arrays = Result.from_mapping(result).to_mapping()
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
