"""The ONLY module that writes bpy data for the character: mesh, armature, skin, pose, camera.

Everything here takes plain numpy arrays already converted to Blender axes and metres (the math
lives in ``addon/rig``). Bulk data goes through ``foreach_set``; the per-bone loops touch 127
bones. Compatible with Blender 4.2 - 5.x (no removed APIs: no ``Action.fcurves``, no dict
context overrides).
"""
from __future__ import annotations

from typing import Any, Sequence, cast

import bpy
import numpy as np
from mathutils import Euler, Matrix, Quaternion

from ..rig.camera import CameraParams
from ..rig.naming import BONE_COLLECTIONS

MATERIAL_NAME = "SAM3D Body Skin"
CORRECTIVE_KEY = "pose_correctives"
CLIP_CORRECTIVE_PREFIX = "pose_correctives_"  # a clip's corrective basis: pose_correctives_01...
HIDDEN_BONE_COLLECTIONS = ("Helpers",)  # twist helpers and end sites: shown on demand


def new_collection(context: bpy.types.Context, name: str) -> bpy.types.Collection:
    coll = bpy.data.collections.new(name)
    context.scene.collection.children.link(coll)
    return coll


def ensure_object_mode(context: bpy.types.Context) -> None:
    """Leave any edit/pose mode first: switching another object into Edit Mode needs it."""
    active = context.view_layer.objects.active
    if str(context.mode) != "OBJECT" and active is not None:
        with context.temp_override(active_object=active, object=active):
            bpy.ops.object.mode_set(mode="OBJECT")


def neutral_material() -> bpy.types.Material:
    # The stubs type bpy_prop_collection.get as never returning None; it does for a missing key.
    mat = cast("bpy.types.Material | None", bpy.data.materials.get(MATERIAL_NAME))
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    color = (0.72, 0.62, 0.56, 1.0)
    mat.diffuse_color = color
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # always on (and deprecated) in 5.0
    tree = mat.node_tree
    if tree is not None:
        bsdf = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
        if bsdf is not None:
            # Node.inputs is typed as plain NodeSocket; these two are colour and float sockets.
            cast(bpy.types.NodeSocketColor, bsdf.inputs["Base Color"]).default_value = color
            cast(bpy.types.NodeSocketFloat, bsdf.inputs["Roughness"]).default_value = 0.6
    return mat


def build_mesh(name: str, vertices: np.ndarray, faces: np.ndarray,
               texcoords: np.ndarray | None = None,
               texcoord_faces: np.ndarray | None = None,
               material: bpy.types.Material | None = None) -> bpy.types.Mesh:
    """Triangle mesh in bulk (vertices.add / loops / polygons foreach_set), UVs, smooth shading."""
    v = np.ascontiguousarray(vertices, dtype=np.float32)
    f = np.ascontiguousarray(faces, dtype=np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(v.shape[0])
    me.vertices.foreach_set("co", v.ravel())
    me.loops.add(f.size)
    me.loops.foreach_set("vertex_index", f.ravel())
    me.polygons.add(f.shape[0])
    me.polygons.foreach_set("loop_start", np.arange(0, f.size, 3, dtype=np.int32))
    try:
        me.polygons.foreach_set("loop_total", np.full(f.shape[0], 3, dtype=np.int32))
    except (AttributeError, TypeError, RuntimeError):
        pass  # read-only where polygon sizes follow from loop_start alone
    if texcoords is not None and texcoord_faces is not None:
        uv = me.uv_layers.new(name="UVMap")
        uv_loops = np.asarray(texcoords, dtype=np.float32)[np.asarray(texcoord_faces).ravel()]
        uv.data.foreach_set("uv", np.ascontiguousarray(uv_loops).ravel())
    me.polygons.foreach_set("use_smooth", np.ones(f.shape[0], dtype=bool))
    if material is not None:
        me.materials.append(material)
    me.update()
    return me


def build_armature_data(context: bpy.types.Context, collection: bpy.types.Collection, name: str,
                        bone_names: Sequence[str], parents: np.ndarray, matrices: np.ndarray,
                        lengths: np.ndarray, deforming: np.ndarray,
                        collections: Sequence[str] | None = None) -> bpy.types.Object:
    """Armature object whose bone j has rest matrix ``matrices[j]`` (armature space, metres),
    in bone collection ``collections[j]`` (Blender 4.0+).

    ``EditBone.matrix`` sets head, direction and roll at once; the length comes after because
    the matrix keeps the current one. Bones are never connected (that would snap heads).
    """
    arm = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, arm)
    collection.objects.link(obj)
    colls = {}
    if collections is not None and hasattr(arm, "collections"):
        # naming's fixed order (Body, Hands, Face, Helpers) first, then any others as seen
        used = dict.fromkeys(collections)
        ordered = [c for c in BONE_COLLECTIONS if c in used] + [c for c in used
                                                                if c not in BONE_COLLECTIONS]
        for cname in ordered:
            colls[cname] = arm.collections.new(cname)
            colls[cname].is_visible = cname not in HIDDEN_BONE_COLLECTIONS
    context.view_layer.objects.active = obj
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                               selected_editable_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            ebs = []
            for j, bname in enumerate(bone_names):
                eb = arm.edit_bones.new(bname)
                eb.head = (0.0, 0.0, 0.0)
                eb.tail = (0.0, float(lengths[j]), 0.0)
                eb.matrix = Matrix(matrices[j].tolist())
                eb.length = float(lengths[j])
                eb.use_connect = False
                eb.inherit_scale = "FULL"
                eb.use_inherit_rotation = True
                eb.use_local_location = True
                eb.use_deform = bool(deforming[j])
                if colls and collections is not None:
                    colls[collections[j]].assign(eb)
                ebs.append(eb)
            for j, p in enumerate(parents):
                if p >= 0:
                    ebs[j].parent = ebs[int(p)]
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    if len(arm.bones) != len(bone_names):
        raise RuntimeError(f"Blender kept {len(arm.bones)} of {len(bone_names)} bones "
                           "(zero-length bones are deleted on leaving Edit Mode)")
    arm.display_type = "OCTAHEDRAL"
    obj.show_in_front = True
    return obj


def bone_rest_matrices(obj: bpy.types.Object, bone_names: Sequence[str]) -> np.ndarray:
    """The stored rest matrices (``bone.matrix_local``, armature space) in joint order."""
    flat = np.empty(len(obj.data.bones) * 16, dtype=np.float32)
    obj.data.bones.foreach_get("matrix_local", flat)
    mats = flat.reshape(-1, 4, 4).transpose(0, 2, 1)  # foreach_get is column-major
    order = [obj.data.bones.find(n) for n in bone_names]
    return mats[order].astype(np.float64)


def set_pose(obj: bpy.types.Object, bone_names: Sequence[str], location: np.ndarray,
             quaternion_wxyz: np.ndarray, scale: np.ndarray) -> None:
    """Pose-bone local transforms (``matrix_basis`` parts); quaternion rotation mode."""
    if obj.pose is None:
        raise RuntimeError(f"armature object {obj.name!r} has no pose")
    bones = obj.pose.bones
    for j, name in enumerate(bone_names):
        pb = bones[name]
        pb.rotation_mode = "QUATERNION"
        pb.location = location[j].tolist()
        pb.rotation_quaternion = quaternion_wxyz[j].tolist()
        pb.scale = scale[j].tolist()


def add_vertex_groups(obj: bpy.types.Object, bone_names: Sequence[str],
                      skin_indices: np.ndarray, skin_weights: np.ndarray) -> None:
    """One vertex group per bone, in bone order (group index = bone index).

    ``VertexGroup.add`` takes one weight per call, so vertices are grouped by (bone, weight):
    many vertices share exact weights (rigid parts have weight 1), which keeps the call count
    well below one call per influence.
    """
    groups = [obj.vertex_groups.new(name=n) for n in bone_names]
    idx = np.asarray(skin_indices)
    w = np.asarray(skin_weights, dtype=np.float32)
    vert = np.broadcast_to(np.arange(idx.shape[0])[:, None], idx.shape)
    keep = w > 0
    joints, weights, verts = idx[keep], w[keep], vert[keep]
    order = np.lexsort((verts, weights, joints))
    joints, weights, verts = joints[order], weights[order], verts[order]
    change = np.flatnonzero((np.diff(joints) != 0) | (np.diff(weights) != 0)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [joints.size]])
    verts_list = verts.tolist()
    for s, e in zip(starts.tolist(), ends.tolist()):
        groups[int(joints[s])].add(verts_list[s:e], float(weights[s]), "REPLACE")


def skin_to_armature(mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object) -> None:
    mesh_obj.parent = arm_obj
    mesh_obj.matrix_parent_inverse = Matrix.Identity(4)
    mod = cast(bpy.types.ArmatureModifier,
               mesh_obj.modifiers.new(name="Armature", type="ARMATURE"))
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False  # engines do plain LBS


def add_corrective_key(mesh_obj: bpy.types.Object, corrected: np.ndarray,
                       value: float = 1.0) -> bpy.types.ShapeKey:
    """Rest-space pose correctives as a shape key (acts before the Armature modifier)."""
    if mesh_obj.data.shape_keys is None:
        mesh_obj.shape_key_add(name="Basis", from_mix=False)
    key = mesh_obj.shape_key_add(name=CORRECTIVE_KEY, from_mix=False)
    key.data.foreach_set("co", np.ascontiguousarray(corrected, dtype=np.float32).ravel())
    key.value = value
    mesh_obj.data.update()
    return key


def add_clip_corrective_keys(mesh_obj: bpy.types.Object, offsets: np.ndarray,
                             prefix: str = CLIP_CORRECTIVE_PREFIX) -> list[str]:
    """One shape key per basis shape (K, V, 3 Blender units, rest frame) on top of the mesh's
    rest; values run -1..1 (the basis is scaled to its largest weight by the caller)."""
    if mesh_obj.data.shape_keys is None:
        mesh_obj.shape_key_add(name="Basis", from_mix=False)
    rest = np.empty(len(mesh_obj.data.vertices) * 3, dtype=np.float32)
    mesh_obj.data.vertices.foreach_get("co", rest)
    names = []
    for k, shape in enumerate(np.asarray(offsets, dtype=np.float32)):
        key = mesh_obj.shape_key_add(name=f"{prefix}{k + 1:02d}", from_mix=False)
        key.data.foreach_set("co", rest + shape.ravel())
        key.slider_min, key.slider_max = -1.0, 1.0
        key.value = 0.0
        names.append(key.name)
    mesh_obj.data.update()
    return names


def key_shape_values(mesh_obj: bpy.types.Object, names: Sequence[str], frames: np.ndarray,
                     values: np.ndarray, action_name: str) -> bpy.types.Action:
    """Key the values (T, K) of the mesh's shape keys ``names`` on ``frames``, in one action on
    the mesh's shape-key datablock (replacing its earlier one)."""
    action, fcurves = _replace_action(mesh_obj.data.shape_keys, action_name, "KEY")
    frames = np.asarray(frames, dtype=np.float32)
    for k, name in enumerate(names):
        _write_curve(fcurves, f'key_blocks["{name}"].value', 0, frames, np.asarray(values[:, k], np.float32))
    return action


def new_object(collection: bpy.types.Collection, name: str, data: bpy.types.ID,
               location: Sequence[float] = (0.0, 0.0, 0.0)) -> bpy.types.Object:
    obj = bpy.data.objects.new(name, data)
    obj.location = tuple(float(x) for x in location)
    collection.objects.link(obj)
    return obj


def set_mesh_positions(mesh_obj: bpy.types.Object, vertices: np.ndarray) -> None:
    mesh = cast(bpy.types.Mesh, mesh_obj.data)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(vertices, dtype=np.float32).ravel())
    mesh.update()


def build_camera(context: bpy.types.Context, collection: bpy.types.Collection, name: str,
                 params: CameraParams, image_path: str | None = None,
                 make_scene_camera: bool = True) -> bpy.types.Object:
    """Camera matching the photo's intrinsics; the photo as its background image."""
    cam = bpy.data.cameras.new(name)
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.sensor_fit = params.sensor_fit
    cam.sensor_width = params.sensor_width_mm
    cam.sensor_height = params.sensor_height_mm
    cam.lens = params.lens_mm
    cam.shift_x = params.shift_x
    cam.shift_y = params.shift_y
    cam.clip_start = params.clip_start
    cam.clip_end = params.clip_end
    obj = new_object(collection, name, cam, params.location)
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = params.rotation_euler
    if image_path:
        image = bpy.data.images.load(image_path, check_existing=True)
        cam.show_background_images = True
        bg = cam.background_images.new()
        bg.image = image
        bg.frame_method = "STRETCH"  # the render frame has the photo's aspect by construction
        bg.display_depth = "BACK"
        bg.alpha = 1.0
    if make_scene_camera:
        scene = context.scene
        scene.camera = obj
        scene.render.resolution_x = params.resolution_x
        scene.render.resolution_y = params.resolution_y
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = params.pixel_aspect_x
        scene.render.pixel_aspect_y = params.pixel_aspect_y
    return obj


def _channel_fcurves(obj: Any, action: bpy.types.Action, id_type: str = "OBJECT") -> Any:
    """The F-curve collection of `action` for `obj` (an object, or a shape-key datablock with
    ``id_type="KEY"``): the slot's channel bag on Blender 4.4+ (layered actions;
    `Action.fcurves` is gone in 5.0), `Action.fcurves` before."""
    anim: Any = obj.animation_data or obj.animation_data_create()  # 4.2 stubs lack the 4.4 slots
    anim.action = action
    if not hasattr(action, "layers"):
        return action.fcurves
    layered: Any = action
    slot = anim.action_slot
    if slot is None:
        slot = layered.slots.new(id_type=id_type, name=obj.name)
        anim.action_slot = slot
    layer = layered.layers[0] if len(layered.layers) else layered.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True).fcurves


def _replace_action(owner: Any, name: str, id_type: str = "OBJECT") -> tuple[bpy.types.Action, Any]:
    """A new action on ``owner`` (its old one removed when nothing else uses it) and the
    F-curve collection to write into."""
    old = owner.animation_data.action if owner.animation_data else None
    action = bpy.data.actions.new(name)
    if old is not None:
        owner.animation_data.action = None
        if old.users == 0:
            bpy.data.actions.remove(old)
    return action, _channel_fcurves(owner, action, id_type)


def key_animation(obj: bpy.types.Object, bone_names: Sequence[str], frames: np.ndarray,
                  location: np.ndarray, quaternion_wxyz: np.ndarray, scale: np.ndarray,
                  object_location: np.ndarray, action_name: str) -> bpy.types.Action:
    """One action keyed on `frames` (scene frames, T): pose-bone location/quaternion/scale
    (T, B, 3|4|3) and the object's location (T, 3), linear keys written in bulk. Replaces the
    object's action (the old one is removed when nothing else uses it)."""
    action, fcurves = _replace_action(obj, action_name)
    frames = np.asarray(frames, dtype=np.float32)

    def curve(path: str, index: int, values: np.ndarray) -> None:
        _write_curve(fcurves, path, index, frames, values)

    for j, name in enumerate(bone_names):
        obj.pose.bones[name].rotation_mode = "QUATERNION"
        base = f'pose.bones["{name}"]'
        for i in range(3):
            curve(f"{base}.location", i, location[:, j, i])
            curve(f"{base}.scale", i, scale[:, j, i])
        for i in range(4):
            curve(f"{base}.rotation_quaternion", i, quaternion_wxyz[:, j, i])
    for i in range(3):
        curve("location", i, object_location[:, i])
    return action


def _rotation_values(pb: Any, quat_wxyz: np.ndarray, previous: Any = None) -> tuple[str, list[float]]:
    """The rotation channel a pose bone animates in its own rotation mode, and its values."""
    q: Any = Quaternion(quat_wxyz.tolist())  # the 4.2 stubs type mathutils values as non-iterable
    mode = pb.rotation_mode
    if mode == "QUATERNION":
        return "rotation_quaternion", [float(v) for v in q]
    if mode == "AXIS_ANGLE":
        axis, angle = q.to_axis_angle()
        return "rotation_axis_angle", [float(angle), *(float(v) for v in axis)]
    euler = q.to_euler(mode) if previous is None else q.to_euler(mode, previous)
    return "rotation_euler", [float(v) for v in euler]


def set_bone_bases(obj: bpy.types.Object, bone_names: Sequence[str], location: np.ndarray,
                   quaternion_wxyz: np.ndarray, keyframe: int | None = None) -> None:
    """Pose bones of someone else's rig: location, rotation in each bone's own rotation mode
    (the rig's settings are left as they are), unit scale; optionally keyed at frame
    ``keyframe``."""
    if obj.pose is None:
        raise RuntimeError(f"armature object {obj.name!r} has no pose")
    for j, name in enumerate(bone_names):
        pb: Any = obj.pose.bones[name]
        quat = np.asarray(quaternion_wxyz[j], dtype=np.float64)
        if pb.rotation_mode == "QUATERNION" and np.dot(quat, list(pb.rotation_quaternion)) < 0:
            quat = -quat  # same rotation; keys one after another then never spin the long way
        path, values = _rotation_values(pb, quat, None if pb.rotation_mode in (
            "QUATERNION", "AXIS_ANGLE") else pb.rotation_euler)
        pb.location = location[j].tolist()
        setattr(pb, path, values)
        pb.scale = (1.0, 1.0, 1.0)
        if keyframe is not None:
            for channel in ("location", path, "scale"):
                pb.keyframe_insert(channel, frame=keyframe, group=name)


def set_bone_matrix(obj: bpy.types.Object, bone_name: str, matrix: np.ndarray) -> None:
    """Put one pose bone at an armature-space matrix through its evaluated parent (Blender
    solves the local basis, constraints on the parent chain included)."""
    obj.pose.bones[bone_name].matrix = Matrix(np.asarray(matrix, dtype=np.float64).tolist())


def set_custom_property(obj: bpy.types.Object, bone_name: str, key: str, value: float) -> None:
    obj.pose.bones[bone_name][key] = value


def key_bone_bases(obj: bpy.types.Object, bone_names: Sequence[str], frames: np.ndarray,
                   location: np.ndarray, quaternion_wxyz: np.ndarray,
                   action_name: str) -> bpy.types.Action:
    """A new action on someone else's rig keyed on ``frames`` (T): location (T, B, 3) and the
    rotation (T, B, 4 wxyz) in each bone's own rotation mode. An action the rig had is kept
    (given a fake user so saving the file keeps it), never deleted."""
    old = obj.animation_data.action if obj.animation_data else None
    if old is not None:
        old.use_fake_user = True
        obj.animation_data.action = None
    action = bpy.data.actions.new(action_name)
    fcurves = _channel_fcurves(obj, action)
    keys = np.asarray(frames, dtype=np.float32)
    for j, name in enumerate(bone_names):
        pb: Any = obj.pose.bones[name]
        base = f'pose.bones["{name}"]'
        rotations = []
        previous = None
        for t in range(len(keys)):
            path, values = _rotation_values(pb, quaternion_wxyz[t, j], previous)
            if path == "rotation_euler":
                previous = Euler(values, pb.rotation_mode)
            rotations.append(values)
        rot = np.asarray(rotations)
        for i in range(3):
            _write_curve(fcurves, f"{base}.location", i, keys, location[:, j, i])
        for i in range(rot.shape[1]):
            _write_curve(fcurves, f"{base}.{path}", i, keys, rot[:, i])
    return action


def _write_curve(fcurves: Any, path: str, index: int, frames: np.ndarray, values: np.ndarray) -> None:
    fc = fcurves.new(path, index=index)
    fc.keyframe_points.add(len(frames))
    co = np.empty(2 * len(frames), dtype=np.float32)
    co[0::2], co[1::2] = frames, values
    fc.keyframe_points.foreach_set("co", co)
    # LINEAR: dense keys, no overshoot between them
    fc.keyframe_points.foreach_set("interpolation", np.full(len(frames), 1, dtype=np.int32))
    fc.update()


def set_movie_background(cam_obj: bpy.types.Object, movie_path: str, frame_start: int = 1) -> None:
    """The clip as the camera's background movie, its frame n shown at scene frame
    `frame_start + n` (in sync with the keys)."""
    clip = bpy.data.movieclips.load(movie_path, check_existing=True)
    clip.frame_start = frame_start
    cam = cam_obj.data
    cam.show_background_images = True
    bg = cam.background_images.new()
    bg.source = "MOVIE_CLIP"
    bg.clip = clip
    bg.use_camera_clip = False
    bg.frame_method = "STRETCH"
    bg.display_depth = "BACK"
    bg.alpha = 1.0


def adopt_data(old: bpy.types.Object, new: bpy.types.Object) -> None:
    """Give ``old`` the data and placement of the freshly built ``new``, then delete ``new``:
    the user's object (name, parent, constraints, modifiers, custom properties, collections)
    stays and only what was rebuilt changes. The old data goes when nothing else uses it."""
    stale = old.data
    old.data = new.data
    old.matrix_world = new.matrix_world.copy()
    remove_object(new)
    keys = getattr(stale, "shape_keys", None) if stale is not None and stale.users == 0 else None
    if keys is not None and keys.animation_data is not None and keys.animation_data.action is not None:
        action = keys.animation_data.action  # the clip's corrective keys go with their mesh
        keys.animation_data.action = None
        if action.users == 0:
            bpy.data.actions.remove(action)
    pools: list[tuple[type, Any]] = [(bpy.types.Armature, bpy.data.armatures),
                                     (bpy.types.Mesh, bpy.data.meshes),
                                     (bpy.types.Camera, bpy.data.cameras)]
    for kind, pool in pools:
        if isinstance(stale, kind) and stale.users == 0:
            pool.remove(stale)


def remove_object(obj: bpy.types.Object) -> None:
    """Delete an object and the collections of ours it leaves empty."""
    owned = [c for c in obj.users_collection if c.name in bpy.data.collections
             and bpy.data.collections[c.name] == c]
    bpy.data.objects.remove(obj)
    for collection in owned:
        if not collection.objects and not collection.children:
            bpy.data.collections.remove(collection)


def reparent_skinned(mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object) -> None:
    """Move a skinned mesh onto another armature: its collections, parent and modifier."""
    for collection in list(mesh_obj.users_collection):
        collection.objects.unlink(mesh_obj)
    for collection in arm_obj.users_collection:
        collection.objects.link(mesh_obj)
    mesh_obj.parent = arm_obj
    mesh_obj.matrix_parent_inverse = Matrix.Identity(4)
    for mod in mesh_obj.modifiers:
        if mod.type == "ARMATURE":
            cast(bpy.types.ArmatureModifier, mod).object = arm_obj
