"""state_dict keys/shapes/dtypes of SAM3DBody against the official checkpoints and manifests, and
the config validation of ``build_sam3d_body``."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from tests.conftest import PARITY, STANDIN, require
from tests.engine.model_parity_helpers import checkpoint_state

CHECKPOINTS = ["dinov3_tiny", "dinov3_tiny_fp16", "vith_tiny"]
MANIFESTS = ["sam-3d-body-dinov3", "sam-3d-body-vith"]
MHR_PREFIXES = ("head_pose.mhr.", "head_pose_hand.mhr.")


def _tiny(name: str):
    from server.models.build import build_sam3d_body

    ckpt = require(PARITY / "checkpoints" / name)
    cfg = yaml.safe_load((ckpt / "model_config.yaml").read_text())
    return cfg, ckpt, build_sam3d_body(cfg, str(ckpt / "assets" / "mhr_model.pt"))


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_tiny_checkpoint_keys_shapes_dtypes(name):
    from server.models.build import load_official_state_dict

    _, ckpt, model = _tiny(name)
    sd = checkpoint_state(ckpt)
    own = model.state_dict()
    ours = {k for k in own if not k.startswith(MHR_PREFIXES)}
    assert ours == set(sd), f"extra: {sorted(ours - set(sd))[:5]} missing: {sorted(set(sd) - ours)[:5]}"
    assert "image_mean" not in own and "image_std" not in own
    assert any(k.startswith("head_pose.mhr.") for k in own) and any(k.startswith("head_pose_hand.mhr.") for k in own)
    missing = load_official_state_dict(model, sd)
    assert missing == []
    loaded = model.state_dict()
    for key, value in sd.items():
        assert loaded[key].shape == value.shape, key
        assert loaded[key].dtype == value.dtype, f"{key}: {loaded[key].dtype} != {value.dtype}"
        assert torch.equal(loaded[key], value), key
    # The stored (non-identity) hand PCA must win over the identity set at construction.
    assert not torch.equal(model.head_pose.hand_pose_comps, torch.eye(54))


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_full_size_keys_match_manifest(manifest):
    """Build the released architectures on the meta device (no memory) with the LOD1 stand-in,
    whose MHR buffer names follow the real mhr_model.pt."""
    from server.models.build import build_sam3d_body

    data = json.loads(require(PARITY / "manifests" / f"{manifest}.state_dict.json").read_text())
    cfg = copy.deepcopy(data["config"])
    with torch.device("meta"):
        model = build_sam3d_body(cfg, str(require(STANDIN / "mhr_standin_lod1.pt")))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(MHR_PREFIXES)}
    want = {e["key"]: e for e in data["keys"]}
    assert set(own) == set(want), f"extra: {sorted(set(own) - set(want))[:5]} missing: {sorted(set(want) - set(own))[:5]}"
    wrong = [
        (k, tuple(v.shape), str(v.dtype).replace("torch.", ""), want[k]["shape"], want[k]["dtype"])
        for k, v in own.items()
        if list(v.shape) != want[k]["shape"] or str(v.dtype).replace("torch.", "") != want[k]["dtype"]
    ]
    assert not wrong, wrong[:5]
    expected_np = {entry.split()[0] for entry in data["non_persistent_buffers_not_in_checkpoint"]}
    buffers = dict(model.named_buffers())
    assert expected_np == {"image_mean", "image_std"} and all(b in buffers and b not in own for b in expected_np)
    mhr = {k for k in model.state_dict() if k.startswith("head_pose.mhr.")}
    assert mhr == {e["key"] for e in data["mhr_keys_from_mhr_model_pt"] if e["key"].startswith("head_pose.mhr.")}


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("MODEL", "DECODER", "TYPE"), "transformer", "DECODER.TYPE"),
        (("MODEL", "DECODER", "ENABLE_TWOWAY"), True, "ENABLE_TWOWAY"),
        (("MODEL", "DECODER", "LAYER_SCALE_INIT"), 0.1, "LAYER_SCALE_INIT"),
        (("MODEL", "DECODER", "DEPTH"), 0, "DEPTH"),
        (("MODEL", "PROMPT_ENCODER", "MASK_EMBED_TYPE"), "v3", "MASK_EMBED_TYPE"),
        (("MODEL", "IMAGE_SIZE"), [512, 384], "IMAGE_SIZE"),
        (("MODEL", "PERSON_HEAD", "CAMERA_TYPE"), "weak", "CAMERA_TYPE"),
    ],
)
def test_bad_config_is_rejected(path, value, message):
    from server.models.build import validate_config

    cfg = yaml.safe_load((require(PARITY / "checkpoints" / "dinov3_tiny") / "model_config.yaml").read_text())
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        validate_config(cfg)


def test_missing_mhr_path_is_a_clear_error():
    from server.models.build import build_sam3d_body

    cfg = yaml.safe_load((require(PARITY / "checkpoints" / "dinov3_tiny") / "model_config.yaml").read_text())
    with pytest.raises(ValueError, match="mhr"):
        build_sam3d_body(cfg, None)


def test_checkpoint_shape_mismatch_is_reported():
    from server.models.build import load_official_state_dict

    _, ckpt, model = _tiny("dinov3_tiny")
    sd = dict(checkpoint_state(ckpt))
    sd["init_pose.weight"] = torch.zeros(1, 7)
    with pytest.raises(ValueError, match="init_pose.weight"):
        load_official_state_dict(model, sd)
    sd = dict(checkpoint_state(ckpt))
    sd["not_a_key"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not_a_key"):
        load_official_state_dict(model, sd)
