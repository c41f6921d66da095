"""Result / RigData validation, npz round trip and per-person split (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from addon.protocol.results import (Result, RigData, load_result_npz, load_rig_npz, save_result_npz,
                          save_rig_npz, stack_persons)
from tests.rig.standin_data import standin_result, standin_rig


@pytest.fixture(scope="module")
def rig(standin_small):
    return standin_rig(str(standin_small))


@pytest.fixture(scope="module")
def result(standin_small, mhr_samples):
    return standin_result(str(standin_small), mhr_samples, n_persons=2)


def test_result_split_and_round_trip(tmp_path, result):
    res = Result.from_mapping(result)
    assert res.n_persons == 2 and res.mode == "full" and res.intrinsics_source == "user"
    assert res.image_size == (1920, 890)
    p1 = res.persons[1]
    assert p1.skel_state.shape == (127, 8)
    assert np.array_equal(p1["mhr_rest_vertices"], result["mhr_rest_vertices"][1])
    assert np.array_equal(p1.cam_t, result["pred_cam_t"][1])
    path = tmp_path / "RESULT.npz"
    save_result_npz(path, res)
    back = load_result_npz(path)
    assert set(back.arrays) == set(res.arrays)
    for k, v in res.arrays.items():
        assert np.array_equal(back.arrays[k], v), k
    assert back.mode == "full"


def test_result_errors_name_the_array(result):
    def broken(**changes):
        d = dict(result)
        for k, v in changes.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        return d

    with pytest.raises(ValueError, match="missing mhr_skel_state"):
        Result.from_mapping(broken(mhr_skel_state=None))
    with pytest.raises(ValueError, match="mhr_skel_state"):
        Result.from_mapping(broken(mhr_skel_state=result["mhr_skel_state"][:, :5]))
    nan = result["mhr_rest_vertices"].copy()
    nan[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="mhr_rest_vertices: contains NaN"):
        Result.from_mapping(broken(mhr_rest_vertices=nan))
    with pytest.raises(ValueError, match="axis 1 \\(V\\)"):
        Result.from_mapping(broken(mhr_vertices=result["mhr_vertices"][:, :100]))
    with pytest.raises(ValueError, match="axis 0 \\(N\\)"):
        Result.from_mapping(broken(shape_params=result["shape_params"][:1]))
    with pytest.raises(ValueError, match="image_size"):
        Result.from_mapping(broken(image_size=np.array([1.5, 2.0])))
    with pytest.raises(ValueError, match="mode"):
        Result.from_mapping(broken(mode=np.asarray("hand")))
    with pytest.raises(ValueError, match="cam_int"):
        Result.from_mapping(broken(cam_int=np.zeros((3, 3))))
    with pytest.raises(ValueError, match="object arrays"):
        Result.from_mapping(broken(extra=np.array([{}], dtype=object)))


def test_stack_persons():
    out = stack_persons([{"a": np.zeros(3)}, {"a": np.ones(3)}])
    assert out["a"].shape == (2, 3)
    with pytest.raises(ValueError, match="does not share"):
        stack_persons([{"a": np.zeros(3)}, {"b": np.ones(3)}])


def test_rig_round_trip_and_validation(tmp_path, rig):
    r = RigData.from_mapping(rig)
    assert r.n_joints == 127 and r.n_vertices == 595
    path = tmp_path / "rig.npz"
    save_rig_npz(path, r)
    back = load_rig_npz(path)
    assert back.joint_names == r.joint_names
    for k in ("joint_parents", "bind_skel_state", "skin_indices", "skin_weights", "faces"):
        assert np.array_equal(getattr(back, k), getattr(r, k)), k
    bad = dict(rig, joint_parents=np.r_[np.int32(-1), np.full(126, 5, np.int32)])
    with pytest.raises(ValueError, match="precede"):
        RigData.from_mapping(bad)
    w = rig["skin_weights"].copy()
    w[0] *= 2
    with pytest.raises(ValueError, match="sum to 1"):
        RigData.from_mapping(dict(rig, skin_weights=w))
    f = rig["faces"].copy()
    f[0, 0] = 10_000
    with pytest.raises(ValueError, match="faces"):
        RigData.from_mapping(dict(rig, faces=f))
    with pytest.raises(ValueError, match="missing texcoords"):
        RigData.from_mapping({k: v for k, v in rig.items() if k != "texcoords"})
