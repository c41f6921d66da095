"""The prepared-weights cache: aligned safetensors, adopted on a warm load, rebuilt when stale."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from server import weight_cache as wc
from server.errors import ServerError

LAYOUT = {"round": "float16"}


class Tiny(nn.Module):
    """Odd sizes (so that unaligned offsets would occur), a buffer, a module under two names
    and a `head_pose.mhr.` key that the checkpoint does not carry."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 7, bias=False)
        self.alias = self.b
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.head_pose = nn.Module()
        self.head_pose.mhr = nn.Module()
        self.head_pose.mhr.register_buffer("rig", torch.ones(4))


def _checkpoint(tmp_path: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    source = Tiny()
    state = {k: v.clone() for k, v in source.state_dict().items() if not wc.MHR_KEY.match(k)}
    state["count"] = torch.tensor(7)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, path)
    return path, state


def _halve(model: nn.Module) -> None:
    """A stand-in for the rounding: visible in the values, so a skipped or doubled run shows."""
    with torch.no_grad():
        model.a.weight.mul_(0.5)


def _empty() -> Tiny:
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


def test_write_aligns_every_tensor_and_stays_plain_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = {
        "f32": torch.arange(7, dtype=torch.float32), "f16": torch.arange(3, dtype=torch.float16),
        "bf16": torch.arange(5, dtype=torch.bfloat16).reshape(5, 1), "i64": torch.tensor(3),
        "flag": torch.tensor([True, False, True]), "none": torch.empty(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
    }
    path = tmp_path / "c.safetensors"
    wc.write(path, tensors, {"format": "x"})
    got, meta = wc.read(path)
    assert meta == {"format": "x"}
    assert sorted(got) == sorted(tensors)
    for key, value in tensors.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        assert got[key].numel() == 0 or got[key].data_ptr() % wc.ALIGN == 0, key
    plain = load_file(str(path))  # any safetensors reader opens it (the pads are extra keys)
    assert all(torch.equal(plain[k], v) for k, v in tensors.items())
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="reserved"):
        wc.write(path, {wc.PAD_PREFIX + "0": torch.ones(1)}, {})


def test_cold_then_warm_load_gives_the_same_weights_without_preparing_twice(tmp_path: Path) -> None:
    ckpt, state = _checkpoint(tmp_path)
    calls = []

    def prepare(model: nn.Module) -> None:
        calls.append(1)
        _halve(model)

    cold = _empty()
    assert wc.load_weights(cold, ckpt, tmp_path / "cache", LAYOUT, prepare) == "checkpoint"
    files = list((tmp_path / "cache").glob("prepared-*.safetensors"))
    assert len(files) == 1 and "round-float16" in files[0].name
    warm = _empty()
    assert wc.load_weights(warm, ckpt, tmp_path / "cache", LAYOUT, prepare) == "cache"
    assert len(calls) == 1  # the cache holds the prepared weights: no second rounding
    assert torch.equal(cold.a.weight, state["a.weight"] * 0.5)
    for key, value in cold.state_dict().items():
        assert torch.equal(warm.state_dict()[key], value), key
    assert warm.count.item() == 7 and isinstance(warm.a.weight, nn.Parameter)
    assert warm.alias is warm.b and torch.equal(warm.alias.weight, state["b.weight"])
    assert torch.equal(warm.head_pose.mhr.rig, torch.ones(4))  # MHR keys are not cached
    warm.a.weight.data.add_(1)  # the mapping is private: writing does not touch the file
    again = _empty()
    wc.load_weights(again, ckpt, tmp_path / "cache", LAYOUT, prepare)
    assert torch.equal(again.a.weight, cold.a.weight)


def test_no_cache_dir_loads_from_the_checkpoint_every_time(tmp_path: Path) -> None:
    ckpt, state = _checkpoint(tmp_path)
    for _ in range(2):
        model = _empty()
        assert wc.load_weights(model, ckpt, None, LAYOUT, _halve) == "checkpoint"
        assert torch.equal(model.b.weight, state["b.weight"])
    assert not list(tmp_path.glob("**/*.safetensors"))


def test_a_layout_never_adopts_another_layouts_weights(tmp_path: Path) -> None:
    ckpt, state = _checkpoint(tmp_path)
    wc.load_weights(_empty(), ckpt, tmp_path / "cache", LAYOUT, _halve)
    plain = _empty()
    assert wc.load_weights(plain, ckpt, tmp_path / "cache", {"round": "float32"}, lambda m: None) == "checkpoint"
    assert torch.equal(plain.a.weight, state["a.weight"])
    assert len(list((tmp_path / "cache").glob("prepared-*"))) == 2  # both layouts stay usable


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other layout", "other dtype", "missing key"])
def test_a_broken_or_stale_cache_is_rebuilt_with_a_warning(tmp_path: Path, damage: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    ckpt, state = _checkpoint(tmp_path)
    wc.load_weights(_empty(), ckpt, tmp_path / "cache", LAYOUT, _halve)
    (path,) = (tmp_path / "cache").glob("prepared-*")
    tensors, meta = wc.read(path)
    tensors = {k: v.clone() for k, v in tensors.items()}
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "other layout":
        wc.write(path, tensors, {**meta, "layout": json.dumps({"round": "bfloat16"})})
    elif damage == "other dtype":
        wc.write(path, {**tensors, "a.weight": tensors["a.weight"].double()}, meta)
    else:
        wc.write(path, {k: v for k, v in tensors.items() if k != "a.bias"}, meta)
    model = _empty()
    with caplog.at_level(logging.WARNING, logger="server.weight_cache"):
        assert wc.load_weights(model, ckpt, tmp_path / "cache", LAYOUT, _halve) == "checkpoint"
    assert "rebuilding the weight cache" in caplog.text
    assert torch.equal(model.a.weight, state["a.weight"] * 0.5) and model.a.weight.dtype == torch.float32
    assert wc.load_weights(_empty(), ckpt, tmp_path / "cache", LAYOUT, _halve) == "cache"


def test_a_changed_checkpoint_replaces_its_old_cache_and_the_legacy_one(tmp_path: Path) -> None:
    ckpt, _ = _checkpoint(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    legacy = wc._legacy_cache_path(ckpt, cache)
    legacy.write_bytes(b"old raw state dict cache")
    wc.load_weights(_empty(), ckpt, cache, LAYOUT, _halve)
    assert not legacy.exists()
    (first,) = cache.glob("prepared-*")
    old_mtime = ckpt.stat().st_mtime_ns
    ckpt2, state2 = _checkpoint(tmp_path, seed=1)  # same path, new contents and mtime
    os.utime(ckpt2, ns=(old_mtime + 10**9, old_mtime + 10**9))
    model = _empty()
    assert wc.load_weights(model, ckpt2, cache, LAYOUT, _halve) == "checkpoint"
    assert torch.equal(model.b.weight, state2["b.weight"])
    (second,) = cache.glob("prepared-*")
    assert second != first


def test_a_wrong_checkpoint_is_still_refused_strictly(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(5, 3)}}, path)
    with pytest.raises(ServerError, match="missing keys"):
        wc.load_weights(_empty(), path, tmp_path / "cache", LAYOUT, _halve)
    assert not list((tmp_path / "cache").glob("prepared-*"))


def test_an_unwritable_cache_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt, state = _checkpoint(tmp_path)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    model = _empty()
    with caplog.at_level(logging.WARNING, logger="server.weight_cache"):
        assert wc.load_weights(model, ckpt, blocker, LAYOUT, _halve) == "checkpoint"
    assert "could not write the weight cache" in caplog.text
    assert torch.equal(model.b.weight, state["b.weight"])
