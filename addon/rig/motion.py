"""Motion clean-up for per-frame video reconstructions (numpy only, no bpy).

Each video frame is fitted on its own, so a sequence of fits jitters, its quaternions flip sign
from frame to frame and planted feet skate. The functions below turn such a sequence into a usable
animation: zero-lag smoothing (rotations on SO(3), positions in R^3), a jitter metric, foot-contact
detection and a root correction that pins planted feet.

Skeleton states are (T, J, 8): translation (cm), quaternion (x, y, z, w), uniform scale.
Smoothing is a symmetric Gaussian window, so it adds no lag (a causal filter would make the
character react late to every move); at the clip ends the window is truncated and renormalised,
which pulls the first and last few frames of a moving joint slightly toward the interior.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

# Weighted-Karcher-mean iterations on SO(3): the first one is exact for rotations about one axis,
# the second removes the (second-order) error of the tangent-space average for general motion.
_KARCHER_ITERATIONS = 2
GROUND_PERCENTILE = 5.0


# --- validation ----------------------------------------------------------------------------------

def _series(x: np.ndarray, name: str, trailing: int | None, ndims: tuple[int, ...] | None = None,
            min_ndim: int = 2) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < min_ndim or (ndims is not None and arr.ndim not in ndims):
        raise ValueError(f"{name} has shape {arr.shape}; expected (T, ..., {trailing})"
                         if ndims is None else
                         f"{name} has shape {arr.shape}; expected {ndims} axes (frames first)")
    if trailing is not None and arr.shape[-1] != trailing:
        raise ValueError(f"{name} must have a trailing axis of {trailing}, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} has no frames")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _strength(strength: float) -> float:
    s = float(strength)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"strength must be a finite number >= 0 (frames), got {strength!r}")
    return s


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


# --- quaternion helpers (x, y, z, w) ------------------------------------------------------------

def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    av, aw, bv, bw = a[..., :3], a[..., 3:], b[..., :3], b[..., 3:]
    v = aw * bv + bw * av + np.cross(av, bv)
    w = aw * bw - np.sum(av * bv, axis=-1, keepdims=True)
    return np.concatenate([v, w], axis=-1)


def _qconj(q: np.ndarray) -> np.ndarray:
    return q * np.array([-1.0, -1.0, -1.0, 1.0])


def _qlog(q: np.ndarray) -> np.ndarray:
    """Unit quaternions -> rotation vectors of the shortest rotation (w >= 0 hemisphere)."""
    q = np.where(q[..., 3:] < 0, -q, q)
    v = q[..., :3]
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(n, q[..., 3:])
    small = n < 1e-9
    # angle / n -> 2 / w for tiny rotations; w ~ 1 there, so 2 is exact to O(n^2).
    return v * np.where(small, 2.0, angle / np.where(small, 1.0, n))


def _qexp(r: np.ndarray) -> np.ndarray:
    """Rotation vectors -> unit quaternions."""
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    small = theta < 1e-6
    sinc = np.where(small, 0.5 - theta ** 2 / 48.0,
                    np.sin(theta / 2) / np.where(small, 1.0, theta))
    return np.concatenate([r * sinc, np.cos(theta / 2)], axis=-1)


# --- smoothing -----------------------------------------------------------------------------------

def _window(n_frames: int, strength: float) -> Iterator[tuple[float, slice, slice]]:
    """(weight, target frames, source frames) for each offset of the Gaussian window."""
    radius = int(math.ceil(3.0 * strength))
    for k in range(-radius, radius + 1):
        lo, hi = max(0, -k), min(n_frames, n_frames - k)
        if lo < hi:
            yield math.exp(-0.5 * (k / strength) ** 2), slice(lo, hi), slice(lo + k, hi + k)


def _gaussian(x: np.ndarray, strength: float) -> np.ndarray:
    acc, wsum = np.zeros_like(x), np.zeros(x.shape[0])
    for w, dst, src in _window(x.shape[0], strength):
        acc[dst] += w * x[src]
        wsum[dst] += w
    return acc / wsum.reshape((-1,) + (1,) * (x.ndim - 1))


def quat_continuity(q: np.ndarray) -> np.ndarray:
    """Flip quaternion signs (per joint) so consecutive frames have a non-negative dot product.

    q and -q are the same rotation, but Blender interpolates keyframes component-wise, so a sign
    flip between two keys would spin the bone the long way round.
    """
    arr = _series(q, "q", 4)
    dots = np.sum(arr[1:] * arr[:-1], axis=-1)
    flips = np.concatenate([np.ones((1,) + arr.shape[1:-1]), np.where(dots < 0, -1.0, 1.0)])
    return arr * np.cumprod(flips, axis=0)[..., None]


def smooth_rotations(q: np.ndarray, strength: float) -> np.ndarray:
    """Zero-lag Gaussian smoothing of unit quaternions (T, ..., 4) xyzw on SO(3).

    Each frame's result is the weighted Karcher mean of its window, computed in the tangent space
    at the frame itself: averaging rotation vectors of q_t^-1 q_s (never raw angles or components)
    follows any total motion, e.g. a joint spinning 720 degrees, as long as the rotation within
    one window stays below 180 degrees. ``strength`` is the Gaussian sigma in frames; 0 returns
    an unchanged copy.
    """
    arr = _series(q, "q", 4)
    s = _strength(strength)
    if s == 0:
        return arr.copy()
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    if np.any(norm < 1e-8):
        raise ValueError("q contains a zero-length quaternion")
    samples = quat_continuity(arr / norm)
    base = samples.copy()
    n = arr.shape[0]
    for _ in range(_KARCHER_ITERATIONS):
        acc, wsum = np.zeros(arr.shape[:-1] + (3,)), np.zeros(n)
        inv = _qconj(base)
        for w, dst, src in _window(n, s):
            acc[dst] += w * _qlog(_qmul(inv[dst], samples[src]))
            wsum[dst] += w
        base = _qmul(base, _qexp(acc / wsum.reshape((-1,) + (1,) * (acc.ndim - 1))))
        base /= np.linalg.norm(base, axis=-1, keepdims=True)
    return quat_continuity(base)


def smooth_positions(x: np.ndarray, strength: float) -> np.ndarray:
    """Zero-lag Gaussian smoothing of points (T, ..., 3); sigma ``strength`` frames, 0 = copy."""
    arr = _series(x, "x", 3)
    s = _strength(strength)
    return arr.copy() if s == 0 else _gaussian(arr, s)


def smooth_values(x: np.ndarray, strength: float) -> np.ndarray:
    """The same zero-lag Gaussian on any per-frame values (T, ...), e.g. shape-key weights that
    must follow the smoothed pose they belong to."""
    arr = _series(x, "x", None)
    s = _strength(strength)
    return arr.copy() if s == 0 else _gaussian(arr, s)


def smooth_skel_states(states: np.ndarray, strength: float) -> np.ndarray:
    """Smooth skeleton states (T, J, 8): translations and scale in R, rotations on SO(3)."""
    arr = _series(states, "states", 8, ndims=(3,))
    s = _strength(strength)
    if s == 0:
        return arr.copy()
    out = np.empty_like(arr)
    out[..., :3] = smooth_positions(arr[..., :3], s)
    out[..., 3:7] = smooth_rotations(arr[..., 3:7], s)
    out[..., 7] = _gaussian(arr[..., 7], s)
    return out


def jitter(positions: np.ndarray, fps: float = 1.0) -> float:
    """Mean joint acceleration: mean norm of the second difference of (T, J, 3) or (T, 3) points.

    With fps it is in units per second squared; for a smooth clip it reflects the real motion,
    for a per-frame fit it is dominated by frame-to-frame noise, so it measures smoothing.
    """
    p = _series(positions, "positions", 3, ndims=(2, 3))
    rate = _positive(fps, "fps")
    if p.shape[0] < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {p.shape[0]}")
    acc = (p[2:] - 2.0 * p[1:-1] + p[:-2]) * rate ** 2
    return float(np.mean(np.linalg.norm(acc, axis=-1)))


# --- foot contacts -------------------------------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end-exclusive) of each run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _contacts(contacts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    c = np.asarray(contacts)
    if c.shape != shape:
        raise ValueError(f"contacts must have shape {shape} (frames, feet), got {c.shape}")
    if c.dtype != bool and not np.all((c == 0) | (c == 1)):
        raise ValueError("contacts must be boolean")
    return c.astype(bool)


def foot_contacts(foot_positions: np.ndarray, fps: float, up: np.ndarray = np.array([0, 0, 1.0]),
                  speed_threshold: float = 0.25, height_threshold: float = 0.05,
                  min_frames: int = 3) -> np.ndarray:
    """Bool (T, F): a foot is planted where it is both slow and near the ground.

    foot_positions (T, F, 3) are world metres. The ground is a low percentile of all feet's
    heights over the clip (not per foot, so a foot that never comes down is not "on its own
    ground"); speed is the central difference in m/s. Runs shorter than ``min_frames`` are
    dropped, since a foot passing through zero speed mid-swing is not a step.
    """
    p = _series(foot_positions, "foot_positions", 3, ndims=(3,))
    rate = _positive(fps, "fps")
    axis = np.asarray(up, dtype=np.float64)
    if axis.shape != (3,) or not np.all(np.isfinite(axis)) or np.linalg.norm(axis) < 1e-12:
        raise ValueError(f"up must be a non-zero 3-vector, got {up!r}")
    for value, name in ((speed_threshold, "speed_threshold"), (height_threshold, "height_threshold")):
        _positive(value, name)
    if int(min_frames) != min_frames or min_frames < 1:
        raise ValueError(f"min_frames must be an integer >= 1, got {min_frames!r}")
    heights = p @ (axis / np.linalg.norm(axis))
    ground = np.percentile(heights, GROUND_PERCENTILE)
    velocity = np.gradient(p, axis=0) * rate if p.shape[0] >= 2 else np.zeros_like(p)
    contact = (np.linalg.norm(velocity, axis=-1) < speed_threshold) & \
              (heights - ground < height_threshold)
    for f in range(contact.shape[1]):
        for start, end in _runs(contact[:, f]):
            if end - start < min_frames:
                contact[start:end, f] = False
    return contact


def max_contact_slide(foot_positions: np.ndarray, contacts: np.ndarray) -> float:
    """Largest distance a foot moves from its run's first-frame position during any contact run."""
    p = _series(foot_positions, "foot_positions", 3, ndims=(3,))
    c = _contacts(contacts, (p.shape[0], p.shape[1]))
    worst = 0.0
    for f in range(p.shape[1]):
        for start, end in _runs(c[:, f]):
            worst = max(worst, float(np.linalg.norm(p[start:end, f] - p[start, f], axis=-1).max()))
    return worst


# --- foot pinning --------------------------------------------------------------------------------

def _ease_out(k: np.ndarray, n: int) -> np.ndarray:
    """Distance (in units of the correction's velocity) travelled k frames after a stretch ends,
    with the per-frame step decaying linearly to zero over n frames."""
    m = np.minimum(k, n)
    return m - m * (m + 1) / (2.0 * (n + 1))


def _ease_in(k: np.ndarray, n: int) -> np.ndarray:
    """Distance still to travel k frames before a stretch starts: the mirror of _ease_out, so the
    step grows from zero to the stretch's velocity at its first frame."""
    m = np.minimum(k, n + 1)
    return (n + 2) / 2.0 - (m - m * (m - 1) / (2.0 * (n + 1)))


def _slope(c: np.ndarray, frames: int, at_end: bool) -> np.ndarray:
    """Mean per-frame velocity over the first/last ``frames`` steps of c (averages out noise)."""
    m = min(frames, c.shape[0] - 1)
    if m <= 0:
        return np.zeros(3)
    return (c[-1] - c[-1 - m]) / m if at_end else (c[m] - c[0]) / m


def pin_feet(root_location: np.ndarray, foot_positions: np.ndarray, contacts: np.ndarray,
             blend_frames: int = 3) -> np.ndarray:
    """Root locations (T, 3) corrected so planted feet stay where they landed.

    Feet move rigidly with the root (foot_world = root + foot_local), so a root offset c_t moves
    every foot by c_t. Frames are grouped into stretches where some foot is planted. Inside one,
    c_t keeps each continuing foot at the world position it had (after correction) at the first
    frame of its run; with two feet planted c_t is the mean of their corrections, and a foot that
    lands adds no constraint on its first frame (it is pinned where it lands), so c_t never jumps.
    Contact frames are pinned exactly. Between stretches the correction is carried over, so the
    character does not snap back; over ``blend_frames`` non-contact frames next to a stretch the
    correction keeps the stretch's mean velocity and eases it to zero (out) or from zero (in), so
    the root's velocity does not kink at lift-off or touch-down. blend_frames=0 just holds it.
    """
    root = _series(root_location, "root_location", 3, ndims=(2,))
    feet = _series(foot_positions, "foot_positions", 3, ndims=(3,))
    if feet.shape[0] != root.shape[0]:
        raise ValueError(f"root_location has {root.shape[0]} frames, foot_positions {feet.shape[0]}")
    c = _contacts(contacts, (feet.shape[0], feet.shape[1]))
    if int(blend_frames) != blend_frames or blend_frames < 0:
        raise ValueError(f"blend_frames must be an integer >= 0, got {blend_frames!r}")
    blend = int(blend_frames)
    n_frames = root.shape[0]
    corr = np.zeros((n_frames, 3))
    anchors = np.zeros((feet.shape[1], 3))
    last, c_last, v_out = None, np.zeros(3), np.zeros(3)   # previous stretch's last frame state
    for start, end in _runs(c.any(axis=1)):
        # Correction relative to the stretch's start (which is 0 there).
        rel, carry = np.zeros((end - start, 3)), np.zeros(3)
        for t in range(start, end):
            on = c[t]
            cont = on & c[t - 1] if t > start else np.zeros_like(on)
            if cont.any():
                carry = np.mean(anchors[cont] - feet[t, cont], axis=0)
            anchors[on & ~cont] = feet[t, on & ~cont] + carry
            rel[t - start] = carry
        v_in = _slope(rel, blend, at_end=False)
        gap = np.arange(0 if last is None else last + 1, start)
        n = min(blend, gap.size)
        if n > 0:
            out_k = gap - last if last is not None else np.zeros_like(gap)
            corr[gap] = (c_last + v_out * _ease_out(out_k, n)[:, None]
                         + v_in * _ease_in(start - gap, n)[:, None])
            base = c_last + v_in * _ease_in(np.array(0), n)
            if last is not None:
                base = base + v_out * _ease_out(np.array(start - last), n)
        else:
            corr[gap] = c_last
            base = c_last
        corr[start:end] = base + rel
        last, c_last = end - 1, corr[end - 1].copy()
        v_out = _slope(corr[start:end], blend, at_end=True)
    if last is not None and last + 1 < n_frames:
        tail = np.arange(last + 1, n_frames)
        n = min(blend, tail.size)
        corr[tail] = c_last + (v_out * _ease_out(tail - last, n)[:, None] if n > 0 else 0.0)
    return root + corr
