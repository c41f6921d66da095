"""Loading and calling MHR's TorchScript (server/mhr/torchscript.py) with the stand-in files."""
from __future__ import annotations

import pytest
import torch

from server.errors import CHECKPOINT_INVALID, CHECKPOINT_MISSING, ServerError
from server.mhr.torchscript import (
    MHRTorchScript,
    accepts_apply_correctives,
    forward_argument_names,
    load_mhr,
    mhr_device_for,
)


def test_load_standins(standin_small, standin_lod1):
    for path, verts in ((standin_small, 595), (standin_lod1, 18439)):
        module = load_mhr(path, "cpu")
        assert forward_argument_names(module) == ["identity_coeffs", "model_parameters", "face_expr_coeffs"]
        assert not accepts_apply_correctives(module)
        assert all(not p.requires_grad for p in module.parameters())
        wrapper = MHRTorchScript(module)
        assert wrapper.num_vertices == verts and len(wrapper.joint_names()) == 127
        assert len(wrapper.parameter_names()) == 249


def test_missing_file(tmp_path):
    with pytest.raises(ServerError) as err:
        load_mhr(tmp_path / "mhr_model.pt")
    assert err.value.code == CHECKPOINT_MISSING and "not found" in err.value.message


def test_empty_path():
    with pytest.raises(ServerError) as err:
        load_mhr("")
    assert err.value.code == CHECKPOINT_MISSING


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ServerError) as err:
        load_mhr(tmp_path)
    assert err.value.code == CHECKPOINT_INVALID and "not a file" in err.value.message


def test_not_torchscript(tmp_path):
    bad = tmp_path / "mhr_model.pt"
    torch.save({"a": torch.zeros(2)}, bad)  # a pickle, not TorchScript
    with pytest.raises(ServerError) as err:
        load_mhr(bad)
    assert err.value.code == CHECKPOINT_INVALID and "not a TorchScript file" in err.value.message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(ServerError, match="not a TorchScript file"):
        load_mhr(junk)


class _NotMHR(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a + b + c


class _FourArgs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, apply_correctives: bool = True):
        return (a, b) if apply_correctives else (b, a)


def test_torchscript_that_is_not_mhr(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(_NotMHR()), str(path))
    with pytest.raises(ServerError) as err:
        load_mhr(path)
    assert err.value.code == CHECKPOINT_INVALID and "not an MHR body model" in err.value.message


def test_schema_detection_of_apply_correctives():
    scripted = torch.jit.script(_FourArgs())
    assert forward_argument_names(scripted) == ["a", "b", "c", "apply_correctives"]
    assert accepts_apply_correctives(scripted)
    assert not accepts_apply_correctives(torch.jit.script(_NotMHR()))


def test_wrapper_call_shapes_and_broadcast(standin_small):
    mhr = MHRTorchScript.load(standin_small)
    params = torch.zeros(3, 204)
    params[:, 43] = 0.8  # left elbow bend
    out = mhr(torch.zeros(45), params)  # identity (45,) broadcast, expression None -> zeros
    assert out.vertices.shape == (3, 595, 3) and out.skel_state.shape == (3, 127, 8)
    assert out.vertices.dtype == torch.float32
    ref_v, ref_s = mhr.module(torch.zeros(3, 45), params, torch.zeros(3, 72))
    assert torch.equal(out.vertices, ref_v) and torch.equal(out.skel_state, ref_s)
    # True is what a 3-argument module does anyway; False cannot be honoured.
    assert torch.equal(mhr(torch.zeros(1, 45), params, apply_correctives=True).vertices, ref_v)
    with pytest.raises(ValueError, match="always applies pose correctives"):
        mhr(torch.zeros(1, 45), params, apply_correctives=False)


@pytest.mark.parametrize(
    "identity, params, expr, match",
    [
        (torch.zeros(1, 45), torch.zeros(1, 203), None, r"model_params must be \(B, 204\)"),
        (torch.zeros(1, 44), torch.zeros(1, 204), None, r"identity must be \(B, 45\)"),
        (torch.zeros(2, 45), torch.zeros(3, 204), None, "rows"),
        (torch.zeros(1, 45), torch.zeros(1, 204), torch.zeros(1, 71), r"expression must be \(B, 72\)"),
    ],
)
def test_wrapper_rejects_bad_shapes(standin_small, identity, params, expr, match):
    mhr = MHRTorchScript.load(standin_small)
    with pytest.raises(ValueError, match=match):
        mhr(identity, params, expr)


def test_mps_maps_to_cpu():
    assert mhr_device_for("mps") == torch.device("cpu")
    assert mhr_device_for("cpu") == torch.device("cpu")
    assert mhr_device_for("cuda:1") == torch.device("cuda:1")
