"""Pose transfer from one humanoid armature onto another (numpy only, no bpy).

Both rigs are described by their rest bones (armature space, Blender's ``bone.matrix_local``)
and the armature object's world matrix; a bone map (addon/rig/bone_maps.py) pairs them by slot.
The method, per target bone of a mapped slot:

1. *Body alignment.* ``Q`` turns the source's rest facing frame (up: the world axis along hips ->
   shoulders; lateral: right thigh -> left thigh, horizontal) into the target's, so the rigs may
   face any way and either armature may be Y- or Z-up.
2. *Segments, not bone axes.* A slot's bones are read as a polyline: the anchor's head for a
   spine or thumb (hips, hand: bone_maps.CHAIN_ANCHOR, since rigs start those chains at
   different joints), their heads, then the head of the slot they aim at (bone_maps.SLOT_AIM)
   or, without one, the last bone's tail. A target
   bone covers a fraction range of its polyline (by rest length); the source polyline at the same
   fractions gives the *source chord* in rest and in pose. Chains of different bone counts
   (three spine bones for four, two neck bones for one) therefore spread the bend along the chain.
3. *Rest-aware rotation.* With ``δ`` the world-space rotation of the source bone covering the
   chord's middle (pose · rest⁻¹), the target bone's world rotation is
   ``S2 · (Q δ Qᵀ) · Swing(d_target_rest -> Q c_rest) · R_target_rest``: the swing first lines the
   target's rest up with the source's rest (A-pose vs T-pose), ``δ`` carries the twist, and ``S2``
   makes the posed direction equal the posed chord exactly. The hips take ``Q δ Qᵀ · R_rest``
   alone: a pelvis bone's axis is not comparable between rigs.
4. *Root motion*: the hips head moves by the source's hips displacement from its reference rest,
   turned by ``Q`` and scaled by the leg-length ratio; every other head follows the target's own
   bone offsets (its proportions are kept).
5. *Optional IK*: an analytic two-bone solve per arm and leg puts hands and feet on the source's
   effector positions (same affine map as the root), keeping the bend plane and the hand / foot
   world rotation.

The result is each target bone's local basis (Blender's ``matrix_basis``) under Blender's default
inheritance; unmapped bones keep the basis they have. A quality report gives, per mapped bone,
the angle between its posed direction and the source's direction over the same stretch of the
body (the source chord; the bone itself where counts match), and the effector distances.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from . import bone_maps
from .skeleton import rotation_between

EPS = 1e-9
# Bones shorter than this fraction of the body height count as degenerate for directions.
MIN_SEGMENT_FRACTION = 1e-4
IK_REACH = 0.9999  # a fully straight limb has no defined bend plane: stop just short of it


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > EPS else v * 0.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _unit(a), _unit(b)
    if not a.any() or not b.any():
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _similarity(world: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """(rotation, uniform scale) of an object matrix; non-uniform scale cannot carry a pose."""
    w = np.asarray(world, dtype=np.float64)
    if w.shape != (4, 4) or not np.all(np.isfinite(w)):
        raise ValueError(f"{what}: the object matrix must be a finite 4x4 matrix")
    scales = np.linalg.norm(w[:3, :3], axis=0)
    if scales.min() <= EPS or (scales.max() - scales.min()) > 1e-4 * scales.max():
        raise ValueError(f"{what}: the armature object has non-uniform scale {scales.round(4).tolist()}; "
                         "apply its scale (Ctrl+A > Scale) first")
    return _nearest_rotation(w[:3, :3] / scales.mean()), float(scales.mean())


@dataclass(frozen=True)
class Skeleton:
    """An armature's rest: bone names, parents (-1 for roots), rest matrices and lengths in
    armature space, and the object's world matrix (rotation, translation, uniform scale)."""

    names: tuple[str, ...]
    parents: np.ndarray
    rest: np.ndarray
    lengths: np.ndarray
    world: np.ndarray = field(default_factory=lambda: np.eye(4))
    inherit_rotation: np.ndarray | None = None
    inherits: np.ndarray = field(init=False, repr=False, compare=False)  # inherit_rotation, filled
    order: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(set(self.names)) != n:
            raise ValueError("bone names must be unique")
        parents = np.asarray(self.parents, dtype=np.int64)
        rest = np.asarray(self.rest, dtype=np.float64)
        lengths = np.asarray(self.lengths, dtype=np.float64)
        if parents.shape != (n,) or rest.shape != (n, 4, 4) or lengths.shape != (n,):
            raise ValueError(f"skeleton of {n} bones needs parents ({n},), rest ({n}, 4, 4) and "
                             f"lengths ({n},); got {parents.shape}, {rest.shape}, {lengths.shape}")
        if np.any((parents < -1) | (parents >= n)) or np.any(parents == np.arange(n)):
            raise ValueError("bone parents must be -1 or the index of another bone")
        if not (np.all(np.isfinite(rest)) and np.all(np.isfinite(lengths))):
            raise ValueError("rest matrices and lengths must be finite")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "rest", rest)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "world", np.asarray(self.world, dtype=np.float64))
        inherit = (np.ones(n, bool) if self.inherit_rotation is None
                   else np.asarray(self.inherit_rotation, dtype=bool))
        object.__setattr__(self, "inherits", inherit)
        _similarity(self.world, "skeleton")
        object.__setattr__(self, "order", _topological(parents))

    def index(self, name: str) -> int:
        return self.names.index(name)


def _topological(parents: np.ndarray) -> np.ndarray:
    order: list[int] = []
    state = np.zeros(len(parents), np.int8)  # 0 new, 1 on the path, 2 done
    for start in range(len(parents)):
        path = []
        j = start
        while j >= 0 and state[j] == 0:
            state[j] = 1
            path.append(j)
            j = int(parents[j])
        if j >= 0 and state[j] == 1:
            raise ValueError("bone parents form a cycle")
        for k in reversed(path):
            state[k] = 2
            order.append(k)
    return np.asarray(order, dtype=np.int64)


def forward_kinematics(skel: Skeleton, basis: np.ndarray) -> np.ndarray:
    """Armature-space pose matrices (Blender's ``pose_bone.matrix``) from local bases."""
    rest = skel.rest
    out = np.empty_like(rest)
    for b in skel.order:
        p = int(skel.parents[b])
        if p < 0:
            out[b] = rest[b] @ basis[b]
            continue
        local = np.linalg.inv(rest[p]) @ rest[b]
        m = out[p] @ local @ basis[b]
        if not skel.inherits[b]:
            m[:3, :3] = rest[b][:3, :3] @ basis[b][:3, :3]
        out[b] = m
    return out


def basis_for(skel: Skeleton, posed: np.ndarray, b: int, desired: np.ndarray) -> np.ndarray:
    """The local basis that puts bone ``b`` at armature-space ``desired`` under its posed parent."""
    p = int(skel.parents[b])
    frame = skel.rest[b] if p < 0 else posed[p] @ np.linalg.inv(skel.rest[p]) @ skel.rest[b]
    basis = np.linalg.inv(frame) @ desired
    if p >= 0 and not skel.inherits[b]:
        basis[:3, :3] = skel.rest[b][:3, :3].T @ desired[:3, :3]
    basis[:3, :3] = _nearest_rotation(basis[:3, :3])
    basis[3] = (0.0, 0.0, 0.0, 1.0)
    return basis


@dataclass(frozen=True)
class _Segment:
    bone: int            # target bone index
    slot: str
    src_bone: int        # source bone covering the middle of the segment
    src_a: tuple[int, float]  # (polyline vertex, t) of the segment's start on the source
    src_b: tuple[int, float]
    t_end: tuple[str, int]    # how the target segment ends: ("head", bone) or ("tail", bone)


@dataclass(frozen=True)
class _Polyline:
    bones: tuple[int, ...]
    end: tuple[str, int]     # ("head", aim bone) or ("tail", last bone)
    anchor: int | None = None  # a bone whose head starts the polyline before the chain's own

    @property
    def offset(self) -> int:
        return 0 if self.anchor is None else 1


@dataclass
class RetargetPose:
    """One retargeted pose: target local bases and posed matrices (armature space), and the
    quality numbers (degrees; effector distances in world units)."""

    basis: np.ndarray
    posed: np.ndarray
    mapped: tuple[int, ...]
    angles_deg: dict[str, float]
    effector_error: dict[str, float]

    @property
    def max_angle_deg(self) -> float:
        vals = [v for v in self.angles_deg.values() if np.isfinite(v)]
        return max(vals) if vals else float("nan")

    def summary(self, worst: int = 3) -> list[str]:
        """A few readable lines for the panel and the CLI."""
        lines = []
        if self.angles_deg:
            ranked = sorted(self.angles_deg.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))
            lines.append(f"{len(self.mapped)} bones posed, worst direction error "
                         f"{self.max_angle_deg:.1f}°")
            lines += [f"  {name}: {ang:.1f}°" for name, ang in ranked[:worst]]
        for name, err in sorted(self.effector_error.items()):
            lines.append(f"  {name} off by {err * 100:.1f} cm")
        return lines


class Retargeter:
    """Precomputed transfer between two rigs (alignment, segments, ratios); call :meth:`pose`
    once per source pose (a photo, or each frame of a clip)."""

    def __init__(self, source: Skeleton, source_map: Mapping[str, Sequence[str]],
                 target: Skeleton, target_map: Mapping[str, Sequence[str]],
                 root_motion: bool = True) -> None:
        self.source, self.target = source, target
        self.root_motion = bool(root_motion)
        smap = self._indices(source, bone_maps.validate_map(dict(source_map), "source map"), "source")
        tmap = self._indices(target, bone_maps.validate_map(dict(target_map), "target map"), "target")
        self.slots = [s for s in bone_maps.SLOTS if s in smap and s in tmap]
        if not self.slots:
            raise ValueError("the source and target maps share no slot: nothing to retarget")
        if "hips" not in self.slots:
            raise ValueError("both maps need the 'hips' slot (the root of the pose)")
        self.smap, self.tmap = smap, tmap
        self.src_rot, self.src_scale = _similarity(source.world, "source")
        self.tgt_rot, self.tgt_scale = _similarity(target.world, "target")
        self.src_rest_w = self._world_rest(source, source.world)
        self.tgt_rest_w = self._world_rest(target, target.world)
        self.q = self._alignment()
        self.ratio = self._leg_ratio()
        self._s_polys: dict[str, _Polyline] = {}
        self._last_wanted: dict[int, np.ndarray] = {}
        self.last_source_world = np.empty((0, 4, 4))
        self._t_polys: dict[str, _Polyline] = {}
        self.segments = [seg for slot in self.slots for seg in self._segments(slot)]
        hips_t = tmap["hips"][0]
        self.hips_target = hips_t
        self.hips_source = smap["hips"][0]
        self.hips_rest_t = self.tgt_rest_w[hips_t][:3, 3].copy()
        self.hips_rest_s = self.src_rest_w[self.hips_source][:3, 3].copy()

    # -- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def _indices(skel: Skeleton, mapping: dict[str, list[str]], what: str) -> dict[str, list[int]]:
        out = {}
        missing = [b for bones in mapping.values() for b in bones if b not in skel.names]
        if missing:
            raise ValueError(f"{what} map names bones the {what} armature lacks: {missing[:6]}")
        for slot, bones in mapping.items():
            out[slot] = [skel.index(b) for b in bones]
        return out

    @staticmethod
    def _world_rest(skel: Skeleton, world: np.ndarray) -> np.ndarray:
        rot, scale = _similarity(world, "armature")
        out = np.empty_like(skel.rest)
        out[:, :3, :3] = rot @ skel.rest[:, :3, :3]
        out[:, :3, 3] = skel.rest[:, :3, 3] @ (rot * scale).T + world[:3, 3]
        out[:, 3] = (0, 0, 0, 1)
        return out

    def _head(self, rest_w: np.ndarray, mapping: dict[str, list[int]], slot: str) -> np.ndarray | None:
        return rest_w[mapping[slot][0]][:3, 3] if slot in mapping else None

    def _body_frame(self, rest_w: np.ndarray, mapping: dict[str, list[int]]) -> np.ndarray | None:
        """Facing frame of a rest pose: up is the world axis nearest to hips -> shoulders (rigs
        stand along one; a measured up would tilt the whole target by the difference of the two
        rigs' spine lean), lateral is right -> left thigh (or upper arm) made horizontal."""
        hips = self._head(rest_w, mapping, "hips")
        up_pts = [p for p in (self._head(rest_w, mapping, s) for s in ("upper_arm.L", "upper_arm.R"))
                  if p is not None]
        up_pts = up_pts or [p for p in (self._head(rest_w, mapping, s) for s in ("neck", "head"))
                            if p is not None]
        if hips is None or not up_pts:
            return None
        up = np.mean(up_pts, axis=0) - hips
        if not _unit(up).any():
            return None
        axis = int(np.argmax(np.abs(up)))
        z = np.zeros(3)
        z[axis] = np.sign(up[axis])
        for a, b in (("thigh.L", "thigh.R"), ("upper_arm.L", "upper_arm.R"),
                     ("clavicle.L", "clavicle.R")):
            left, right = self._head(rest_w, mapping, a), self._head(rest_w, mapping, b)
            if left is not None and right is not None:
                x = _unit((left - right) - np.dot(left - right, z) * z)
                if x.any():
                    return np.stack([x, np.cross(z, x), z], axis=1)
        return None

    def _alignment(self) -> np.ndarray:
        fs = self._body_frame(self.src_rest_w, self.smap)
        ft = self._body_frame(self.tgt_rest_w, self.tmap)
        if fs is None or ft is None:
            raise ValueError("cannot tell which way the rigs face: both maps need 'hips', the left "
                             "and right thighs (or upper arms) and a shoulder, neck or head bone")
        return ft @ fs.T

    def _leg_length(self, rest_w: np.ndarray, mapping: dict[str, list[int]]) -> float | None:
        lengths = []
        for side in bone_maps.SIDES:
            found = [self._head(rest_w, mapping, f"{p}.{side}") for p in ("thigh", "shin", "foot")]
            pts = [p for p in found if p is not None]
            if len(pts) == 3:
                lengths.append(np.linalg.norm(pts[1] - pts[0]) + np.linalg.norm(pts[2] - pts[1]))
        return float(np.mean(lengths)) if lengths else None

    def _leg_ratio(self) -> float:
        ls = self._leg_length(self.src_rest_w, self.smap)
        lt = self._leg_length(self.tgt_rest_w, self.tmap)
        if ls and lt and ls > EPS:
            return lt / ls
        hs, ht = (self._head(r, m, "head") for r, m in ((self.src_rest_w, self.smap),
                                                        (self.tgt_rest_w, self.tmap)))
        if hs is not None and ht is not None:
            ds = np.linalg.norm(hs - self.src_rest_w[self.smap["hips"][0]][:3, 3])
            dt = np.linalg.norm(ht - self.tgt_rest_w[self.tmap["hips"][0]][:3, 3])
            if ds > EPS:
                return float(dt / ds)
        return 1.0

    def _polyline(self, mapping: dict[str, list[int]], other: dict[str, list[int]],
                  slot: str) -> _Polyline:
        aim = bone_maps.aim_slot(slot)
        anchor = bone_maps.anchor_slot(slot)
        start = mapping[anchor][0] if anchor is not None and anchor in mapping and anchor in other else None
        bones = tuple(mapping[slot])
        if aim is not None and aim in mapping and aim in other:
            return _Polyline(bones, ("head", mapping[aim][0]), start)
        return _Polyline(bones, ("tail", bones[-1]), start)

    @staticmethod
    def _points(poly: _Polyline, mats: np.ndarray, lengths: np.ndarray, scale: float) -> np.ndarray:
        pts = [mats[b][:3, 3] for b in ((poly.anchor,) if poly.anchor is not None else ()) + poly.bones]
        kind, b = poly.end
        if kind == "head":
            pts.append(mats[b][:3, 3])
        else:
            pts.append(mats[b][:3, 3] + _unit(mats[b][:3, 1]) * lengths[b] * scale)
        return np.asarray(pts)

    @staticmethod
    def _fractions(pts: np.ndarray) -> np.ndarray:
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        total = seg.sum()
        if total <= EPS:
            return np.linspace(0.0, 1.0, len(pts))
        return np.concatenate([[0.0], np.cumsum(seg) / total])

    @staticmethod
    def _locate(fracs: np.ndarray, f: float) -> tuple[int, float]:
        i = int(np.clip(np.searchsorted(fracs, f, side="right") - 1, 0, len(fracs) - 2))
        span = fracs[i + 1] - fracs[i]
        return i, float(np.clip((f - fracs[i]) / span, 0.0, 1.0)) if span > EPS else 0.0

    def _segments(self, slot: str) -> list[_Segment]:
        t_poly = self._polyline(self.tmap, self.smap, slot)
        s_poly = self._polyline(self.smap, self.tmap, slot)
        self._s_polys[slot], self._t_polys[slot] = s_poly, t_poly
        tf = self._fractions(self._points(t_poly, self.tgt_rest_w, self.target.lengths, self.tgt_scale))
        sf = self._fractions(self._points(s_poly, self.src_rest_w, self.source.lengths, self.src_scale))
        out = []
        o = t_poly.offset
        for k, bone in enumerate(t_poly.bones):
            mid, _ = self._locate(sf, 0.5 * (tf[k + o] + tf[k + o + 1]))
            # a stretch inside the anchor's segment takes the chain's first bone's turn
            src_bone = s_poly.bones[max(mid - s_poly.offset, 0)]
            end = ("head", t_poly.bones[k + 1]) if k + 1 < len(t_poly.bones) else t_poly.end
            out.append(_Segment(bone, slot, src_bone, self._locate(sf, tf[k + o]),
                                self._locate(sf, tf[k + o + 1]), end))
        return out

    # -- per pose -------------------------------------------------------------------------------
    def _source_world(self, pose: np.ndarray, world: np.ndarray) -> np.ndarray:
        rot, scale = _similarity(world, "source")
        out = np.empty_like(pose)
        for j in range(len(pose)):
            out[j, :3, :3] = rot @ _nearest_rotation(pose[j][:3, :3])
        out[:, :3, 3] = pose[:, :3, 3] @ (rot * scale).T + world[:3, 3]
        out[:, 3] = (0, 0, 0, 1)
        return out

    @staticmethod
    def _at(pts: np.ndarray, where: tuple[int, float]) -> np.ndarray:
        i, t = where
        return pts[i] + t * (pts[i + 1] - pts[i])

    def effector_goal(self, p_source_world: np.ndarray) -> np.ndarray:
        """Where a source point lands on the target (world): the root-motion map."""
        offset = self.ratio * (self.q @ (p_source_world - self.hips_rest_s))
        return self.hips_rest_t + offset

    def pose(self, source_pose: np.ndarray, source_world: np.ndarray | None = None,
             target_basis: np.ndarray | None = None, ik: bool = False) -> RetargetPose:
        """Retarget one pose. ``source_pose``: the source's armature-space pose matrices
        (``pose_bone.matrix``); ``source_world``: its object matrix at that pose (default: the
        rest one); ``target_basis``: the target's current local bases (default identity)."""
        src, tgt = self.source, self.target
        pose = np.asarray(source_pose, dtype=np.float64)
        if pose.shape != src.rest.shape or not np.all(np.isfinite(pose)):
            raise ValueError(f"source pose must be finite with shape {src.rest.shape}, got {pose.shape}")
        sw = self._source_world(pose, src.world if source_world is None else source_world)
        basis = (np.tile(np.eye(4), (len(tgt.names), 1, 1)) if target_basis is None
                 else np.array(target_basis, dtype=np.float64))
        if basis.shape != tgt.rest.shape:
            raise ValueError(f"target basis must have shape {tgt.rest.shape}, got {basis.shape}")
        q = self.q
        s_pts_rest = {s: self._points(p, self.src_rest_w, src.lengths, self.src_scale)
                      for s, p in self._s_polys.items()}
        s_pts_pose = {s: self._points(p, sw, src.lengths, self.src_scale) for s, p in self._s_polys.items()}
        desired_w: dict[int, np.ndarray] = {}
        wanted_dir: dict[int, np.ndarray] = {}
        for seg in self.segments:
            c_rest = q @ (self._at(s_pts_rest[seg.slot], seg.src_b) - self._at(s_pts_rest[seg.slot], seg.src_a))
            c_pose = q @ (self._at(s_pts_pose[seg.slot], seg.src_b) - self._at(s_pts_pose[seg.slot], seg.src_a))
            delta = q @ sw[seg.src_bone][:3, :3] @ self.src_rest_w[seg.src_bone][:3, :3].T @ q.T
            r_rest = self.tgt_rest_w[seg.bone][:3, :3]
            d_t = self._end_point(seg.t_end, self.tgt_rest_w, tgt) - self.tgt_rest_w[seg.bone][:3, 3]
            if seg.slot == "hips" or not (_unit(d_t).any() and _unit(c_rest).any()):
                # The root's "direction" means nothing shared (pelvis bones point up, forward or
                # down): its turn is the source's, or the whole body would tilt by the difference.
                r = delta @ r_rest
            else:
                r = delta @ rotation_between(_unit(d_t), _unit(c_rest)) @ r_rest
            if seg.slot != "hips" and _unit(c_pose).any() and _unit(c_rest).any():
                r = rotation_between(_unit(delta @ c_rest), _unit(c_pose)) @ r
            desired_w[seg.bone] = r
            # the source over the same stretch of the body: what the quality report compares to
            wanted_dir[seg.bone] = c_pose
        hips_goal = (self.effector_goal(sw[self.hips_source][:3, 3]) if self.root_motion
                     else self.hips_rest_t)
        posed = self._solve(basis, desired_w, hips_goal)
        if ik:
            desired_w = self._ik(posed, sw, desired_w)
            posed = self._solve(basis, desired_w, hips_goal)
        self._last_wanted, self.last_source_world = wanted_dir, sw
        angles, errors = self.measure(posed, sw)
        final = basis.copy()
        for b in tgt.order:
            if b in desired_w:
                final[b] = basis_for(tgt, posed, b, posed[b])
        return RetargetPose(final, posed, tuple(sorted(desired_w)), angles, errors)

    def measure(self, posed: np.ndarray, source_world_pose: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """Quality of target pose matrices (armature space, e.g. as Blender evaluated them)
        against the last source pose: per mapped bone the direction error in degrees, per hand
        and foot the distance to the source's effector in world units."""
        tgt, sw = self.target, source_world_pose
        errors: dict[str, float] = {}
        for limb_end in ("hand", "foot"):
            for side in bone_maps.SIDES:
                slot = f"{limb_end}.{side}"
                if slot in self.tmap and slot in self.smap:
                    goal = self.effector_goal(sw[self.smap[slot][0]][:3, 3])
                    at = self._to_world(posed[self.tmap[slot][0]])[:3, 3]
                    errors[tgt.names[self.tmap[slot][0]]] = float(np.linalg.norm(at - goal))
        angles = {}
        posed_w = np.stack([self._to_world(m) for m in posed])
        for seg in self.segments:
            if seg.slot == "hips":
                continue  # no comparable direction (see above); its place is the root motion
            got = self._end_point(seg.t_end, posed_w, tgt) - posed_w[seg.bone][:3, 3]
            angles[tgt.names[seg.bone]] = _angle_deg(got, self._last_wanted[seg.bone])
        return angles, errors

    def _end_point(self, end: tuple[str, int], mats_w: np.ndarray, skel: Skeleton) -> np.ndarray:
        kind, b = end
        if kind == "head":
            return mats_w[b][:3, 3]
        return mats_w[b][:3, 3] + _unit(mats_w[b][:3, 1]) * skel.lengths[b] * self.tgt_scale

    def _to_world(self, m: np.ndarray) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = self.tgt_rot @ _nearest_rotation(m[:3, :3])
        out[:3, 3] = self.tgt_rot @ (m[:3, 3] * self.tgt_scale) + self.target.world[:3, 3]
        return out

    def _to_armature_point(self, p_w: np.ndarray) -> np.ndarray:
        return self.tgt_rot.T @ (p_w - self.target.world[:3, 3]) / self.tgt_scale

    def _solve(self, basis: np.ndarray, desired_w: dict[int, np.ndarray],
               hips_goal_w: np.ndarray) -> np.ndarray:
        """FK where mapped bones take their desired rotations and the hips its goal head."""
        tgt = self.target
        posed = np.empty_like(tgt.rest)
        for b in tgt.order:
            p = int(tgt.parents[b])
            if b in desired_w:
                m = np.eye(4)
                m[:3, :3] = self.tgt_rot.T @ desired_w[b]
                if b == self.hips_target:
                    m[:3, 3] = self._to_armature_point(hips_goal_w)
                elif p < 0:
                    m[:3, 3] = (tgt.rest[b] @ basis[b])[:3, 3]
                else:
                    m[:3, 3] = (posed[p] @ np.linalg.inv(tgt.rest[p]) @ tgt.rest[b])[:3, 3]
                posed[b] = m
            elif p < 0:
                posed[b] = tgt.rest[b] @ basis[b]
            else:
                m = posed[p] @ np.linalg.inv(tgt.rest[p]) @ tgt.rest[b] @ basis[b]
                if not tgt.inherits[b]:
                    m[:3, :3] = tgt.rest[b][:3, :3] @ basis[b][:3, :3]
                posed[b] = m
        return posed

    def _ik(self, posed: np.ndarray, sw: np.ndarray,
            desired_w: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        out = dict(desired_w)
        pw = np.stack([self._to_world(m) for m in posed])
        for upper_s, lower_s, end_s in bone_maps.LIMBS.values():
            for side in bone_maps.SIDES:
                slots = [f"{s}.{side}" for s in (upper_s, lower_s, end_s)]
                if not all(s in self.tmap and s in self.smap for s in slots):
                    continue
                up, lo, end = (self.tmap[s][0] for s in slots)
                if up not in out or lo not in out:
                    continue
                a, b, c = pw[up][:3, 3], pw[lo][:3, 3], pw[end][:3, 3]
                goal = self.effector_goal(sw[self.smap[slots[2]][0]][:3, 3])
                sa, sb, sc = (sw[self.smap[s][0]][:3, 3] for s in slots)
                bend = _unit(self.q @ (sb - sa - np.dot(sb - sa, _unit(sc - sa)) * _unit(sc - sa)))
                new_b = _two_bone(a, b, c, goal, bend)
                if new_b is None:
                    continue
                swing_up = rotation_between(_unit(b - a), _unit(new_b - a))
                out[up] = swing_up @ out[up]
                out[lo] = rotation_between(_unit(c - b), _unit(goal - new_b)) @ out[lo]
        return out


def _two_bone(a: np.ndarray, b: np.ndarray, c: np.ndarray, goal: np.ndarray,
              bend_hint: np.ndarray) -> np.ndarray | None:
    """New middle joint for a two-bone chain a-b-c reaching ``goal``: same bone lengths, the bend
    on the side of the current knee/elbow (else ``bend_hint``); None when lengths vanish."""
    l1, l2 = float(np.linalg.norm(b - a)), float(np.linalg.norm(c - b))
    to_goal = goal - a
    d = float(np.linalg.norm(to_goal))
    if l1 <= EPS or l2 <= EPS or d <= EPS:
        return None
    d_clamped = float(np.clip(d, abs(l1 - l2) * 1.0001 + EPS, (l1 + l2) * IK_REACH))
    e = to_goal / d
    side = (b - a) - np.dot(b - a, e) * e
    if np.linalg.norm(side) < 1e-3 * l1:
        side = bend_hint - np.dot(bend_hint, e) * e
    side = _unit(side)
    if not side.any():
        return None
    cos_a = np.clip((l1 * l1 + d_clamped * d_clamped - l2 * l2) / (2 * l1 * d_clamped), -1.0, 1.0)
    return a + l1 * (cos_a * e + np.sqrt(1.0 - cos_a * cos_a) * side)
