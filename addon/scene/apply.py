"""apply_result(): a validated Result + RigData -> skinned, posed characters and a camera.

A plain function: the add-on's timer calls it on the main thread and tests call it directly.
The numpy side (addon/rig) computes everything; addon/builder.py writes the bpy data.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..protocol.results import Result, RigData
from ..rig import naming
from ..rig.axes import mhr_to_blender_points, person_offset_blender
from ..rig.camera import camera_params
from ..rig.skeleton import MIN_BONE_LENGTH_CM, pose_basis, rest_bones, rest_with_matrices
from ..rig.skinning import corrective_offsets, linear_blend_skinning, skinning_transforms
from .tags import PROP_REST_STATE as REST_STATE_PROP  # the key Refine reads back

DEFAULT_OPTIONS: dict[str, Any] = {
    # Add the pose correctives as a shape key so the posed mesh equals MHR's output exactly
    # (they only fit this pose; the plain LBS rig stays underneath).
    "correctives": True,
    "camera": True,              # build the photo camera
    "scene_camera": True,        # make it the scene camera and set the render size
    "pose": True,                # pose the bones (False leaves the bind pose)
    "mesh": True,                # build the skinned mesh (False: the rig only, e.g. retargeting)
    "collection_name": None,     # default: the photo's file name, else "SAM3D Body"
    "naming": naming.DEFAULT_PRESET,  # bone names: "mhr" | "unreal" | "mixamo" (merges helpers)
    "min_bone_length_cm": MIN_BONE_LENGTH_CM,
    # Where the person's proportions (MHR scale parameters 136..203) live; docs/RIG.md:
    # "baked": rest = the person's zero pose (A-pose) with their proportions, scale-free bones,
    #          mesh rebound there (approximate for new poses: LBS does not compose);
    # "exact": rest = MHR's template skeleton, proportions as constant pose-bone scale (Clear
    #          Pose drops them).
    "proportions": "baked",
}
PROPORTIONS = ("baked", "exact")


def merged_options(defaults: Mapping[str, Any], options: Mapping[str, Any] | None,
                   what: str = "apply") -> dict[str, Any]:
    """`defaults` updated with `options`; an unknown name is a ValueError listing the known ones."""
    opts = dict(defaults)
    if options:
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"unknown {what} options {unknown}; known: {sorted(defaults)}")
        opts.update(options)
    return opts


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    return merged_options(DEFAULT_OPTIONS, options)


def _check_compatible(result: Result, rig: RigData) -> None:
    for person in result.persons:
        skel = person.skel_state
        if skel.shape[0] != rig.n_joints:
            raise ValueError(f"person {person.index}: mhr_skel_state has {skel.shape[0]} joints, "
                             f"the rig has {rig.n_joints}")
        if person.rest_vertices.shape[0] != rig.n_vertices:
            raise ValueError(f"person {person.index}: {person.rest_vertices.shape[0]} rest vertices, "
                             f"the rig mesh has {rig.n_vertices} (different MHR level of detail?)")
    faces = result.faces
    if faces is not None and faces.shape != rig.faces.shape:
        raise ValueError(f"result faces {faces.shape} differ from rig faces {rig.faces.shape}")


def _collection_name(image_path: str | None, opts: Mapping[str, Any]) -> str:
    if opts["collection_name"]:
        return str(opts["collection_name"])
    if image_path:
        return os.path.splitext(os.path.basename(image_path))[0] or "SAM3D Body"
    return "SAM3D Body"


def _person_rest(person: Any, proportions: str, source: np.ndarray, bind: np.ndarray,
                 skin_indices: np.ndarray, skin_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The skeleton state the rig rests in (cm, bone order) and the rest mesh (cm, MHR axes).

    Exact: MHR's bind skeleton and the shaped mesh in it. Baked: the person's zero-pose skeleton
    (``mhr_rest_skel_state``) and the mesh skinned into it, which is MHR's zero-pose forward
    (correctives vanish at zero pose) under the rig's own weights.
    """
    if proportions == "exact":
        return bind, np.asarray(person.rest_vertices, dtype=np.float64)
    ref_state = np.asarray(person["mhr_rest_skel_state"], dtype=np.float64)[source]
    transforms = skinning_transforms(ref_state, bind)
    rest_cm = linear_blend_skinning(person.rest_vertices, skin_indices, skin_weights, transforms)
    return ref_state, rest_cm


def apply_result(context: Any, result: Result | Mapping[str, Any], rig: RigData | Mapping[str, Any],
                 image_path: str | None = None,
                 options: Mapping[str, Any] | None = None) -> list[Any]:
    """Build one collection with a rig + mesh per person and the photo camera.

    Returns the created objects: armature and mesh of each person in order (no mesh with the
    option ``mesh`` off), then the camera.
    """
    from . import builder  # bpy is imported lazily so this module loads without Blender

    res = Result.from_mapping(result)
    rig_data = RigData.from_mapping(rig)
    opts = _options(options)
    _check_compatible(res, rig_data)
    if image_path is not None and not os.path.isfile(image_path):
        raise FileNotFoundError(f"photo not found: {image_path}")

    # Bones follow the naming preset's plan: bone b is MHR joint plan.source[b]; merged joints'
    # weights move to their kept ancestor (identity plan for "mhr").
    plan = naming.bone_plan(rig_data.joint_names, rig_data.joint_parents, str(opts["naming"]))
    source = plan.source
    bone_names = list(plan.names)
    parents = plan.parents
    bind = rig_data.bind_skel_state[source]
    skin_indices, skin_weights = naming.merge_skin_weights(
        rig_data.skin_indices, rig_data.skin_weights, plan.bone_of_joint)
    deforming = np.asarray(naming.deform_flags([rig_data.joint_names[j] for j in source],
                                               skin_indices, skin_weights), dtype=bool)
    # Directions use MHR names (helper detection), whatever the preset calls the bones.
    rest = rest_bones(bind, parents, [rig_data.joint_names[j] for j in source],
                      min_length_cm=float(opts["min_bone_length_cm"]))
    proportions = str(opts["proportions"])
    if proportions not in PROPORTIONS:
        raise ValueError(f"unknown proportions form {proportions!r}; choose one of {PROPORTIONS}")
    if proportions == "baked":
        missing = [p.index for p in res.persons if p.get("mhr_rest_skel_state") is None]
        if missing:
            raise ValueError(f"proportions 'baked' needs mhr_rest_skel_state; persons {missing} "
                             "have none (use proportions 'exact' or re-run the reconstruction)")

    builder.ensure_object_mode(context)
    base = _collection_name(image_path, opts)
    collection = builder.new_collection(context, base)
    t0 = res.persons[0].cam_t if res.persons else np.zeros(3)
    material = builder.neutral_material()
    names_mhr = [rig_data.joint_names[j] for j in source]
    min_len = float(opts["min_bone_length_cm"])

    created: list[Any] = []
    armatures, meshes = [], []
    template_arm = template_mesh = None
    for person in res.persons:
        tag = f"{base}_person{person.index}"
        ref_state, rest_cm = _person_rest(person, proportions, source, bind, skin_indices,
                                          skin_weights)
        rest_v = mhr_to_blender_points(rest_cm)
        person_rest = rest if proportions == "exact" else rest_bones(
            ref_state, parents, names_mhr, min_length_cm=min_len)
        if proportions == "baked" or template_arm is None:
            arm_obj = builder.build_armature_data(context, collection, tag, bone_names, parents,
                                                  person_rest.matrices, person_rest.lengths,
                                                  deforming, plan.collections)
            template_arm = arm_obj.data
        else:
            # Same bind skeleton: copy (C-level) instead of rebuilding in Edit Mode.
            arm_obj = builder.new_object(collection, tag, template_arm.copy())
            arm_obj.show_in_front = True
        mesh_obj = None  # the rig only (option "mesh" off)
        if opts["mesh"] and template_mesh is None:
            me = builder.build_mesh(f"{tag}_mesh", rest_v, rig_data.faces, rig_data.texcoords,
                                    rig_data.texcoord_faces, material)
            mesh_obj = builder.new_object(collection, f"{tag}_mesh", me)
            builder.add_vertex_groups(mesh_obj, bone_names, skin_indices, skin_weights)
            template_mesh = me
        elif opts["mesh"] and template_mesh is not None:
            # Same topology: the copied mesh carries the vertex-group names and weights.
            me = template_mesh.copy()
            me.name = f"{tag}_mesh"
            mesh_obj = builder.new_object(collection, f"{tag}_mesh", me)
        arm_obj.location = tuple(person_offset_blender(person.cam_t, t0).tolist())
        arm_obj["sam3d_person"] = person.index
        arm_obj["sam3d_naming"] = plan.preset
        arm_obj["sam3d_proportions"] = proportions
        if proportions == "baked":
            # The rest skeleton (all joints, cm) so re-posing tools can rebuild this rest.
            arm_obj[REST_STATE_PROP] = np.asarray(person["mhr_rest_skel_state"],
                                                  dtype=np.float64).reshape(-1).tolist()
        armatures.append((arm_obj, ref_state, person_rest))
        meshes.append((mesh_obj, rest_v, rest_cm))
        created += [arm_obj] if mesh_obj is None else [arm_obj, mesh_obj]

    context.view_layer.update()  # copied armatures get their pose only after an update
    for person, (arm_obj, ref_state, person_rest), (mesh_obj, rest_v, rest_cm) in zip(res.persons, armatures,
                                                                        meshes):
        if mesh_obj is not None:
            if person.index > 0:
                builder.set_mesh_positions(mesh_obj, rest_v)
            builder.skin_to_armature(mesh_obj, arm_obj)
        if opts["pose"]:
            # Re-express the rest on the bone matrices Blender stored (float32 head/tail/roll).
            stored = builder.bone_rest_matrices(arm_obj, bone_names)
            skel = person.skel_state[source]
            basis = pose_basis(rest_with_matrices(person_rest, ref_state, stored), parents, skel)
            builder.set_pose(arm_obj, bone_names, basis.location, basis.quaternion_wxyz,
                             basis.scale)
            target = person.get("mhr_vertices")
            if mesh_obj is not None and opts["correctives"] and target is not None:
                # Relative to the rig's own (possibly merged) skin and rest, so the key restores
                # MHR's surface exactly for this pose whatever the preset and proportions form.
                transforms = skinning_transforms(skel, ref_state)
                delta = corrective_offsets(target, rest_cm, skin_indices, skin_weights,
                                           transforms)
                corrected = mhr_to_blender_points(rest_cm + delta)
                builder.add_corrective_key(mesh_obj, corrected)

    if opts["camera"]:
        params = camera_params(res.cam_int, np.asarray(res.image_size), t0)
        cam_obj = builder.build_camera(context, collection, f"{base}_camera", params, image_path,
                                       make_scene_camera=bool(opts["scene_camera"]))
        created.append(cam_obj)
    context.view_layer.update()
    return created
