"""Synthetic humanoid skeletons for the retargeting tests (numpy only).

Bones are named after their bone-map slot (``spine.1``, ``upper_arm.L``, ``index.2.R``) so a test
can write the map itself; layouts vary the things real rigs vary: spine, neck and finger counts,
T- or A-pose, limb proportions, bone rolls, the armature object's turn, scale and place.
Blender frame: metres, Z up, the character faces -Y, its left is +X.
"""
from __future__ import annotations

import numpy as np

from addon.rig.retarget import Skeleton

SIDE_X = {"L": 1.0, "R": -1.0}
FINGER_Y = {"thumb": -0.03, "index": -0.02, "middle": 0.0, "ring": 0.02, "pinky": 0.04}


def _frame(y: np.ndarray, roll: float) -> np.ndarray:
    """A bone frame with +Y along the bone, rolled by ``roll`` radians about it."""
    y = y / np.linalg.norm(y)
    ref = np.array([0.0, 0.0, 1.0]) if abs(y[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(y, ref)
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * x - s * z, y, s * x + c * z], axis=1)



def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _chain(p0: np.ndarray, p1: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pts = [p0 + (p1 - p0) * k / n for k in range(n + 1)]
    # a gentle curve, so chains of different counts really differ
    bend = np.array([0.0, 0.015, 0.0]) * np.sin(np.linspace(0, np.pi, n + 1))[:, None]
    pts = [p + b for p, b in zip(pts, bend)]
    return [(pts[k], pts[k + 1]) for k in range(n)]


def humanoid(spine: int = 3, neck: int = 1, fingers: int = 3, thumb: int = 3, a_pose: bool = False,
             arm_scale: float = 1.0, leg_scale: float = 1.0, roll_seed: int | None = None,
             world: np.ndarray | None = None) -> tuple[Skeleton, dict[str, list[str]]]:
    """A humanoid skeleton and its slot map."""
    bones: list[tuple[str, str | None, np.ndarray, np.ndarray]] = []
    mapping: dict[str, list[str]] = {}

    def add(name: str, parent: str | None, head: np.ndarray, tail: np.ndarray, slot: str) -> None:
        bones.append((name, parent, np.asarray(head, float), np.asarray(tail, float)))
        mapping.setdefault(slot, []).append(name)

    hip_z = 0.55 + 0.45 * leg_scale
    add("hips", None, [0, 0, hip_z - 0.05], [0, 0, hip_z + 0.05], "hips")
    prev = "hips"
    for k, (h, t) in enumerate(_chain(np.array([0, 0, hip_z + 0.05]), np.array([0, 0, hip_z + 0.5]), spine)):
        add(f"spine.{k}", prev, h, t, "spine")
        prev = f"spine.{k}"
    chest = prev
    for k, (h, t) in enumerate(_chain(np.array([0, 0, hip_z + 0.5]), np.array([0, 0, hip_z + 0.6]), neck)):
        add(f"neck.{k}", prev, h, t, "neck")
        prev = f"neck.{k}"
    add("head", prev, [0, 0, hip_z + 0.6], [0, 0, hip_z + 0.8], "head")
    shoulder_z = hip_z + 0.45
    arm_dir = _rot_y(0.0) @ np.array([1.0, 0, 0])
    for side, sx in SIDE_X.items():
        a_rot = _rot_y(-sx * np.radians(40)) if a_pose else np.eye(3)
        add(f"clavicle.{side}", chest, [sx * 0.02, 0, shoulder_z], [sx * 0.17, 0, shoulder_z],
            f"clavicle.{side}")
        base = np.array([sx * 0.17, 0, shoulder_z])
        d = a_rot @ (arm_dir * np.array([sx, 1, 1]))
        elbow = base + d * 0.28 * arm_scale
        wrist = elbow + d * 0.25 * arm_scale
        knuckle = wrist + d * 0.08 * arm_scale
        add(f"upper_arm.{side}", f"clavicle.{side}", base, elbow, f"upper_arm.{side}")
        add(f"forearm.{side}", f"upper_arm.{side}", elbow, wrist, f"forearm.{side}")
        add(f"hand.{side}", f"forearm.{side}", wrist, knuckle, f"hand.{side}")
        for finger, fy in FINGER_Y.items():
            n = thumb if finger == "thumb" else fingers
            start = knuckle + np.array([0, fy, 0]) - (d * 0.05 if finger == "thumb" else 0)
            end = start + d * 0.09 * arm_scale + (np.array([0, -0.03, 0]) if finger == "thumb" else 0)
            parent = f"hand.{side}"
            for k, (h, t) in enumerate(_chain(start, end, n)):
                name = f"{finger}.{k}.{side}"
                add(name, parent, h, t, f"{finger}.{side}")
                parent = name
        hip = np.array([sx * 0.1, 0, hip_z - 0.05])
        knee = hip + np.array([0, -0.01, -0.45]) * leg_scale
        ankle = knee + np.array([0, 0.01, -0.42]) * leg_scale
        ball = ankle + np.array([0, -0.12, -0.06])
        add(f"thigh.{side}", "hips", hip, knee, f"thigh.{side}")
        add(f"shin.{side}", f"thigh.{side}", knee, ankle, f"shin.{side}")
        add(f"foot.{side}", f"shin.{side}", ankle, ball, f"foot.{side}")
        add(f"toe.{side}", f"foot.{side}", ball, ball + np.array([0, -0.07, 0]), f"toe.{side}")
    rng = np.random.default_rng(roll_seed) if roll_seed is not None else None
    names = [b[0] for b in bones]
    parents = np.array([-1 if b[1] is None else names.index(b[1]) for b in bones])
    rest = np.tile(np.eye(4), (len(bones), 1, 1))
    lengths = np.empty(len(bones))
    for i, (_, _, h, t) in enumerate(bones):
        roll = float(rng.uniform(-np.pi, np.pi)) if rng is not None else 0.0
        rest[i, :3, :3] = _frame(t - h, roll)
        rest[i, :3, 3] = h
        lengths[i] = np.linalg.norm(t - h)
    skel = Skeleton(tuple(names), parents, rest, lengths, np.eye(4) if world is None else world)
    return skel, mapping


def object_matrix(turn_z_deg: float = 0.0, scale: float = 1.0,
                  at: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot_z(np.radians(turn_z_deg)) * scale
    m[:3, 3] = at
    return m


def random_bases(skel: Skeleton, seed: int, max_deg: float = 35.0,
                 root_shift: float = 0.1) -> np.ndarray:
    """Local bases of a random pose: every bone turned up to ``max_deg``, the root moved."""
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (len(skel.names), 1, 1))
    for i in range(len(skel.names)):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = np.radians(rng.uniform(0, max_deg))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        out[i, :3, :3] = np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k
    out[0, :3, 3] = rng.uniform(-root_shift, root_shift, 3)
    return out
