"""apply_clip(): a clip result (addon/protocol/clip_result.py) -> one animated character per track.

Each track is built once with apply_result (its locked shape, the first frame's placement), then
keyed on every frame it was seen: pose bones from the per-frame skeleton states (smoothed on
SO(3), addon/rig/motion.py), the object's location from the camera translation, with the feet
pinned during ground contact (a root correction), and MHR's pose correctives as a few shape
keys whose values are keyed per frame (server/video/correctives.py makes the basis). The camera
gets the clip as its background movie, in sync: source frame n is scene frame n + 1. Running the
same clip again rebuilds its characters in place (option "replace"). A plain function: the CLI
and tests call it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..protocol.clip_result import check_clip, track_correctives, track_person, track_rows
from ..protocol.results import RigData
from ..protocol.sequence import clip_title, first_frame_file, is_clip_source
from ..rig import motion, naming
from ..rig.axes import mhr_to_blender_points, person_offset_blender
from ..rig.camera import camera_params
from ..rig.skeleton import pose_basis, rest_bones, rest_with_matrices

DEFAULT_CLIP_OPTIONS: dict[str, Any] = {
    "smoothing": 2.0,      # Gaussian sigma in processed frames on SO(3); 0 = the raw per-frame poses
    "foot_lock": True,     # pin feet in contact with the ground (root correction)
    "camera": True,
    "mesh": True,
    "naming": naming.DEFAULT_PRESET,
    "proportions": "baked",
    "collection_name": None,
    "replace": True,       # a re-run of the same clip updates the characters it built before
    "correctives": True,   # the clip's pose correctives as keyed shape keys, when it has them
}
PROP_CLIP = "sam3d_clip"   # which clip built an armature or camera (see clip_key)
PROP_TRACK = "sam3d_track"
FOOT_JOINTS = ("l_ball", "r_ball")  # the toe joints carry the weight at contact


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    from .apply import merged_options

    opts = merged_options(DEFAULT_CLIP_OPTIONS, options, "clip")
    if not float(opts["smoothing"]) >= 0:  # NaN too
        raise ValueError(f"smoothing must be 0 (off) or positive, not {opts['smoothing']!r}")
    return opts


def _set_frame_rate(scene: Any, fps: float, first: int, last: int) -> None:
    rounded = max(int(round(fps)), 1)
    scene.render.fps = rounded
    scene.render.fps_base = rounded / fps  # 29.97 -> 30 / 1.001
    scene.frame_start, scene.frame_end = first, last
    scene.frame_current = first


def track_motion(clip: Mapping[str, np.ndarray], track_id: int, rest: Any, parents: np.ndarray,
                 source: np.ndarray, foot_bones: list[int], t0: np.ndarray, fps: float,
                 smoothing: float, foot_lock: bool) -> dict[str, Any]:
    """Per-frame pose-bone channels and object location of one track (numpy only)."""
    rows = track_rows(clip, track_id)
    skel = np.asarray(clip["mhr_skel_state"], dtype=np.float64)[rows]
    cam_t = np.asarray(clip["pred_cam_t"], dtype=np.float64)[rows]
    if smoothing > 0 and len(rows) > 2:
        skel = motion.smooth_skel_states(skel, smoothing)
        cam_t = motion.smooth_positions(cam_t, smoothing)
    loc = np.empty((len(rows), len(source), 3))
    quat = np.empty((len(rows), len(source), 4))
    scale = np.empty((len(rows), len(source), 3))
    feet = np.empty((len(rows), len(foot_bones), 3))
    for t in range(len(rows)):
        basis = pose_basis(rest, parents, skel[t][source])
        loc[t], quat[t], scale[t] = basis.location, basis.quaternion_wxyz, basis.scale
        feet[t] = basis.targets[foot_bones, :3, 3]
    quat = motion.quat_continuity(quat[..., [1, 2, 3, 0]])[..., [3, 0, 1, 2]]  # no flips between keys
    root = np.stack([person_offset_blender(c, t0) for c in cam_t])
    stats: dict[str, float] = {"jitter_raw": float("nan"), "jitter": float("nan"), "foot_slide_raw": 0.0,
                               "foot_slide": 0.0, "contact_frames": 0}
    raw_root = np.stack([person_offset_blender(c, t0) for c in np.asarray(clip["pred_cam_t"], np.float64)[rows]])
    if len(rows) >= 3:
        raw = np.asarray(clip["mhr_skel_state"], dtype=np.float64)[rows][:, :, :3] / 100.0 + raw_root[:, None]
        now = skel[:, :, :3] / 100.0 + root[:, None]
        stats["jitter_raw"], stats["jitter"] = motion.jitter(raw, fps), motion.jitter(now, fps)
    if foot_lock and foot_bones and len(rows) >= 3:
        world = feet + root[:, None]
        contacts = motion.foot_contacts(world, fps)
        stats["foot_slide_raw"] = motion.max_contact_slide(world, contacts)
        root = motion.pin_feet(root, world, contacts)
        stats["foot_slide"] = motion.max_contact_slide(feet + root[:, None], contacts)
        stats["contact_frames"] = int(contacts.any(axis=1).sum())
    frames = np.asarray(clip["frame"])[rows] + 1
    return {"frames": frames, "location": loc, "quaternion": quat, "scale": scale, "root": root, "stats": stats}


def apply_clip(context: Any, clip: Mapping[str, Any], rig: RigData | Mapping[str, Any],
               movie_path: str | None = None, options: Mapping[str, Any] | None = None) -> list[Any]:
    """Build and key one character per track; returns [armature, mesh?] per track, then the
    camera. Each armature's ``sam3d_clip_stats`` holds its jitter and foot-slide numbers."""
    from . import builder
    from .apply import apply_result
    from .refine_pose import rig_rest_state

    data = check_clip(clip)
    rig_data = RigData.from_mapping(rig)
    opts = _options(options)
    if movie_path is not None and not is_clip_source(movie_path):
        raise FileNotFoundError(f"clip not found: {movie_path}")
    plan = naming.bone_plan(rig_data.joint_names, rig_data.joint_parents, str(opts["naming"]))
    source, names = plan.source, list(plan.names)
    names_mhr = [rig_data.joint_names[j] for j in source]
    foot_bones = [names_mhr.index(j) for j in FOOT_JOINTS if j in names_mhr]
    base = str(opts["collection_name"] or (clip_title(movie_path) if movie_path else "SAM3D Clip"))
    fps = float(data["fps"])
    frames = np.asarray(data["frames"])
    builder.ensure_object_mode(context)
    _set_frame_rate(context.scene, fps, int(frames.min()) + 1, int(frames.max()) + 1)
    track_ids = [int(t) for t in data["track_ids"] if len(track_rows(data, int(t)))]
    t0 = np.asarray(data["pred_cam_t"], np.float64)[track_rows(data, track_ids[0])[0]]
    key = clip_key(movie_path, base)
    previous = previous_build(context.scene, key) if opts["replace"] else {}
    created: list[Any] = []
    for tid in track_ids:
        rows = track_rows(data, tid)
        objs = apply_result(context, track_person(data, tid, int(rows[0])), rig_data, options={
            "correctives": False, "camera": False, "pose": False, "mesh": bool(opts["mesh"]),
            "naming": opts["naming"], "proportions": opts["proportions"],
            "collection_name": f"{base}_track{tid}"})
        if tid in previous:
            objs = _adopt(previous[tid], objs)
            context.view_layer.update()  # the pose follows the new bones before it is keyed
        arm = objs[0]
        ref_state = rig_rest_state(arm, rig_data.bind_skel_state[source], source)
        rest = rest_with_matrices(rest_bones(ref_state, plan.parents, names_mhr), ref_state,
                                  builder.bone_rest_matrices(arm, names))
        keyed = track_motion(data, tid, rest, plan.parents, source, foot_bones, t0, fps,
                             float(opts["smoothing"]), bool(opts["foot_lock"]))
        builder.key_animation(arm, names, keyed["frames"], keyed["location"], keyed["quaternion"],
                              keyed["scale"], keyed["root"], f"{arm.name}_clip")
        correctives = track_correctives(data, tid, rows) if opts["correctives"] else None
        mesh = next((o for o in objs[1:] if o.type == "MESH"), None)
        if correctives is not None and mesh is not None:
            weights, basis = correctives
            if float(opts["smoothing"]) > 0 and len(rows) > 2:  # they follow the smoothed pose
                weights = motion.smooth_values(weights, float(opts["smoothing"]))
            _key_correctives(mesh, (weights, basis), keyed["frames"])
            slot = int(np.flatnonzero(np.asarray(data["track_ids"]) == tid)[0])
            keyed["stats"]["corrective_keys"] = len(basis)
            keyed["stats"]["corrective_error_mm"] = 10.0 * float(data["track_corrective_error_cm"][slot])
        arm[PROP_TRACK] = tid
        arm[PROP_CLIP] = key
        arm["sam3d_clip_stats"] = {k: float(v) for k, v in keyed["stats"].items()}
        created += objs
    if opts["camera"]:
        collection = builder.new_collection(context, f"{base}_camera")
        params = camera_params(np.asarray(data["cam_int"]), np.asarray(data["image_size"]), t0)
        cam = builder.build_camera(context, collection, f"{base}_camera", params, None)
        if "camera" in previous:
            builder.adopt_data(previous["camera"], cam)  # deletes the new camera object
            cam = previous["camera"]
            cam.data.background_images.clear()
            context.scene.camera = cam
        if movie_path:
            builder.set_movie_background(cam, first_frame_file(movie_path))
        cam[PROP_CLIP] = key
        created.append(cam)
    context.scene.frame_set(context.scene.frame_start)
    return created


def corrective_key_values(weights: np.ndarray, basis_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape-key values (T, K) in -1..1 and the matching shapes (K, V, 3, Blender units): each
    basis shape scaled by its largest weight over the clip, so sliders never clamp."""
    weights = np.asarray(weights, dtype=np.float64)
    scale = np.abs(weights).max(axis=0)
    scale[scale == 0] = 1.0
    shapes = mhr_to_blender_points(np.asarray(basis_cm, np.float64) * scale[:, None, None])
    return weights / scale, shapes


def _key_correctives(mesh: Any, correctives: tuple[np.ndarray, np.ndarray], frames: np.ndarray) -> None:
    from . import builder

    values, shapes = corrective_key_values(*correctives)
    names = builder.add_clip_corrective_keys(mesh, shapes)
    builder.key_shape_values(mesh, names, frames, values, f"{mesh.name}_correctives")


def clip_key(movie_path: str | None, base: str) -> str:
    """What says two runs are of the same clip: its absolute path, else the collection name."""
    if movie_path:
        return os.path.normcase(os.path.abspath(movie_path))
    return f"collection:{base}"


def previous_build(scene: Any, key: str) -> dict[Any, Any]:
    """The armatures (by track id) and the camera ("camera") an earlier run of the same clip
    left in ``scene``."""
    found: dict[Any, Any] = {}
    for obj in scene.objects:
        if obj.get(PROP_CLIP) != key:
            continue
        if obj.type == "ARMATURE" and PROP_TRACK in obj:
            found.setdefault(int(obj[PROP_TRACK]), obj)
        elif obj.type == "CAMERA":
            found.setdefault("camera", obj)
    return found


def _adopt(old_arm: Any, objs: list[Any]) -> list[Any]:
    """Rebuild an earlier run's character in place: its armature and skinned mesh objects keep
    their identity and get the new data (the shape may differ between runs)."""
    from . import builder

    new_arm, new_meshes = objs[0], [o for o in objs[1:] if o.type == "MESH"]
    old_meshes = [o for o in old_arm.children if o.type == "MESH" and any(
        m.type == "ARMATURE" and m.object == old_arm for m in o.modifiers)]
    kept = [old_arm]
    for k, mesh in enumerate(new_meshes):
        if k < len(old_meshes):
            builder.adopt_data(old_meshes[k], mesh)
            kept.append(old_meshes[k])
        else:  # the earlier run had no mesh: keep the new one, moved onto the old armature
            builder.reparent_skinned(mesh, old_arm)
            kept.append(mesh)
    builder.adopt_data(old_arm, new_arm)
    return kept


