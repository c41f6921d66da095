"""Loading and calling MHR's TorchScript (`assets/mhr_model.pt`).

The file is MHR's LOD1 body model as a traced TorchScript module (reference/mhr.md §2):
`forward(identity_coeffs [B,45], model_parameters [B,204], face_expr_coeffs [B,72])` ->
`(vertices [B,V,3] cm, skel_state [B,127,8])`. Some third-party code passes a fourth
`apply_correctives` argument; whether the released file accepts it is unknown, so we detect it
from the schema and only pass it when the schema has it.

The graph runs forward kinematics in float64, which Apple's MPS backend does not support: on
MPS the module stays on the CPU and `MHRTorchScript` moves inputs and outputs for the caller.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CHECKPOINT_INVALID, CHECKPOINT_MISSING, ServerError

NUM_IDENTITY = 45
NUM_MODEL_PARAMS = 204
NUM_EXPRESSION = 72
NUM_JOINTS = 127

# Buffers our own forward (server/mhr/forward.py) and the rig export need; a file without them
# is not an MHR body model.
_REQUIRED_SUBMODULES = (
    "character_torch.skeleton",
    "character_torch.parameter_transform",
    "character_torch.linear_blend_skinning",
    "character_torch.blend_shape",
)


def mhr_device_for(device: torch.device | str) -> torch.device:
    """Device the TorchScript can run on for a model placed on `device` (MPS has no float64)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def forward_argument_names(module: torch.jit.ScriptModule) -> list[str]:
    """Names of the forward arguments, without `self`."""
    try:
        args = module.forward.schema.arguments
        return [a.name for a in args if a.name != "self"]
    except AttributeError:
        # Very old TorchScript objects: parse the printed schema "forward(self, Tensor a, ...)".
        text = str(module.forward.schema)
        inner = text[text.index("(") + 1 : text.index(")")]
        names = [part.strip().split(" ")[-1].split("=")[0] for part in inner.split(",") if part.strip()]
        return [n for n in names if n != "self"]


def accepts_apply_correctives(module: torch.jit.ScriptModule) -> bool:
    """True when forward takes a 4th argument (the `apply_correctives` switch)."""
    return len(forward_argument_names(module)) >= 4


def _submodule(module: torch.nn.Module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_mhr(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load MHR's TorchScript onto `device` (CPU instead of MPS), in eval mode, no gradients.

    Raises ServerError(CHECKPOINT_MISSING) when the file does not exist and
    ServerError(CHECKPOINT_INVALID) when it is not a TorchScript MHR body model.
    """
    p = Path(path)
    if not str(path):
        raise ServerError(CHECKPOINT_MISSING, "No MHR model path given: the checkpoint's assets/mhr_model.pt is needed")
    if not p.exists():
        raise ServerError(
            CHECKPOINT_MISSING,
            f"MHR model file {p} not found: the checkpoint directory must contain assets/mhr_model.pt",
        )
    if not p.is_file():
        raise ServerError(CHECKPOINT_INVALID, f"MHR model path {p} is not a file")
    target = mhr_device_for(device)
    try:
        module = torch.jit.load(str(p), map_location=target)
    except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{p} is not a TorchScript file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "expected MHR's assets/mhr_model.pt",
        ) from exc
    if not isinstance(module, torch.jit.ScriptModule):
        raise ServerError(CHECKPOINT_INVALID, f"{p} does not hold a TorchScript module")
    missing = []
    for name in _REQUIRED_SUBMODULES:
        try:
            _submodule(module, name)
        except AttributeError:
            missing.append(name)
    if missing:
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{p} is TorchScript but not an MHR body model (missing {', '.join(missing)})",
        )
    n_args = len(forward_argument_names(module))
    if n_args not in (3, 4):
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{p}: forward takes {n_args} arguments; MHR takes (identity, model_parameters, expression"
            "[, apply_correctives])",
        )
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first tensor (parameters, then buffers); CPU if it has none."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@dataclass
class MHROutput:
    vertices: torch.Tensor  # (B, V, 3) cm, MHR model frame
    skel_state: torch.Tensor  # (B, 127, 8) t (cm), q (x, y, z, w), s


class MHRTorchScript:
    """Typed call wrapper: checks shapes, broadcasts identity, handles devices and the schema."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        self.has_apply_correctives = accepts_apply_correctives(module)
        blend = module.character_torch.blend_shape
        self.num_vertices = int(blend.base_shape.shape[0])
        self.num_faces = int(module.character_torch.mesh.faces.shape[0])

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "MHRTorchScript":
        return cls(load_mhr(path, device))

    @property
    def device(self) -> torch.device:
        return module_device(self.module)

    def __call__(
        self,
        identity: torch.Tensor,
        model_params: torch.Tensor,
        expression: torch.Tensor | None = None,
        apply_correctives: bool | None = None,
    ) -> MHROutput:
        """Run MHR. `identity` (B,45) or (45,) or (1,45) broadcast, `model_params` (B,204),
        `expression` (B,72) or None (zeros). Outputs come back on `model_params`' device, fp32.

        `apply_correctives=False` needs a 4-argument TorchScript; a 3-argument one always
        applies them (use server.mhr.forward for a switchable forward).
        """
        if model_params.ndim == 1:
            model_params = model_params[None]
        if model_params.ndim != 2 or model_params.shape[1] != NUM_MODEL_PARAMS:
            raise ValueError(f"MHR model_params must be (B, {NUM_MODEL_PARAMS}), got {tuple(model_params.shape)}")
        batch = model_params.shape[0]
        identity = _batch_rows(identity, NUM_IDENTITY, batch, "identity")
        if expression is None:
            expression = torch.zeros(batch, NUM_EXPRESSION, dtype=torch.float32, device=model_params.device)
        expression = _batch_rows(expression, NUM_EXPRESSION, batch, "expression")
        out_device = model_params.device
        dev = self.device
        args = [t.to(device=dev, dtype=torch.float32) for t in (identity, model_params, expression)]
        if apply_correctives is not None and not self.has_apply_correctives:
            if not apply_correctives:
                raise ValueError(
                    "this MHR TorchScript always applies pose correctives (3-argument forward); "
                    "use server.mhr.forward.MHRBody to switch them off"
                )
            apply_correctives = None
        with torch.no_grad():
            if apply_correctives is None:
                verts, skel = self.module(*args)
            else:
                verts, skel = self.module(*args, bool(apply_correctives))
        return MHROutput(verts.to(out_device), skel.to(out_device))

    def joint_names(self) -> list[str]:
        return list(self.module.character_torch.skeleton.joint_names)

    def parameter_names(self) -> list[str]:
        return list(self.module.character_torch.parameter_transform.parameter_names)


def _batch_rows(x: torch.Tensor, width: int, batch: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"MHR {name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"MHR {name} must be (B, {width}), got {tuple(x.shape)}")
    if x.shape[0] == 1 and batch != 1:
        x = x.expand(batch, width)
    elif x.shape[0] != batch:
        raise ValueError(f"MHR {name} has {x.shape[0]} rows but model_params has {batch}")
    return x
