"""Backbone features against Meta's official outputs (fixtures/parity, tiny random weights).

For every stored `<pass>.backbone` intermediate: load the stored uint8 crop the official code fed
to that pass, normalise it exactly as the official pipeline does, run our backbone with the
case's checkpoint weights and compare.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from server.models.backbones import backbone_dtype, build_backbone, set_official_precision
from tests.conftest import PARITY

# Floors of the relative tolerance (max |ours - official| / RMS of the official features).
FP32_REL_TOL = 1e-4
# README: CPU fp16 kernels round differently across machines; 1e-3 is still 4x below the
# difference between fp16 and fp32 activations (4.4e-3), see test_fp16_case_needs_fp16_activations.
FP16_REL_TOL = 1e-3


def _case_dirs() -> list[Path]:
    return sorted(p for p in (PARITY / "cases").glob("*") if (p / "intermediates.npz").exists())


def _backbone_entries() -> list[tuple[str, str]]:
    """(case name, pass) for every stored `<pass>.backbone`."""
    entries = []
    for case in _case_dirs():
        with np.load(case / "intermediates.npz") as z:
            entries += [(case.name, k[: -len(".backbone")]) for k in z.files if k.endswith(".backbone")]
    return entries


def _case_json(case: Path) -> dict:
    return json.loads((case / "case.json").read_text())


def _crop_paths(case: Path, pass_name: str, n: int) -> list[Path]:
    """The case's own crops, else those of a case with the same image and crop transform
    (README: crops identical to another case are not stored twice)."""
    names = [f"{pass_name}_crop_u8_p{i}.png" for i in range(n)]
    if all((case / name).exists() for name in names):
        return [case / name for name in names]
    info = _case_json(case)
    image = (case / info["image"]).resolve()
    with np.load(case / "intermediates.npz") as z:
        affine = z[f"{pass_name}.affine_trans"]
    for other in _case_dirs():
        if other == case or not all((other / name).exists() for name in names):
            continue
        if (other / _case_json(other)["image"]).resolve() != image:
            continue
        with np.load(other / "intermediates.npz") as z:
            key = f"{pass_name}.affine_trans"
            if key in z.files and z[key].shape == affine.shape and np.array_equal(z[key], affine):
                return [other / name for name in names]
    raise FileNotFoundError(f"no stored {pass_name} crop for case {case.name}")


def _normalised_crops(paths: list[Path], columns: slice, mean: list, std: list) -> torch.Tensor:
    """The official backbone input: ((u8 / 255) - mean) / std in float32, NCHW."""
    mean_ = np.asarray(mean, dtype=np.float32)
    std_ = np.asarray(std, dtype=np.float32)
    crops = []
    for path in paths:
        u8 = np.asarray(Image.open(path).convert("RGB"))
        assert u8.shape == (512, 512, 3), f"{path}: crop shape {u8.shape}"
        crops.append(((u8.astype(np.float32) / np.float32(255.0)) - mean_) / std_)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return x[..., columns].contiguous()


def _load_backbone(checkpoint_dir: Path, apply_precision: bool = True) -> tuple[torch.nn.Module, dict]:
    cfg = yaml.safe_load((checkpoint_dir / "model_config.yaml").read_text())
    model = build_backbone(cfg["MODEL"]["BACKBONE"]).eval()
    if apply_precision:
        set_official_precision(model, backbone_dtype(cfg["TRAIN"]))
    state = torch.load(checkpoint_dir / "model.ckpt", map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    prefix = "backbone."
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return model, cfg


def _run_case(case_name: str, pass_name: str, apply_precision: bool = True):
    case = PARITY / "cases" / case_name
    info = _case_json(case)
    with np.load(case / "intermediates.npz") as z:
        expected = z[f"{pass_name}.backbone"]
    model, cfg = _load_backbone((case / info["checkpoint"]).resolve(), apply_precision)
    paths = _crop_paths(case, pass_name, expected.shape[0])
    x = _normalised_crops(paths, model.input_columns, cfg["MODEL"]["IMAGE_MEAN"], cfg["MODEL"]["IMAGE_STD"])
    with torch.no_grad():
        got = model(x)
    return got, expected, cfg, info


def _tolerance(info: dict, cfg: dict, pass_name: str, scale: float) -> float:
    run_to_run = info["run_to_run_max_abs_diff_threads_2_vs_1"]["intermediates"]
    # Hand-pass run-to-run differences come from different crops (uint8 rounding flips in the
    # official rerun); we feed the stored crop, so only backbone noise on the same crop counts.
    same_crop = run_to_run.get(f"{pass_name}.crop_u8", 0.0) == 0.0
    noise = run_to_run.get(f"{pass_name}.backbone", 0.0) if same_crop else 0.0
    floor = FP32_REL_TOL if backbone_dtype(cfg["TRAIN"]) == torch.float32 else FP16_REL_TOL
    return max(10.0 * noise, floor * scale)


@pytest.mark.parametrize(("case_name", "pass_name"), _backbone_entries() if PARITY.exists() else [])
def test_backbone_matches_official(parity_dir, case_name: str, pass_name: str) -> None:
    got, expected, cfg, info = _run_case(case_name, pass_name)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == expected.shape
    scale = float(np.sqrt(np.mean(expected.astype(np.float64) ** 2)))
    err = float(np.abs(got.numpy() - expected).max())
    tol = _tolerance(info, cfg, pass_name, scale)
    print(f"{case_name} {pass_name}.backbone {tuple(expected.shape)}: max|err| {err:.3g} "
          f"(feature RMS {scale:.3g}, tol {tol:.3g})")
    assert err <= tol, f"{case_name} {pass_name}.backbone: max |err| {err:.3g} > {tol:.3g}"


def test_every_backbone_type_is_covered(parity_dir) -> None:
    """The parity set exercises both backbone families and the fp16 precision path."""
    entries = _backbone_entries()
    checkpoints = {Path(_case_json(PARITY / "cases" / c)["checkpoint"]).name for c, _ in entries}
    assert {"dinov3_tiny", "dinov3_tiny_fp16", "vith_tiny"} <= checkpoints
    assert {p for _, p in entries} >= {"body", "lhand", "rhand"}


def test_fp16_case_needs_fp16_activations(parity_dir) -> None:
    """Case 09 must fail when the official fp16 conversion is skipped (fp16-rounded weights run
    with fp32 activations), so the fp16 tolerance really checks the precision semantics."""
    got, expected, cfg, info = _run_case("09_dinov3_fp16_full_1p", "body", apply_precision=False)
    scale = float(np.sqrt(np.mean(expected.astype(np.float64) ** 2)))
    err = float(np.abs(got.numpy() - expected).max())
    print(f"09 body.backbone with fp32 activations: max|err| {err:.3g}")
    assert err > _tolerance(info, cfg, "body", scale)
