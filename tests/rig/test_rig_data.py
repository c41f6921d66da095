"""server/mhr/rig_data.py on the MHR stand-in TorchScript (torch, no bpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from server.mhr.rig_data import person_rig_state, rig_data_from_mhr
from tests.rig.standin_data import load_module, sample


@pytest.fixture(scope="module")
def module(standin_lod1):
    return load_module(str(standin_lod1))


@pytest.fixture(scope="module")
def rig(module):
    return rig_data_from_mhr(module)


def _zero_forward(module, shape=None):
    shape = torch.zeros(1, 45) if shape is None else torch.as_tensor(shape[None])
    with torch.no_grad():
        v, s = module(shape, torch.zeros(1, 204), torch.zeros(1, 72))
    return v[0].numpy(), s[0].numpy()


def test_rig_fields(module, rig):
    assert rig["joint_names"] == list(module.get_joint_names())
    assert rig["joint_parents"].dtype == np.int32 and rig["joint_parents"][0] == -1
    assert rig["skin_indices"].shape == rig["skin_weights"].shape == (18439, 8)
    assert rig["skin_indices"].dtype == np.int32 and rig["skin_weights"].dtype == np.float32
    assert np.allclose(rig["skin_weights"].sum(1), 1.0, atol=1e-5)
    assert rig["faces"].shape == rig["texcoord_faces"].shape == (36874, 3)
    assert rig["texcoords"].shape == (20361, 2)
    assert np.array_equal(rig["template_vertices"],
                          module.character_torch.mesh.rest_vertices.numpy())


def test_bind_skel_state_is_zero_parameter_skeleton(module, rig):
    _, skel = _zero_forward(module)
    assert np.abs(rig["bind_skel_state"][:, :3] - skel[:, :3]).max() < 1e-3
    dots = np.abs(np.sum(rig["bind_skel_state"][:, 3:7] * skel[:, 3:7], axis=1))
    assert np.allclose(dots, 1.0, atol=1e-5)
    assert np.allclose(rig["bind_skel_state"][:, 7], 1.0, atol=1e-6)


def test_skin_table_from_triples_equals_get_lbsw(module, rig):
    lbs = module.character_torch.linear_blend_skinning

    class NoGetter:  # the same module without get_lbsw(): forces the flattened-triples path
        character_torch = module.character_torch

        def get_joint_names(self):
            return module.get_joint_names()

    other = rig_data_from_mhr(NoGetter())
    dense = np.zeros((18439, 127))
    np.add.at(dense, (lbs.vert_indices_flattened.numpy(), lbs.skin_indices_flattened.numpy()),
              lbs.skin_weights_flattened.numpy())
    for r in (rig, other):
        rebuilt = np.zeros((18439, 127))
        np.add.at(rebuilt, (np.arange(18439)[:, None].repeat(8, 1), r["skin_indices"]),
                  r["skin_weights"])
        assert np.abs(rebuilt - dense / dense.sum(1, keepdims=True)).max() < 1e-6


def test_zero_parameter_forward_is_base_plus_blend_shapes(module, mhr_samples):
    s = sample(mhr_samples, "img_subj00")
    shape = s["shape_params"].astype(np.float32)
    verts, _ = _zero_forward(module, shape)
    bs = module.character_torch.blend_shape
    expect = bs.base_shape.numpy() + np.einsum("i,ivc->vc", shape, bs.shape_vectors.numpy())
    assert np.abs(verts - expect).max() < 1e-3  # cm (float32)


def test_person_rig_state(module, mhr_samples):
    samples = [sample(mhr_samples, n) for n in ("img_subj00", "img_subj01")]
    params = np.stack([s["mhr_model_params"] for s in samples])
    shape = np.stack([s["shape_params"] for s in samples])
    expr = np.zeros((2, 72), np.float32)
    expr[1, :5] = 0.7  # expressions must reach the rest mesh
    out = person_rig_state(module, params, shape, expr)
    assert out["mhr_skel_state"].shape == (2, 127, 8)
    assert out["mhr_vertices"].shape == out["mhr_rest_vertices"].shape == (2, 18439, 3)
    assert all(v.dtype == np.float32 for v in out.values())
    # posed joints = the sample's (y/z flipped, m -> cm) up to the stand-in's 0.03 cm
    for i, s in enumerate(samples):
        joints = s["pred_joint_coords"] * np.array([1, -1, -1]) * 100
        assert np.abs(out["mhr_skel_state"][i, :, :3] - joints).max() < 0.05
    # rest mesh: blend shapes only
    bs = module.character_torch.blend_shape
    fe = module.face_expressions_model.shape_vectors.numpy()
    expect = (bs.base_shape.numpy() + np.einsum("i,ivc->vc", shape[1], bs.shape_vectors.numpy())
              + np.einsum("i,ivc->vc", expr[1], fe))
    assert np.abs(out["mhr_rest_vertices"][1] - expect).max() < 1e-3
    # rest skeleton: pose zeroed, scales kept (not the template bind pose)
    rest_params = params.copy()
    rest_params[:, :136] = 0
    with torch.no_grad():
        _, skel = module(torch.from_numpy(shape[:1]), torch.from_numpy(rest_params[:1]),
                         torch.zeros(1, 72))
    assert np.allclose(out["mhr_rest_skel_state"][0], skel[0].numpy(), atol=1e-4)
    _, bind = _zero_forward(module)
    assert np.abs(out["mhr_rest_skel_state"][0, :, :3] - bind[:, :3]).max() > 0.5
    # one person alone equals its row of the batch
    single = person_rig_state(module, params[1], shape[1], expr[1])
    assert np.abs(single["mhr_vertices"][0] - out["mhr_vertices"][1]).max() < 1e-3


def test_person_rig_state_rejects_bad_input(module):
    with pytest.raises(ValueError, match="mhr_model_params"):
        person_rig_state(module, np.zeros((1, 203)), np.zeros((1, 45)))
    with pytest.raises(ValueError, match="shape_params has 3 rows"):
        person_rig_state(module, np.zeros((2, 204)), np.zeros((3, 45)))
    with pytest.raises(ValueError, match="non-finite"):
        person_rig_state(module, np.full((1, 204), np.nan), np.zeros((1, 45)))


def test_not_an_mhr_module():
    with pytest.raises(ValueError, match="not an MHR TorchScript"):
        rig_data_from_mhr(object())
