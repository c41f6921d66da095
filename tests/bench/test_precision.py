"""Precision modes (server/precision.py) on the parity fixtures.

* the documented dtypes per mode;
* `fp32` is bit-identical to the model as built from an fp32 checkpoint (the old default);
* `official` reproduces fixture case 09 (official USE_FP16 run) both from the fp16 checkpoint and
  from the fp32 checkpoint of the same weights (the mode ignores the config file), and its
  backbone features are the fp16 ones (the final outputs of the tiny model cannot tell fp16 from
  fp32 activations, the backbone features can: README of the fixtures).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from server.engine import ReconstructRequest, load_engine
from server.errors import ServerError
from server.pipeline.estimator import process_one_image
from server.precision import apply_precision, describe_precision, fast_autocast_dtype
from tests import tolerances as tol
from tests.pipeline import parity_cases as pc

CASE09 = "09_dinov3_fp16_full_1p"
BOX = np.array([[20, 10, 370, 512]], np.float32)
OUTPUT_KEYS = ("pred_vertices", "pred_keypoints_3d", "pred_keypoints_2d", "pred_cam_t", "mhr_model_params",
               "body_pose_params", "hand_pose_params", "pred_joint_coords")


def _engine(parity_dir: Path, name: str, precision: str | None, cache: Path):
    return load_engine(checkpoint=str(parity_dir / "checkpoints" / name), device="cpu", cache_dir=str(cache),
                       precision=precision)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _backbone_features(model, image: np.ndarray) -> np.ndarray:
    model.capture = {}
    try:
        process_one_image(model, image, boxes=BOX, inference_type="body")
        return model.capture["backbone"].numpy()
    finally:
        model.capture = None


@pytest.mark.parametrize("name", ["dinov3_tiny", "dinov3_tiny_fp16", "vith_tiny"])
def test_documented_dtypes(parity_dir: Path, cache: Path, name: str) -> None:
    engine = _engine(parity_dir, name, "official", cache)
    assert engine.info["precision"] == "official" and engine.info["dtype"] == "float16"
    model = engine.model
    for precision, backbone in (("official", "float16"), ("fp32", "float32"), ("fast", "float32"), ("official", "float16")):
        assert apply_precision(model, precision, "cpu") == {
            "precision": precision, "backbone": backbone, "decoder": "float32", "mhr": "float32"}
        floats = {p.dtype for n, p in model.named_parameters() if not n.startswith("backbone.") and p.is_floating_point()}
        assert floats == {torch.float32}, "decoder, heads and MHR stay fp32"
        if precision == "official" and name.startswith("vith"):
            # Official ViT conversion: Linear/Conv weights and pos_embed fp16, LayerNorm fp32.
            assert model.backbone.blocks[0].attn.qkv.weight.dtype == torch.float16
            assert model.backbone.pos_embed.dtype == torch.float16
            assert model.backbone.blocks[0].norm1.weight.dtype == torch.float32
        elif precision == "official":
            assert {p.dtype for p in model.backbone.parameters()} == {torch.float16}
        else:
            assert {p.dtype for p in model.backbone.parameters()} == {torch.float32}


def test_default_precision_is_fast_and_fp32_on_cpu(parity_dir: Path, cache: Path) -> None:
    engine = _engine(parity_dir, "dinov3_tiny_fp16", None, cache)
    assert engine.info["precision"] == "fast" and engine.info["dtype"] == "float32"
    assert describe_precision(engine.model, "fast")["backbone"] == "float32"


def test_fast_autocast_dtype_is_reported_and_reversible(parity_dir: Path, cache: Path) -> None:
    engine = _engine(parity_dir, "dinov3_tiny", "fp32", cache)
    model = engine.model
    dtypes = apply_precision(model, "fast", "cpu", fast_dtype=torch.bfloat16)
    # On the CPU the backbone alone (docs/PRECISION.md); on CUDA the decoder layers too.
    assert dtypes["backbone"] == "autocast bfloat16" and dtypes["decoder"] == dtypes["mhr"] == "float32"
    assert apply_precision(model, "fp32", "cpu")["backbone"] == "float32"
    assert "forward" not in vars(model.backbone), "fp32 removes the autocast wrapper"
    # `fast` autocasts in fp16 on CUDA; on this suite's CPU path (SAM3D_CPU_BF16=0, conftest) and
    # MPS it is plain fp32 (the native-bf16 CPU path: test_cpu_bf16.py).
    assert fast_autocast_dtype("cuda") is torch.float16
    assert fast_autocast_dtype("cpu") is None and fast_autocast_dtype("mps") is None
    on_cuda = apply_precision(model, "fast", "cuda")
    assert on_cuda["backbone"] == on_cuda["decoder"] == "autocast float16"
    apply_precision(model, "fp32", "cpu")


def test_fast_vith_uses_fused_attention_only_when_autocasting(parity_dir: Path, cache: Path) -> None:
    from server.models.backbones.vit import Attention

    engine = _engine(parity_dir, "vith_tiny", "fp32", cache)
    model = engine.model
    attention = [m for m in model.backbone.modules() if isinstance(m, Attention)]
    assert attention and not any(m.sdpa for m in attention)
    image = pc.image(CASE09)
    ref = engine.reconstruct(ReconstructRequest(image=image, boxes=BOX, mode="body"))
    apply_precision(model, "fast", "cpu", fast_dtype=torch.bfloat16)
    assert all(m.sdpa for m in attention)
    apply_precision(model, "fast", "cpu")  # CPU without native bf16: plain fp32, official attention
    assert not any(m.sdpa for m in attention)
    # Fused and written-out attention agree to fp32 rounding on the same inputs.
    x = torch.randn(2, 50, attention[0].qkv.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = attention[0](x)
        attention[0].sdpa = True
        fused = attention[0](x)
        attention[0].sdpa = False
    assert float((plain - fused).abs().max()) < 1e-5 * float(plain.abs().max())
    apply_precision(model, "fp32", "cpu")
    again = engine.reconstruct(ReconstructRequest(image=image, boxes=BOX, mode="body"))
    np.testing.assert_array_equal(again["pred_vertices"], ref["pred_vertices"])


def test_fp32_is_bit_identical_to_the_plain_model(parity_dir: Path, cache: Path) -> None:
    image = pc.image(CASE09)
    engine = _engine(parity_dir, "dinov3_tiny", "fp32", cache)
    res = engine.reconstruct(ReconstructRequest(image=image, boxes=BOX, mode="full"))
    plain = process_one_image(pc.model_for("02_dinov3_full_1p_hands_valid"), image, boxes=BOX, inference_type="full")
    for key in OUTPUT_KEYS:
        np.testing.assert_array_equal(res[key], plain[key], err_msg=key)


@pytest.mark.parametrize("name", ["dinov3_tiny_fp16", "dinov3_tiny"])
def test_official_mode_reproduces_case_09(parity_dir: Path, cache: Path, name: str) -> None:
    pc.require_parity()
    image = pc.image(CASE09)
    engine = _engine(parity_dir, name, "official", cache)
    res = engine.reconstruct(ReconstructRequest(image=image, boxes=pc.inputs(CASE09)["boxes"], mode="full"))
    ref = pc.outputs(CASE09)
    r2r = pc.case_json(CASE09)["run_to_run_max_abs_diff_threads_2_vs_1"]["outputs"]
    for key in OUTPUT_KEYS:
        tol.check_key(f"official from {name}", key, res[key], ref[key], run_to_run=r2r.get(key, 0.0), fp16=True)
    want = pc.intermediates(CASE09)["body.backbone"]
    got = _backbone_features(engine.model, image)
    tol.check_fp16(f"official from {name} body.backbone", got, want)
    # fp32 activations land much further from the official fp16 features: the mode really runs
    # the fp16 semantics (test_backbone_parity.test_fp16_case_needs_fp16_activations).
    apply_precision(engine.model, "fp32", "cpu")
    wrong = _backbone_features(engine.model, image)
    assert tol.mean_rel(wrong, want) > tol.FP16_SEMANTICS_FACTOR * tol.mean_rel(got, want)


def test_unknown_precision_is_a_clear_error(parity_dir: Path, cache: Path) -> None:
    with pytest.raises(ServerError) as err:
        _engine(parity_dir, "dinov3_tiny", "half", cache)
    assert "precision must be one of" in err.value.message


def test_fast_autocast_on_the_cpu_covers_the_backbone_only(parity_dir: Path, cache: Path) -> None:
    """Heads, rotation maths and MHR never run under autocast; on the CPU neither do the decoder
    layers (CUDA autocasts them too: test_fast_autocast_dtype_is_reported_and_reversible)."""
    engine = _engine(parity_dir, "dinov3_tiny", "fp32", cache)
    model = engine.model
    seen: dict[str, set] = {"backbone_block": set(), "decoder_attn": set(), "head_pose": set(), "head_camera": set()}

    def spy(name: str):
        return lambda module, args: seen[name].add(torch.is_autocast_enabled("cpu"))

    hooks = [model.backbone.encoder.blocks[0].register_forward_pre_hook(spy("backbone_block")),
             model.decoder.layers[0].cross_attn.register_forward_pre_hook(spy("decoder_attn")),
             model.head_pose.register_forward_pre_hook(spy("head_pose")),
             model.head_pose_hand.register_forward_pre_hook(spy("head_pose")),
             model.head_camera.register_forward_pre_hook(spy("head_camera"))]
    try:
        apply_precision(model, "fast", "cpu", fast_dtype=torch.bfloat16)
        res = engine.reconstruct(ReconstructRequest(image=pc.image(CASE09), boxes=BOX, mode="full"))
    finally:
        for h in hooks:
            h.remove()
        apply_precision(model, "fp32", "cpu")
    assert seen == {"backbone_block": {True}, "decoder_attn": {False}, "head_pose": {False}, "head_camera": {False}}
    assert res["pred_vertices"].dtype == np.float32 and np.isfinite(res["pred_vertices"]).all()


@pytest.mark.parametrize("precision", ["official", "fp32"])
@pytest.mark.parametrize("name", ["dinov3_tiny_fp16", "vith_tiny"])
def test_fast_load_gives_the_official_build_weights(parity_dir: Path, tmp_path: Path, name: str,
                                                    precision: str) -> None:
    """load_engine builds in fp32 without random init, streams the safetensors cache and rounds
    in place as TRAIN.USE_FP16 would: every weight equals the official order (build, convert
    to fp16, load, then the mode's conversion), bit for bit, from the checkpoint and the cache."""
    import yaml

    from server.models.build import build_sam3d_body, load_official_state_dict

    folder = parity_dir / "checkpoints" / name
    cfg = yaml.safe_load((folder / "model_config.yaml").read_text())
    if name == "vith_tiny":  # the fp16 rounding of the ViT's Linear/Conv weights only
        cfg.setdefault("TRAIN", {}).update(USE_FP16=True, FP16_TYPE="float16")
        shutil.copytree(folder, tmp_path / name)
        folder = tmp_path / name
        (folder / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    reference = build_sam3d_body(cfg, str(folder / "assets" / "mhr_model.pt"))
    assert reference.backbone_dtype == torch.float16
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)
    load_official_state_dict(reference, state.get("state_dict", state))
    apply_precision(reference, precision, "cpu")
    want = reference.state_dict()
    outputs = []
    for attempt in ("checkpoint", "cache"):
        engine = load_engine(checkpoint=str(folder), device="cpu", cache_dir=str(tmp_path / "cache"),
                             precision=precision, detector=None)
        assert engine.info["weights_from"] == attempt
        got = engine.model.state_dict()
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype, (attempt, key)
            assert torch.equal(got[key], value), (attempt, key)
        assert list((tmp_path / "cache").glob("prepared-*.safetensors"))
        outputs.append(engine.reconstruct(ReconstructRequest(image=pc.image(CASE09), boxes=BOX, mode="full")))
    # The mapped weights are 64-byte aligned like fresh memory, so the kernels take the same
    # paths: the outputs of a warm start equal a cold start's bit for bit.
    for key, value in outputs[0].items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, outputs[1][key]), key
