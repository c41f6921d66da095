"""The tolerances still catch every mistake of the fixtures' sensitivity table.

Each test injects one deviation from Meta's code into our engine (the README's table, all rows but
the LayerNorm eps ones, which the README shows to be harmless at ~1e-6 m), runs the case end to
end and asserts that the output comparison with the tolerances of tests/tolerances.py fails.
Without the injection the same case passes (test_e2e_parity), so the tolerances are neither too
loose to see these mistakes nor too tight for the kernel spread (docs/TOLERANCES.md).
"""
from __future__ import annotations

import types
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import server.models.backbones.dinov3 as dinov3
import server.models.camera_encoder as camera_encoder
import server.models.decoder as decoder
import server.models.sam3d_body as sam3d_body
from server.pipeline.estimator import process_one_image
from tests import tolerances as tol
from tests.pipeline import parity_cases as pc


def _failures(case: str) -> dict[str, float]:
    """Output keys over their tolerance, as err / limit."""
    info = pc.case_json(case)
    inp = pc.inputs(case)
    cam = inp["cam_int"][0] if "cam_int" in inp else None
    res = process_one_image(pc.model_for(case), pc.image(case), boxes=inp["boxes"], masks=inp.get("masks"),
                            cam_int=cam, inference_type=info["inference_type"])
    over = {}
    for key, want in pc.outputs(case).items():
        if key == "mask" or res[key].shape != want.shape:
            continue
        _, limit = tol.for_key(key)
        err = tol.max_abs(res[key], want)
        if err > limit:
            over[key] = err / limit
    return over


def _proxy(module: Any, name: str, replacement: Callable) -> types.SimpleNamespace:
    """A stand-in for torch.nn.functional inside one of our modules, with one function replaced."""
    ns = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    setattr(ns, name, replacement)
    return ns


def _swapped_rope(self, height: int, width: int):
    sin, cos = ORIGINAL_ROPE(self, height, width)
    q = sin.shape[-1] // 4  # layout [y, x, y, x] quarters: swap y and x
    order = torch.cat([torch.arange(q, 2 * q), torch.arange(q), torch.arange(3 * q, 4 * q), torch.arange(2 * q, 3 * q)])
    return sin[:, order], cos[:, order]


ORIGINAL_ROPE = dinov3.RopePositionEmbedding.forward
ORIGINAL_RAYS = sam3d_body._ray_map


def _half_pixel_rays(affine_trans, cam_int, height, width, dtype=torch.float32):
    rays = ORIGINAL_RAYS(affine_trans, cam_int, height, width, dtype)
    scale = affine_trans[:, :, [0, 1], [0, 1]][..., None, None]
    focal = cam_int[:, None, [0, 1], [0, 1]][..., None, None]
    return rays + (0.5 / scale / focal).to(rays.dtype)  # pixel centres instead of the index grid


@pytest.fixture
def identity_hand_pca() -> Iterator[None]:
    heads = [pc.model_for("02_dinov3_full_1p_hands_valid").head_pose_hand,
             pc.model_for("02_dinov3_full_1p_hands_valid").head_pose]
    saved = [h.hand_pose_comps.detach().clone() for h in heads]
    with torch.no_grad():
        for h in heads:
            h.hand_pose_comps.copy_(torch.eye(54))
    yield
    with torch.no_grad():
        for h, s in zip(heads, saved):
            h.hand_pose_comps.copy_(s)


@pytest.fixture
def image_centre_cliff() -> Iterator[None]:
    model = pc.model_for("07_dinov3_full_cam_int")
    model.use_intrin_center = False
    yield
    model.use_intrin_center = True


CASES = {
    "rope_axes_swapped": ("02_dinov3_full_1p_hands_valid",
                          lambda mp: mp.setattr(dinov3.RopePositionEmbedding, "forward", _swapped_rope)),
    "ray_grid_half_pixel": ("02_dinov3_full_1p_hands_valid",
                            lambda mp: mp.setattr(sam3d_body, "_ray_map", _half_pixel_rays)),
    "grid_sample_align_corners": ("02_dinov3_full_1p_hands_valid", lambda mp: mp.setattr(
        decoder, "F", _proxy(F, "grid_sample", lambda *a, **k: F.grid_sample(*a, **{**k, "align_corners": True})))),
    "ray_downsampling_without_antialias": ("02_dinov3_full_1p_hands_valid", lambda mp: mp.setattr(
        camera_encoder, "F", _proxy(F, "interpolate", lambda *a, **k: F.interpolate(*a, **{**k, "antialias": False})))),
}


@pytest.mark.parametrize("deviation", sorted(CASES))
def test_injected_mistake_fails_the_tolerances(deviation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pc.require_parity()
    case, inject = CASES[deviation]
    inject(monkeypatch)
    over = _failures(case)
    print(deviation, {k: f"{v:.0f}x" for k, v in over.items()})
    assert over, f"{deviation}: every output of {case} stayed within the tolerances"


def test_identity_hand_pca_fails_the_tolerances(identity_hand_pca) -> None:
    pc.require_parity()
    over = _failures("02_dinov3_full_1p_hands_valid")
    assert "pred_vertices" in over or "hand_pose_params" in over, over


def test_image_centre_instead_of_principal_point_fails(image_centre_cliff) -> None:
    pc.require_parity()
    over = _failures("07_dinov3_full_cam_int")
    assert over, "CLIFF centred on the image centre stayed within the tolerances on case 07"


def test_without_injection_the_cases_pass() -> None:
    pc.require_parity()
    for case in ("02_dinov3_full_1p_hands_valid", "07_dinov3_full_cam_int"):
        assert not _failures(case), case
