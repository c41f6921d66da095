"""Bone-naming presets for the MHR 127-joint skeleton (numpy + stdlib only, no ``bpy``).

A preset names every MHR joint for a target ecosystem, or marks it *merged* (``None``): a merged
joint gets no bone and its skin weights go to its nearest kept ancestor. The rig builder asks
for a :class:`BonePlan` (which joints become bones, their names, parents and collections) and
moves the weights with :func:`merge_skin_weights`.

* ``mhr``    native names, every joint kept (the default).
* ``unreal`` UE mannequin style (``pelvis``, ``spine_01``, ``thigh_l``, ``upperarm_twist_01_l``),
  every joint kept: UE deforms better with the twist helpers, and retarget chains accept extras.
* ``mixamo`` ``mixamorig:`` names on a 65-bone Mixamo / Unity-Humanoid hierarchy; the twist
  helpers, extra spine / foot / metacarpal joints and face internals are merged.

Choices that are not plain renames (docs/NAMING.md explains them):
* MHR drives ankle flexion through ``*_talocrural`` (``foot_bend``), while ``*_foot`` (same
  place) only carries the lower-leg twist. So the *foot* bone of the other presets is
  ``*_talocrural``; ``*_foot`` becomes ``ankle_twist_*`` (Unreal) or merges into the leg (Mixamo).
* Mixamo has three spine bones for MHR's four: ``c_spine0`` (3.8 cm above the pelvis) merges
  into ``Hips``, so ``Spine2`` = ``c_spine3`` keeps the shoulders' and neck's real parent.
* Finger ``*_null`` end sites become Mixamo's ``*4`` tip bones and ``c_head_null`` becomes
  ``HeadTop_End``, as in Mixamo exports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Order and parents of MHR's skeleton (reference/mhr.md §3.1); the presets are defined on these
# names, and tests check them against the TorchScript model's own tables.
MHR_JOINT_NAMES: tuple[str, ...] = (
    "body_world", "root",
    "l_upleg", "l_lowleg", "l_foot", "l_talocrural", "l_subtalar", "l_transversetarsal", "l_ball",
    "l_lowleg_twist1_proc", "l_lowleg_twist2_proc", "l_lowleg_twist3_proc", "l_lowleg_twist4_proc",
    "l_upleg_twist0_proc", "l_upleg_twist1_proc", "l_upleg_twist2_proc", "l_upleg_twist3_proc",
    "l_upleg_twist4_proc",
    "r_upleg", "r_lowleg", "r_foot", "r_talocrural", "r_subtalar", "r_transversetarsal", "r_ball",
    "r_lowleg_twist1_proc", "r_lowleg_twist2_proc", "r_lowleg_twist3_proc", "r_lowleg_twist4_proc",
    "r_upleg_twist0_proc", "r_upleg_twist1_proc", "r_upleg_twist2_proc", "r_upleg_twist3_proc",
    "r_upleg_twist4_proc",
    "c_spine0", "c_spine1", "c_spine2", "c_spine3",
    "r_clavicle", "r_uparm", "r_lowarm", "r_wrist_twist", "r_wrist",
    "r_pinky0", "r_pinky1", "r_pinky2", "r_pinky3", "r_pinky_null",
    "r_ring1", "r_ring2", "r_ring3", "r_ring_null",
    "r_middle1", "r_middle2", "r_middle3", "r_middle_null",
    "r_index1", "r_index2", "r_index3", "r_index_null",
    "r_thumb0", "r_thumb1", "r_thumb2", "r_thumb3", "r_thumb_null",
    "r_lowarm_twist1_proc", "r_lowarm_twist2_proc", "r_lowarm_twist3_proc", "r_lowarm_twist4_proc",
    "r_uparm_twist0_proc", "r_uparm_twist1_proc", "r_uparm_twist2_proc", "r_uparm_twist3_proc",
    "r_uparm_twist4_proc",
    "l_clavicle", "l_uparm", "l_lowarm", "l_wrist_twist", "l_wrist",
    "l_pinky0", "l_pinky1", "l_pinky2", "l_pinky3", "l_pinky_null",
    "l_ring1", "l_ring2", "l_ring3", "l_ring_null",
    "l_middle1", "l_middle2", "l_middle3", "l_middle_null",
    "l_index1", "l_index2", "l_index3", "l_index_null",
    "l_thumb0", "l_thumb1", "l_thumb2", "l_thumb3", "l_thumb_null",
    "l_lowarm_twist1_proc", "l_lowarm_twist2_proc", "l_lowarm_twist3_proc", "l_lowarm_twist4_proc",
    "l_uparm_twist0_proc", "l_uparm_twist1_proc", "l_uparm_twist2_proc", "l_uparm_twist3_proc",
    "l_uparm_twist4_proc",
    "c_neck", "c_neck_twist1_proc", "c_neck_twist0_proc", "c_head", "c_jaw", "c_teeth",
    "c_jaw_null", "c_tongue0", "c_tongue1", "c_tongue2", "c_tongue3", "c_tongue4",
    "r_eye", "r_eye_null", "l_eye", "l_eye_null", "c_head_null",
)
MHR_JOINT_PARENTS: tuple[int, ...] = (
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 3, 3, 2, 2, 2, 2, 2,
    1, 18, 19, 20, 21, 22, 23, 19, 19, 19, 19, 18, 18, 18, 18, 18,
    1, 34, 35, 36,
    37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 42, 48, 49, 50, 42, 52, 53, 54, 42, 56, 57, 58,
    42, 60, 61, 62, 63, 40, 40, 40, 40, 39, 39, 39, 39, 39,
    37, 74, 75, 76, 77, 78, 79, 80, 81, 82, 78, 84, 85, 86, 78, 88, 89, 90, 78, 92, 93, 94,
    78, 96, 97, 98, 99, 76, 76, 76, 76, 75, 75, 75, 75, 75,
    37, 110, 110, 110, 113, 114, 114, 114, 117, 118, 119, 120, 113, 122, 113, 124, 113,
)

PRESETS: tuple[str, ...] = ("mhr", "unreal", "mixamo")
DEFAULT_PRESET = "mhr"
MIXAMO_PREFIX = "mixamorig:"
BONE_COLLECTIONS: tuple[str, ...] = ("Body", "Hands", "Face", "Helpers")
MAX_BONE_NAME_BYTES = 63  # Blender's bone-name limit (MAX_NAME - 1)

_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_FACE = ("jaw", "teeth", "tongue", "eye")
_TWIST = re.compile(r"(upleg|lowleg|uparm|lowarm)_twist(\d)_proc")
_FINGER = re.compile(r"(thumb|index|middle|ring|pinky)(\d|_null)")
# MHR numbers the upper-limb/thigh twist helpers from 0 and the forearm/shin ones from 1;
# target names count from 01 along the bone either way.
_TWIST_FIRST = {"upleg": 0, "uparm": 0, "lowleg": 1, "lowarm": 1}

_UNREAL_CENTER = {
    "body_world": "root", "root": "pelvis",
    "c_spine0": "spine_01", "c_spine1": "spine_02", "c_spine2": "spine_03", "c_spine3": "spine_04",
    "c_neck": "neck_01",
    "c_neck_twist0_proc": "neck_twist_01", "c_neck_twist1_proc": "neck_twist_02",
    "c_head": "head", "c_head_null": "head_end",
    "c_jaw": "jaw", "c_jaw_null": "jaw_end", "c_teeth": "teeth",
    **{f"c_tongue{i}": f"tongue_{i + 1:02d}" for i in range(5)},
}
_UNREAL_SIDE = {
    "upleg": "thigh", "lowleg": "calf", "foot": "ankle_twist", "talocrural": "foot",
    "subtalar": "subtalar", "transversetarsal": "transversetarsal", "ball": "ball",
    "clavicle": "clavicle", "uparm": "upperarm", "lowarm": "lowerarm",
    "wrist_twist": "wrist_twist", "wrist": "hand", "eye": "eye", "eye_null": "eye_end",
}
_UNREAL_LIMB = {"upleg": "thigh", "lowleg": "calf", "uparm": "upperarm", "lowarm": "lowerarm"}

_MIXAMO_CENTER = {
    "root": "Hips", "c_spine1": "Spine", "c_spine2": "Spine1", "c_spine3": "Spine2",
    "c_neck": "Neck", "c_head": "Head", "c_head_null": "HeadTop_End",
}
_MIXAMO_SIDE = {
    "upleg": "UpLeg", "lowleg": "Leg", "talocrural": "Foot", "ball": "ToeBase",
    "clavicle": "Shoulder", "uparm": "Arm", "lowarm": "ForeArm", "wrist": "Hand", "eye": "Eye",
}

# How each preset marks a side: (kind, left marker, right marker).
_SIDE_MARKERS = {
    "mhr": ("prefix", "l_", "r_"),
    "unreal": ("suffix", "_l", "_r"),
    "mixamo": ("prefix", MIXAMO_PREFIX + "Left", MIXAMO_PREFIX + "Right"),
}
_MHR_INDEX = {name: i for i, name in enumerate(MHR_JOINT_NAMES)}


def check_preset(preset: str) -> str:
    """Return ``preset`` if it is known, else raise a ValueError naming the choices."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown bone-naming preset {preset!r}; choose one of {list(PRESETS)}")
    return preset


def _check_mhr_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"joint name must be a str, got {type(name).__name__}")
    if name not in _MHR_INDEX:
        raise ValueError(f"{name!r} is not one of the 127 MHR joint names")
    return name


def _split_side(name: str) -> tuple[str, str]:
    """``'l_uparm'`` -> ``('l', 'uparm')``, ``'c_neck'`` -> ``('c', 'neck')``,
    ``'root'`` -> ``('', 'root')``."""
    if name[:2] in ("l_", "r_", "c_"):
        return name[0], name[2:]
    return "", name


def _unreal_name(name: str) -> str:
    side, stem = _split_side(name)
    if side in ("", "c"):
        return _UNREAL_CENTER[name]
    if stem in _UNREAL_SIDE:
        base = _UNREAL_SIDE[stem]
    elif m := _TWIST.fullmatch(stem):
        limb, i = m.group(1), int(m.group(2))
        base = f"{_UNREAL_LIMB[limb]}_twist_{i - _TWIST_FIRST[limb] + 1:02d}"
    elif m := _FINGER.fullmatch(stem):
        finger, part = m.groups()
        # Index 0 is a metacarpal (pinky, thumb): UE5's mannequin calls those *_metacarpal_*.
        special = {"_null": f"{finger}_end", "0": f"{finger}_metacarpal"}
        base = special.get(part, f"{finger}_{part:0>2}")
    else:
        raise ValueError(f"no Unreal name rule for MHR joint {name!r}")
    return f"{base}_{side}"


def _mixamo_name(name: str) -> str | None:
    side, stem = _split_side(name)
    if side in ("", "c"):
        base = _MIXAMO_CENTER.get(name)
        return None if base is None else MIXAMO_PREFIX + base
    base = _MIXAMO_SIDE.get(stem)
    if base is None and (m := _FINGER.fullmatch(stem)):
        finger, part = m.groups()
        # Mixamo fingers are 1..3 plus a "4" tip; MHR's extra "0" metacarpal merges into the hand.
        number = {"_null": "4", "0": None}.get(part, part)
        base = None if number is None else f"Hand{finger.title()}{number}"
    if base is None:
        return None
    return f"{MIXAMO_PREFIX}{'Left' if side == 'l' else 'Right'}{base}"


def preset_bone_name(joint_name: str, preset: str = DEFAULT_PRESET) -> str | None:
    """The bone name of MHR joint ``joint_name`` in ``preset``, or None when the joint merges."""
    _check_mhr_name(joint_name)
    check_preset(preset)
    if preset == "mhr":
        return joint_name
    if preset == "unreal":
        return _unreal_name(joint_name)
    return _mixamo_name(joint_name)


def bone_names(joint_names: Sequence[str], preset: str = DEFAULT_PRESET) -> list[str | None]:
    """Per joint, its bone name in ``preset`` (None = merged into its nearest kept ancestor)."""
    return [preset_bone_name(n, preset) for n in _check_joint_names(joint_names)]


def mirror_name(name: str, preset: str = DEFAULT_PRESET) -> str:
    """Swap the left/right marker of a name in ``preset``'s convention (centre names unchanged)."""
    kind, left, right = _SIDE_MARKERS[check_preset(preset)]
    for a, b in ((left, right), (right, left)):
        if kind == "prefix" and name.startswith(a):
            return b + name[len(a):]
        if kind == "suffix" and name.endswith(a):
            return name[: -len(a)] + b
    return name


def bone_collection(joint_name: str) -> str:
    """Bone collection of an MHR joint: ``Body``, ``Hands`` (fingers), ``Face`` or ``Helpers``.

    Helpers are the procedural twist joints (``*_proc``) and the end sites (``*_null``).
    ``*_wrist_twist`` stays in Body: it is the one joint the ``lowarm_twist`` parameter rotates
    fully, i.e. an animation control rather than a follower.
    """
    _check_mhr_name(joint_name)
    if joint_name.endswith(("_proc", "_null")):
        return "Helpers"
    stem = _split_side(joint_name)[1]
    if stem.startswith(_FINGERS):
        return "Hands"
    if stem.startswith(_FACE):
        return "Face"
    return "Body"


# ---------------------------------------------------------------------------------------------
# Skeleton merging


def _check_joint_names(joint_names: Sequence[str]) -> list[str]:
    if isinstance(joint_names, str):
        raise ValueError("joint_names must be a sequence of names, not one str")
    names = [str(n) if isinstance(n, np.str_) else n for n in joint_names]
    for n in names:
        _check_mhr_name(n)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate joint names: {dup}")
    missing = [n for n in MHR_JOINT_NAMES if n not in set(names)]
    if missing:
        raise ValueError(f"joint_names lacks {len(missing)} MHR joints, e.g. {missing[:5]}")
    return names


def _check_parents(parents: Sequence[int] | np.ndarray, n_joints: int | None = None) -> np.ndarray:
    p = np.asarray(parents)
    if p.ndim != 1 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"parents must be a 1-D integer array, got shape {p.shape} {p.dtype}")
    p = p.astype(np.int64)
    if n_joints is not None and p.shape[0] != n_joints:
        raise ValueError(f"{n_joints} joints but {p.shape[0]} parents")
    bad = np.flatnonzero((p < -1) | (p >= np.arange(p.shape[0])))
    if bad.size:
        raise ValueError(f"parents must be -1 or an earlier joint (parents precede children); "
                         f"joint {int(bad[0])} has parent {int(p[bad[0]])}")
    return p


def _check_keep(keep: Sequence[bool] | np.ndarray, n_joints: int) -> np.ndarray:
    k = np.asarray(keep)
    if k.dtype != np.bool_ or k.shape != (n_joints,):
        raise ValueError(f"keep must be a ({n_joints},) bool mask, got shape {k.shape} {k.dtype}")
    if not k.any():
        raise ValueError("keep must keep at least one joint")
    return k


def _kept_ancestor(parents: np.ndarray, keep: np.ndarray, joint: int) -> int:
    p = int(parents[joint])
    while p >= 0 and not keep[p]:
        p = int(parents[p])
    return p


def merged_parents(parents: Sequence[int] | np.ndarray,
                   keep: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Parents of the merged skeleton: for each kept joint (in joint order), the index *among the
    kept joints* of its nearest kept ancestor, -1 for a root. Returns (B,) int32."""
    p = _check_parents(parents)
    k = _check_keep(keep, p.shape[0])
    compact = np.cumsum(k) - 1
    out = [-1 if (a := _kept_ancestor(p, k, int(j))) < 0 else int(compact[a])
           for j in np.flatnonzero(k)]
    return np.asarray(out, dtype=np.int32)


def merge_targets(parents: Sequence[int] | np.ndarray,
                  keep: Sequence[bool] | np.ndarray) -> np.ndarray:
    """For every joint, the kept joint that receives its skin weights: itself when kept, else its
    nearest kept ancestor. A joint above every kept joint (``body_world`` when ``root`` is kept)
    goes to the single kept root below it. Returns (J,) int64 joint indices."""
    p = _check_parents(parents)
    k = _check_keep(keep, p.shape[0])
    out = np.arange(p.shape[0], dtype=np.int64)
    kept_roots = [int(j) for j in np.flatnonzero(k) if _kept_ancestor(p, k, int(j)) < 0]
    for j in np.flatnonzero(~k):
        a = _kept_ancestor(p, k, int(j))
        if a < 0:
            below = [r for r in kept_roots if _is_ancestor(p, int(j), r)]
            if len(below) != 1:
                raise ValueError(f"joint {int(j)} has no kept ancestor and {len(below)} kept roots "
                                 "below it; its weights have no unambiguous target")
            a = below[0]
        out[j] = a
    return out


def _is_ancestor(parents: np.ndarray, a: int, j: int) -> bool:
    while j >= 0:
        if j == a:
            return True
        j = int(parents[j])
    return False


def merge_skin_weights(skin_indices: np.ndarray, skin_weights: np.ndarray,
                       merge_map: Sequence[int] | np.ndarray,
                       max_influences: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-target a (V, K) skin table through ``merge_map`` (old index -> new index).

    Influences that land on the same target are summed, then each row is sorted by weight
    (descending; ties by index), cut to ``max_influences`` slots (default K) and renormalised
    to sum 1. Merging never increases a row's distinct influences, so with the default K the
    result is exact. Padding slots get index 0 and weight 0, like RigData.
    Returns (indices, weights) with the input dtypes.
    """
    idx = np.asarray(skin_indices)
    w_in = np.asarray(skin_weights)
    mm = np.asarray(merge_map)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"skin_indices must be a (V, K) integer array, got "
                         f"{idx.shape} {idx.dtype}")
    if w_in.shape != idx.shape or not np.issubdtype(w_in.dtype, np.floating):
        raise ValueError(f"skin_weights must be a float array of shape {idx.shape}, got "
                         f"{w_in.shape} {w_in.dtype}")
    if mm.ndim != 1 or mm.size == 0 or not np.issubdtype(mm.dtype, np.integer) or mm.min() < 0:
        raise ValueError(f"merge_map must be a non-empty 1-D array of non-negative ints, got "
                         f"{mm.shape} {mm.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= mm.shape[0]):
        raise ValueError(f"skin_indices must lie in [0, {mm.shape[0]}), got "
                         f"[{idx.min()}, {idx.max()}]")
    w = w_in.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("skin_weights must be finite and non-negative")
    k_out = idx.shape[1] if max_influences is None else int(max_influences)
    if k_out < 1:
        raise ValueError(f"max_influences must be >= 1, got {max_influences}")

    n_rows, k = idx.shape
    empty = int(mm.max()) + 1  # sorts after every real target, so empty slots group last
    target = np.where(w > 0, mm[idx].astype(np.int64), empty)
    order = np.argsort(target, axis=1, kind="stable")
    t_sorted = np.take_along_axis(target, order, axis=1)
    w_sorted = np.take_along_axis(w, order, axis=1)
    starts = np.ones((n_rows, k), dtype=bool)
    starts[:, 1:] = t_sorted[:, 1:] != t_sorted[:, :-1]
    group = np.cumsum(starts, axis=1) - 1
    rows = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, k))
    summed = np.zeros((n_rows, k))
    np.add.at(summed, (rows, group), w_sorted)
    g_target = np.full((n_rows, k), empty, dtype=np.int64)
    g_target[rows[starts], group[starts]] = t_sorted[starts]

    rank = np.lexsort((g_target, -summed), axis=1)[:, :k_out]
    out_w = np.take_along_axis(summed, rank, axis=1)
    out_i = np.take_along_axis(g_target, rank, axis=1)
    if k_out > k:  # asked for more slots than there are: pad
        out_w = np.pad(out_w, ((0, 0), (0, k_out - k)))
        out_i = np.pad(out_i, ((0, 0), (0, k_out - k)), constant_values=empty)
    pad = (out_i == empty) | (out_w <= 0)
    out_i[pad] = 0
    out_w[pad] = 0.0
    total = out_w.sum(axis=1, keepdims=True)
    out_w = np.divide(out_w, total, out=np.zeros_like(out_w), where=total > 0)
    return out_i.astype(idx.dtype), out_w.astype(w_in.dtype)


# ---------------------------------------------------------------------------------------------
# Deform flags


def joint_weight_totals(skin_indices: np.ndarray, skin_weights: np.ndarray,
                        n_joints: int) -> np.ndarray:
    """Sum of skin weight per joint over all vertices, (n_joints,) float64."""
    idx = np.asarray(skin_indices)
    w = np.asarray(skin_weights, dtype=np.float64)
    if idx.shape != w.shape or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"skin tables must be an integer and a float array of one shape, got "
                         f"{idx.shape} {idx.dtype} and {w.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_joints):
        raise ValueError(f"skin_indices must lie in [0, {n_joints}), got "
                         f"[{idx.min()}, {idx.max()}]")
    return np.bincount(idx.ravel(), weights=w.ravel(), minlength=n_joints)


def is_deforming(joint_index: int, skin_indices: np.ndarray, skin_weights: np.ndarray) -> bool:
    """Whether any vertex carries weight on ``joint_index`` (indices in the skin table's space)."""
    j = int(joint_index)
    if j < 0:
        raise ValueError(f"joint_index must be >= 0, got {joint_index}")
    idx = np.asarray(skin_indices)
    n = max(j, int(idx.max(initial=0))) + 1
    return bool(joint_weight_totals(idx, skin_weights, n)[j] > 0)


def deform_flags(joint_names: Sequence[str], skin_indices: np.ndarray,
                 skin_weights: np.ndarray) -> np.ndarray:
    """Per bone, Blender's ``use_deform``: False only for Helpers that carry no weight.

    ``joint_names`` are the MHR names of the bones, in skin-index order (for a merged plan:
    ``[joint_names[s] for s in plan.source]`` with the merged skin table). Zero-weight body
    joints stay deforming: FBX "only deform bones" would otherwise cut them out of the chain.
    """
    names = list(joint_names)
    totals = joint_weight_totals(skin_indices, skin_weights, len(names))
    return np.array([not (bone_collection(n) == "Helpers" and totals[i] <= 0)
                     for i, n in enumerate(names)], dtype=bool)


# ---------------------------------------------------------------------------------------------
# The plan the builder follows


@dataclass(frozen=True)
class BonePlan:
    """Which MHR joints become bones in a preset, and where merged joints' weights go.

    ``source[b]`` is the MHR joint index of bone b (ascending, so parents precede children),
    ``names[b]`` its bone name, ``parents[b]`` its parent bone (-1 root), ``collections[b]``
    its bone collection. ``merge_target[j]`` is the kept MHR joint receiving joint j's weights
    and ``bone_of_joint[j]`` that joint's bone: pass it as ``merge_map`` to
    :func:`merge_skin_weights` to get a skin table indexed by bone.
    """
    preset: str
    source: np.ndarray
    names: tuple[str, ...]
    parents: np.ndarray
    collections: tuple[str, ...]
    merge_target: np.ndarray
    bone_of_joint: np.ndarray

    @property
    def merges(self) -> bool:
        return len(self.names) < self.merge_target.shape[0]


def bone_plan(joint_names: Sequence[str], joint_parents: Sequence[int] | np.ndarray,
              preset: str = DEFAULT_PRESET) -> BonePlan:
    """Build and validate the :class:`BonePlan` of ``preset`` for a skeleton (RigData's
    ``joint_names`` and ``joint_parents``). Raises ValueError on any inconsistency."""
    check_preset(preset)
    names = _check_joint_names(joint_names)
    parents = _check_parents(joint_parents, len(names))
    mapped = [preset_bone_name(n, preset) for n in names]
    keep = np.array([m is not None for m in mapped], dtype=bool)
    targets = merge_targets(parents, keep)
    source = np.flatnonzero(keep).astype(np.int64)
    bone_index = np.full(len(names), -1, dtype=np.int64)
    bone_index[source] = np.arange(source.shape[0])
    plan = BonePlan(
        preset=preset, source=source,
        names=tuple(mapped[j] for j in source),
        parents=merged_parents(parents, keep).astype(np.int64),
        collections=tuple(bone_collection(names[j]) for j in source),
        merge_target=targets, bone_of_joint=bone_index[targets])
    problems = plan_problems(plan, names, parents)
    if problems:
        raise ValueError(f"bone-naming preset {preset!r} is inconsistent: " + "; ".join(problems))
    return plan


def plan_problems(plan: BonePlan, joint_names: Sequence[str],
                  joint_parents: Sequence[int] | np.ndarray) -> list[str]:
    """Every broken rule of a plan, as messages (empty = valid): unique valid bone names, every
    joint mapped, parents precede children, one root, left/right symmetry."""
    names = list(joint_names)
    parents = np.asarray(joint_parents, dtype=np.int64)
    n = len(names)
    problems = []
    seen: dict[str, int] = {}
    for b, name in enumerate(plan.names):
        if not name or len(name.encode()) > MAX_BONE_NAME_BYTES:
            problems.append(f"bone {b} name {name!r} is empty or over {MAX_BONE_NAME_BYTES} bytes")
        if name in seen:
            problems.append(f"bone name {name!r} used by joints {names[plan.source[seen[name]]]!r} "
                            f"and {names[plan.source[b]]!r}")
        seen.setdefault(name, b)
    nb = len(plan.names)
    if plan.source.shape != (nb,) or plan.parents.shape != (nb,) or len(plan.collections) != nb:
        return problems + [f"plan arrays disagree on the bone count {nb}"]
    if plan.merge_target.shape != (n,) or plan.bone_of_joint.shape != (n,):
        return problems + [f"plan maps {plan.merge_target.shape[0]} joints, skeleton has {n}"]
    if np.any((plan.bone_of_joint < 0) | (plan.bone_of_joint >= nb)):
        problems.append("some joints map to no bone")
    elif np.any(plan.source[plan.bone_of_joint] != plan.merge_target):
        problems.append("bone_of_joint and merge_target disagree")
    if np.any(plan.merge_target[plan.source] != plan.source):
        problems.append("a kept joint merges into another joint")
    for j in range(n):
        t = int(plan.merge_target[j])
        if t != j and not (_is_ancestor(parents, t, j) or _is_ancestor(parents, j, t)):
            problems.append(f"{names[j]!r} merges into {names[t]!r}, which is not in its chain")
    if np.any(plan.parents >= np.arange(nb)) or np.any(plan.parents < -1):
        problems.append("a bone's parent does not precede it")
    if int(np.sum(plan.parents < 0)) != 1:
        problems.append(f"{int(np.sum(plan.parents < 0))} root bones (need exactly 1)")
    problems += _symmetry_problems(plan, names)
    return problems


def _symmetry_problems(plan: BonePlan, names: list[str]) -> list[str]:
    problems = []
    index = {n: i for i, n in enumerate(names)}
    bone_name = dict(zip((names[s] for s in plan.source), plan.names))
    left_marker = _SIDE_MARKERS[plan.preset][1]
    for name in names:
        side, stem = _split_side(name)
        new = bone_name.get(name)
        if side in ("", "c"):
            if new is not None and mirror_name(new, plan.preset) != new:
                problems.append(f"centre joint {name!r} got a sided name {new!r}")
            continue
        if side == "r":
            continue
        twin = "r_" + stem
        if twin not in index:
            problems.append(f"{name!r} has no right-side counterpart")
            continue
        twin_new = bone_name.get(twin)
        if (new is None) != (twin_new is None):
            problems.append(f"{name!r} and {twin!r} are not both kept or both merged")
        elif new is not None:
            if left_marker not in new or mirror_name(new, plan.preset) != twin_new:
                problems.append(f"{name!r} -> {new!r} and {twin!r} -> {twin_new!r} "
                                "are not mirrored")
        target = names[plan.merge_target[index[name]]]
        twin_target = names[plan.merge_target[index[twin]]]
        if mirror_name(target, "mhr") != twin_target:
            problems.append(f"{name!r} merges into {target!r} but {twin!r} into {twin_target!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Documentation table

TABLE_BEGIN = "<!-- BEGIN GENERATED: python -m addon.rig.naming -->"
TABLE_END = "<!-- END GENERATED -->"


def markdown_table() -> str:
    """The MHR -> Unreal -> Mixamo table of docs/NAMING.md (between the BEGIN/END markers)."""
    plans = {p: bone_plan(MHR_JOINT_NAMES, MHR_JOINT_PARENTS, p) for p in PRESETS}
    counts = ", ".join(f"`{p}` {len(plans[p].names)}" for p in PRESETS)
    lines = [TABLE_BEGIN, "", f"Bones per preset: {counts}.", "",
             "| # | MHR joint | parent | Unreal | Mixamo | collection |",
             "|---:|---|---|---|---|---|"]
    mixamo = plans["mixamo"]
    kept_mixamo = dict(zip(mixamo.source.tolist(), mixamo.names))
    for j, name in enumerate(MHR_JOINT_NAMES):
        parent = MHR_JOINT_PARENTS[j]
        parent_name = f"`{MHR_JOINT_NAMES[parent]}`" if parent >= 0 else "-"
        if j in kept_mixamo:
            mix = f"`{kept_mixamo[j]}`"
        else:
            mix = f"merged into `{kept_mixamo[int(mixamo.merge_target[j])]}`"
        lines.append(f"| {j} | `{name}` | {parent_name} | `{preset_bone_name(name, 'unreal')}` "
                     f"| {mix} | {bone_collection(name)} |")
    lines += ["", TABLE_END]
    return "\n".join(lines) + "\n"


def generated_section(text: str) -> str:
    """The generated block of a NAMING.md text (markers included); ValueError if absent."""
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError("NAMING.md has no generated table markers")
    return text[start:end + len(TABLE_END)] + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
