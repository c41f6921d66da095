"""Checkpoint discovery, safe loading, strict key checks and the user-facing messages."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from server import checkpoint as ck
import torch

from server.config import load_config, parse_config
from server.models.backbones import backbone_dtype
from server.errors import ServerError


class Payload:
    """A hostile pickle: unpickling it unsafely would call os.system."""

    def __reduce__(self):
        return (os.system, ("true",))


class CfgNodeLike(dict):
    """Like yacs' CfgNode in Lightning's hyper_parameters: harmless but not a tensor type."""

    built = 0

    def __setstate__(self, state):
        CfgNodeLike.built += 1


def _tiny_dir(parity_dir: Path, tmp_path: Path) -> Path:
    src = parity_dir / "checkpoints" / "dinov3_tiny"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_locate_official_directory(parity_dir: Path) -> None:
    files = ck.locate_directory(parity_dir / "checkpoints" / "dinov3_tiny")
    assert files.checkpoint.name == "model.ckpt"
    assert files.config.name == "model_config.yaml"
    assert files.mhr.name == "mhr_model.pt"
    # the path of model.ckpt itself works too, like the official loader
    assert ck.locate_directory(files.checkpoint).config == files.config


def test_missing_pieces_have_actionable_messages(tmp_path: Path, parity_dir: Path) -> None:
    with pytest.raises(ServerError, match="does not exist") as e:
        ck.locate_directory(tmp_path / "nope")
    assert e.value.code == "checkpoint_missing"
    d = _tiny_dir(parity_dir, tmp_path)
    (d / "assets" / "mhr_model.pt").unlink()
    with pytest.raises(ServerError, match="--mhr"):
        ck.locate_directory(d)
    (d / "model_config.yaml").unlink()
    with pytest.raises(ServerError, match="model_config.yaml"):
        ck.locate_directory(d)


def test_load_state_dict_is_safe_and_complete(parity_dir: Path) -> None:
    files = ck.locate_directory(parity_dir / "checkpoints" / "dinov3_tiny")
    sd = ck.load_state_dict(files.checkpoint)
    ref = torch.load(files.checkpoint, weights_only=True)["state_dict"]
    assert sd.keys() == ref.keys()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_lightning_extras_load_without_running_code(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    node = CfgNodeLike(MODEL={"X": 1})
    node.__dict__["frozen"] = True
    torch.save({"state_dict": {"a.weight": torch.ones(2)}, "hyper_parameters": {"cfg": node}}, path)
    sd = ck.load_state_dict(path)
    assert list(sd) == ["a.weight"]
    assert CfgNodeLike.built == 0  # an inert placeholder took its place


def test_hostile_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "evil": Payload()}, path)
    with pytest.raises(ServerError, match="without running code") as e:
        ck.load_state_dict(path)
    assert e.value.code == "checkpoint_invalid"


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"this is not a zip")
    with pytest.raises(ServerError) as e:
        ck.load_state_dict(path)
    assert e.value.code == "checkpoint_invalid"


def test_check_state_dict_lists_problems() -> None:
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "head_pose.mhr.x": torch.zeros(1)}
    ck.check_state_dict(expected, {"a": torch.zeros(2, 3), "b": torch.zeros(4)})
    with pytest.raises(ServerError, match=r"missing keys \(1\): b"):
        ck.check_state_dict(expected, {"a": torch.zeros(2, 3)})
    with pytest.raises(ServerError, match=r"wrong shapes.*a \(3, 2\) != \(2, 3\)"):
        ck.check_state_dict(expected, {"a": torch.zeros(3, 2), "b": torch.zeros(4)})
    with pytest.raises(ServerError, match=r"unexpected keys \(1\): c"):
        ck.check_state_dict(expected, {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)})


def test_offline_hub_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ServerError) as e:
        ck.download("facebook/sam-3d-body-dinov3", cache_dir=str(tmp_path))
    assert e.value.code == "offline"
    assert "--checkpoint" in e.value.message


def test_gated_and_denied_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    class FakeResponse:
        status_code = 403
        headers: dict = {}
        url = "https://huggingface.co/api"
        request = None

    def raiser(exc):
        def snapshot_download(*a, **k):
            raise exc
        return snapshot_download

    for exc, needle in (
        (hf_errors.GatedRepoError("gated", response=FakeResponse()), "accept the SAM License"),
        (hf_errors.RepositoryNotFoundError("nf", response=FakeResponse()), "not found or needs a login"),
        (hf_errors.HfHubHTTPError("denied", response=FakeResponse()), "HTTP 403"),
    ):
        monkeypatch.setattr(huggingface_hub, "snapshot_download", raiser(exc))
        with pytest.raises(ServerError, match=needle) as e:
            ck.download("facebook/sam-3d-body-dinov3")
        assert e.value.code == "access_denied"


def test_config_parsing(parity_dir: Path) -> None:
    cfg = load_config(parity_dir / "checkpoints" / "dinov3_tiny" / "model_config.yaml")
    assert cfg["MODEL"]["BACKBONE"]["TYPE"] == "dinov3_custom"
    assert backbone_dtype(cfg["TRAIN"]) == torch.float32
    fp16 = load_config(parity_dir / "checkpoints" / "dinov3_tiny_fp16" / "model_config.yaml")
    assert backbone_dtype(fp16["TRAIN"]) == torch.float16
    with pytest.raises(ServerError, match="not supported") as e:
        parse_config("MODEL:\n  BACKBONE:\n    TYPE: resnet50\n")
    assert e.value.code == "unsupported_model"
    with pytest.raises(ServerError, match="no MODEL section"):
        parse_config("- 1\n- 2\n")
    with pytest.raises(ServerError, match="not valid YAML"):
        parse_config("MODEL: [unclosed\n")
