"""Re-pose an existing character from a refined result (Refine): pose only, its rest skeleton
and mesh basis stay those of the first reconstruction; the corrective shape key follows."""
from __future__ import annotations

from typing import Any, Mapping, cast

import bpy
import numpy as np

from .tags import PROP_KEYPOINTS, PROP_REST_STATE, get_prop as _get, has_prop as _has


def rig_rest_state(arm: bpy.types.Object, bind: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The skeleton state (cm, bone order) this armature rests in: MHR's bind skeleton, or the
    person's own zero-pose skeleton when apply_result baked the proportions into the rest."""
    if str(_get(arm, "sam3d_proportions", "exact")) != "baked":
        return bind
    if not _has(arm, PROP_REST_STATE):
        raise ValueError(f"{arm.name} has baked proportions but no recorded rest skeleton: "
                         "reconstruct it again")
    state = np.asarray(list(_get(arm, PROP_REST_STATE)), dtype=np.float64).reshape(-1, 8)
    return state[source]


def apply_refined_pose(context: bpy.types.Context, arm_name: str, result: Mapping[str, Any],
                       rig: Mapping[str, Any]) -> bpy.types.Object:
    """Pose the existing armature `arm_name` as person 0 of `result` (pose only: its rest
    skeleton and mesh basis are those of the first reconstruction)."""
    from . import builder
    from ..protocol.results import Result, RigData
    from ..rig import naming
    from ..rig.skeleton import pose_basis, rest_bones, rest_with_matrices

    arm: bpy.types.Object | None = cast(Any, bpy.data.objects).get(arm_name)
    if arm is None or arm.type != "ARMATURE":
        raise ValueError(f"the armature {arm_name!r} is gone")
    res = Result.from_mapping(result)
    rig_data = RigData.from_mapping(rig)
    if not res.persons:
        raise ValueError("the refined result has no person")
    person = res.persons[0]
    plan = naming.bone_plan(rig_data.joint_names, rig_data.joint_parents,
                            str(_get(arm, "sam3d_naming", naming.DEFAULT_PRESET)))
    source, names = plan.source, list(plan.names)
    bones = cast(bpy.types.Armature, arm.data).bones
    missing = [n for n in names if bones.find(n) < 0]
    if missing:
        raise ValueError(f"{arm.name} lacks {len(missing)} bones (e.g. {missing[0]!r}); was it "
                         "renamed?")
    ref_state = rig_rest_state(arm, rig_data.bind_skel_state[source], source)
    rest = rest_bones(ref_state, plan.parents, [rig_data.joint_names[j] for j in source])
    rest = rest_with_matrices(rest, ref_state, builder.bone_rest_matrices(arm, names))
    skel = person.skel_state[source]
    basis = pose_basis(rest, plan.parents, skel)
    builder.set_pose(arm, names, basis.location, basis.quaternion_wxyz, basis.scale)
    _update_correctives(arm, person, rig_data, plan, skel, ref_state)
    kp = np.asarray(result["pred_keypoints_2d"], dtype=np.float64)[0]
    arm[PROP_KEYPOINTS] = kp.reshape(-1).tolist()
    if context.view_layer is not None:
        context.view_layer.update()
    return arm


def _update_correctives(arm: Any, person: Any, rig_data: Any, plan: Any, skel: np.ndarray,
                        ref_state: np.ndarray) -> None:
    """Refit the corrective shape key to the new pose (it only fits the pose it was made for),
    relative to the mesh's own basis (its rest shape, left as it is)."""
    from . import builder
    from ..rig import naming
    from ..rig.axes import blender_to_mhr_points, mhr_to_blender_points
    from ..rig.skinning import corrective_offsets, skinning_transforms

    target = person.get("mhr_vertices")
    if target is None:
        return
    for mesh_obj in arm.children:
        keys = mesh_obj.data.shape_keys if mesh_obj.type == "MESH" else None
        if keys is None or builder.CORRECTIVE_KEY not in keys.key_blocks:
            continue
        skin_indices, skin_weights = naming.merge_skin_weights(
            rig_data.skin_indices, rig_data.skin_weights, plan.bone_of_joint)
        basis = np.empty(len(mesh_obj.data.vertices) * 3, dtype=np.float32)
        keys.reference_key.data.foreach_get("co", basis)
        rest_cm = blender_to_mhr_points(basis.reshape(-1, 3).astype(np.float64))
        delta = corrective_offsets(target, rest_cm, skin_indices, skin_weights,
                                   skinning_transforms(skel, ref_state))
        corrected = mhr_to_blender_points(rest_cm + delta)
        key = keys.key_blocks[builder.CORRECTIVE_KEY]
        key.data.foreach_set("co", np.ascontiguousarray(corrected, dtype=np.float32).ravel())
        mesh_obj.data.update()
