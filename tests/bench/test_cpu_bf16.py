"""`fast` on the CPU: bf16 autocast of the backbone where the CPU has native bf16, fp32 elsewhere;
the path is said in the engine info and the bench; the deviation stays within the documented
bound on the fixtures (docs/PRECISION.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server import cpu_features
from server.engine import ReconstructRequest, load_engine
from server.precision import fast_autocast_dtype
from tests.pipeline import parity_cases as pc

# Measured on the fixtures (bf16 emulated on an AVX2 CPU): 0.061 mm (DINOv3), 0.050 mm (ViT-H)
# max vertex deviation from fp32; 0.014-0.016 px in 2D.
FIXTURE_BF16_VERTEX_MM = 0.25
FIXTURE_BF16_KP2D_PX = 0.1


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_(value: str | None, flags: set[str] | None = None) -> None:
        if value is None:
            monkeypatch.delenv(cpu_features.OVERRIDE_ENV, raising=False)
        else:
            monkeypatch.setenv(cpu_features.OVERRIDE_ENV, value)
        if flags is not None:
            monkeypatch.setattr(cpu_features.platform, "system", lambda: "Linux")
            monkeypatch.setattr(cpu_features, "_linux_flags", lambda: flags)
        cpu_features.native_bf16.cache_clear()

    yield set_
    cpu_features.native_bf16.cache_clear()


@pytest.mark.parametrize(("flags", "present", "why"), [
    ({"avx2", "amx_bf16", "avx512_bf16"}, True, "amx_bf16"),
    ({"avx512f", "avx512_bf16"}, True, "avx512_bf16"),
    ({"avx2", "fma"}, False, "no amx_bf16/avx512_bf16"),
])
def test_detection_from_cpu_flags(cpu_bf16, flags, present, why) -> None:
    cpu_bf16(None, flags)
    got, reason = cpu_features.native_bf16()
    assert got is present and reason.startswith(why)
    assert fast_autocast_dtype("cpu") == (torch.bfloat16 if present else None)
    assert fast_autocast_dtype("cuda") == torch.float16  # CUDA is unchanged


def test_override(cpu_bf16) -> None:
    cpu_bf16("1", set())
    assert cpu_features.native_bf16() == (True, "SAM3D_CPU_BF16=1")
    cpu_bf16("0", {"amx_bf16"})
    assert cpu_features.native_bf16() == (False, "SAM3D_CPU_BF16=0")


@pytest.mark.parametrize("name, case", [("dinov3_tiny", "02_dinov3_full_1p_hands_valid"),
                                        ("vith_tiny", "08b_vith_full_1p")])
def test_fast_path_choice_and_deviation(cpu_bf16, parity_dir: Path, tmp_path: Path, name: str, case: str) -> None:
    image, boxes = pc.image(case), pc.inputs(case)["boxes"]
    out, info = {}, {}
    for flag in ("0", "1"):
        cpu_bf16(flag)
        engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / name), device="cpu",
                             cache_dir=str(tmp_path / "cache"), precision="fast")
        info[flag] = dict(engine.info)
        out[flag] = engine.reconstruct(ReconstructRequest(image=image, boxes=boxes, mode="full"))
    assert info["0"]["dtype"] == "float32" and info["0"]["cpu_bf16"].startswith("fp32")
    assert info["1"]["dtype"] == "autocast bfloat16" and info["1"]["cpu_bf16"].startswith("native bf16")
    assert info["1"]["mhr_backend"] == "torchscript"  # MHR and the pose maths stay fp32
    dv = float(np.abs(out["0"]["pred_vertices"] - out["1"]["pred_vertices"]).max()) * 1000
    dk = float(np.abs(out["0"]["pred_keypoints_2d"] - out["1"]["pred_keypoints_2d"]).max())
    print(f"{name}: bf16 vs fp32 vertices {dv:.3f} mm, 2D {dk:.3f} px")
    assert 0 < dv <= FIXTURE_BF16_VERTEX_MM and dk <= FIXTURE_BF16_KP2D_PX


def test_official_and_fp32_are_unchanged_by_native_bf16(cpu_bf16, parity_dir: Path, tmp_path: Path) -> None:
    cpu_bf16("1")
    for precision, dtype in (("official", "float16"), ("fp32", "float32")):
        engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                             cache_dir=str(tmp_path / "cache"), precision=precision)
        assert engine.info["dtype"] == dtype


@pytest.mark.parametrize("name, case", [("dinov3_tiny", "02_dinov3_full_1p_hands_valid"),
                                        ("vith_tiny", "08b_vith_full_1p")])
def test_fast_on_a_bf16_cpu_stores_the_linear_weights_in_bf16_with_the_same_results(
        cpu_bf16, parity_dir: Path, tmp_path: Path, name: str, case: str) -> None:
    """Autocast casts each fp32 weight to bf16 on every call; storing them cast once gives the
    same bits with half the weight memory, from the checkpoint and from the prepared cache."""
    from server.precision import apply_precision, backbone_linear_weight_keys

    request = ReconstructRequest(image=pc.image(case), boxes=pc.inputs(case)["boxes"], mode="full")
    folder, cache = str(parity_dir / "checkpoints" / name), str(tmp_path / "cache")
    cpu_bf16("1")
    reference = load_engine(checkpoint=folder, device="cpu", cache_dir=cache, precision="fp32")
    apply_precision(reference.model, "fast", "cpu", fast_dtype=torch.bfloat16)  # autocast over fp32
    want = reference.reconstruct(request)
    for origin in ("checkpoint", "cache"):
        engine = load_engine(checkpoint=folder, device="cpu", cache_dir=cache, precision="fast")
        assert engine.info["weights_from"] == origin and engine.info["dtype"] == "autocast bfloat16"
        state = engine.model.state_dict()
        keys = backbone_linear_weight_keys(engine.model)
        assert keys and all(state[k].dtype == torch.bfloat16 for k in keys)
        assert all(v.dtype != torch.bfloat16 for k, v in state.items() if k not in keys)
        got = engine.reconstruct(request)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, got[key]), (origin, key)
    assert len(list((tmp_path / "cache").glob("prepared-*linear-bfloat16*"))) == 1
    for other in ("fp32", "official"):
        with pytest.raises(ValueError, match="load the engine again"):
            apply_precision(engine.model, other, "cpu")
    assert engine.reconstruct(request)["pred_vertices"].tobytes() == want["pred_vertices"].tobytes()
