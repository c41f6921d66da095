"""The prepared-weights cache: the model's weights exactly as they stand after loading and
rounding, stored so that a restart maps them instead of loading them.

A first load reads `model.ckpt` (safely, `checkpoint.load_state_dict`), checks it strictly,
copies it into the model, runs `prepare` (the rounding `TRAIN.USE_FP16` implies) and writes the
result here. A warm load memory-maps that file and adopts its tensors as the parameters
(`load_state_dict(assign=True)`): no conversion, no rounding and no second copy, so the load
costs the build and the key check, and resident memory grows only as inference touches the
pages (docs/PRECISION.md, "Loading").

The file is plain safetensors (any safetensors reader opens it) with one extra property: every
tensor's data starts on a 64-byte boundary, as fresh CPU allocations do. The CPU kernels pick
their code paths by alignment, and weights at safetensors' usual 8-byte alignment gave results
that differ in the last bits from the same weights in fresh memory. safetensors forbids holes
in the data, so the gaps are `__pad__.N` uint8 entries, which readers here skip.

A cache that does not open, or does not match the model (keys, shapes, dtypes, layout), is
deleted with a warning and rebuilt from the checkpoint; one that cannot be written only costs
the next start its speed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .checkpoint import MHR_KEY, check_state_dict, load_state_dict

log = logging.getLogger(__name__)

FORMAT = "sam3d-body-prepared-1"  # bump when what `prepare` does to the weights changes
ALIGN = 64
PAD_PREFIX = "__pad__."
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def cache_path(ckpt: Path, cache_dir: Path, layout: Mapping[str, str]) -> Path:
    """One file per checkpoint (path, size, mtime) and layout (how the weights were prepared)."""
    stat = ckpt.stat()
    where = hashlib.sha256(str(ckpt.resolve()).encode()).hexdigest()[:16]
    what = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{FORMAT}".encode()).hexdigest()[:16]
    return cache_dir / f"prepared-{where}-{_layout_tag(layout)}-{what}.safetensors"


def _layout_tag(layout: Mapping[str, str]) -> str:
    return "_".join(f"{k}-{v}" for k, v in sorted(layout.items())) or "plain"


def _legacy_cache_path(ckpt: Path, cache_dir: Path) -> Path:
    """The raw state-dict cache of releases before this one (superseded by this file)."""
    stat = ckpt.stat()
    key = f"{ckpt.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return cache_dir / f"state_dict-{hashlib.sha256(key).hexdigest()[:20]}.safetensors"


def write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write `tensors` as safetensors with every tensor's data 64-byte aligned (atomically)."""
    entries: dict[str, dict] = {}
    order: list[tuple[str, torch.Tensor | int]] = []
    offset = 0
    seen_pads = 0
    for key, value in tensors.items():
        if key.startswith(PAD_PREFIX):
            raise ValueError(f"tensor name {key!r} is reserved for padding")
        if value.dtype not in _DTYPES:
            raise ValueError(f"{key}: dtype {value.dtype} cannot be cached")
        gap = -offset % ALIGN
        if gap:
            name = f"{PAD_PREFIX}{seen_pads}"
            seen_pads += 1
            entries[name] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            order.append((name, gap))
            offset += gap
        value = value.detach().to("cpu").contiguous()
        size = value.numel() * value.element_size()
        entries[key] = {"dtype": _DTYPES[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + size]}
        order.append((key, value))
        offset += size
    header = json.dumps({"__metadata__": dict(metadata), **entries}, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % ALIGN)  # the data then starts aligned too
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for _, item in order:
                if isinstance(item, int):
                    f.write(b"\0" * item)
                elif item.numel():
                    f.write(memoryview(item.reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (memory-mapped, copy-on-write: nothing is read until used) and metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(PAD_PREFIX)}
    return tensors, metadata


def _check_matches(expected: Mapping[str, torch.Tensor], cached: Mapping[str, torch.Tensor],
                   metadata: Mapping[str, str], layout: Mapping[str, str],
                   dtypes: Mapping[str, torch.dtype], source: str) -> None:
    if metadata.get("format") != FORMAT or json.loads(metadata.get("layout", "null")) != dict(layout):
        raise ValueError(f"format/layout {metadata.get('format')}/{metadata.get('layout')} is not "
                         f"{FORMAT}/{json.dumps(dict(layout))}")
    check_state_dict(expected, cached, source=source)
    want = {k: dtypes.get(k, expected[k].dtype) for k in cached}
    wrong = [f"{k} {v.dtype} != {want[k]}" for k, v in cached.items() if v.dtype != want[k]]
    if wrong:
        raise ValueError(f"dtypes differ from the model's: {', '.join(wrong[:5])}")


def load_weights(model: nn.Module, ckpt: Path, cache_dir: str | os.PathLike[str] | None,
                 layout: Mapping[str, str], prepare: Callable[[nn.Module], object],
                 source: str | None = None, dtypes: Mapping[str, torch.dtype] | None = None) -> str:
    """Load the checkpoint into `model` (strict key and shape check) and `prepare` it, from the
    prepared cache when it has one for this checkpoint and `layout`, else from `ckpt` (writing
    the cache). Returns where the weights came from: "cache" or "checkpoint".

    `layout` names everything `prepare` does (e.g. {"round": "float16"}); it keys the cache,
    so a different preparation never adopts another's weights. `dtypes`: the keys `prepare`
    stores in another dtype than the model was built with. The MHR keys are not cached (they
    come from mhr_model.pt)."""
    source = source or str(ckpt)
    expected = model.state_dict()
    path = cache_path(ckpt, Path(cache_dir), layout) if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached, metadata = read(path)
            _check_matches(expected, cached, metadata, layout, dtypes or {}, source)
        except Exception as exc:  # noqa: BLE001 - a stale or broken cache is rebuilt, never fatal
            log.warning("rebuilding the weight cache %s: %s", path, exc)
            path.unlink(missing_ok=True)
        else:
            with torch.no_grad():
                model.load_state_dict(cached, strict=False, assign=True)
            return "cache"
    state = load_state_dict(ckpt)
    check_state_dict(expected, state, source=source)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    del state
    prepare(model)
    if path is not None:
        _write_cache(model, ckpt, path, layout)
    return "checkpoint"


def _write_cache(model: nn.Module, ckpt: Path, path: Path, layout: Mapping[str, str]) -> None:
    tensors = {k: v for k, v in model.state_dict().items() if not MHR_KEY.match(k)}
    try:
        write(path, tensors, {"format": FORMAT, "layout": json.dumps(dict(layout)),
                                         "checkpoint": str(ckpt)})
    except (OSError, RuntimeError, ValueError) as exc:  # the next start is only slower
        log.warning("could not write the weight cache %s: %s", path, exc)
        return
    stale = [_legacy_cache_path(ckpt, path.parent)]
    prefix = path.name.rsplit("-", 1)[0] + "-"
    stale += [p for p in path.parent.glob(prefix + "*.safetensors") if p != path]
    for old in stale:  # superseded: the same checkpoint and layout, older file or format
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the stale cache %s: %s", old, exc)

