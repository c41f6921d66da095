"""Render a saved result through its photo camera, over the photo (Workbench, headless bpy).

    .venv/bin/python scripts/render_preview.py RESULT.npz --image PHOTO --out PREVIEW.png
        [--rig RIG.npz | --mhr MHR.pt] [--proportions baked|exact] [--scale PERCENT]

The characters render with a transparent film and are alpha-composited over the photo with
Pillow: Blender's own compositor would need a node tree per version, and the camera's background
image only shows in the viewport. A misplaced camera or rig shows as an offset silhouette.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Keep Blender away from the user's configuration (as tests/conftest.py does).
_user = tempfile.mkdtemp(prefix="sam3d-preview-user-")
os.environ.setdefault("BLENDER_USER_RESOURCES", _user)
os.environ.setdefault("BLENDER_USER_CONFIG", os.path.join(_user, "config"))
os.environ.setdefault("BLENDER_USER_SCRIPTS", os.path.join(_user, "scripts"))


def render_characters(scene) -> "np.ndarray":
    """Render the scene camera's view with a transparent film: (H, W, 4) uint8 RGBA."""
    import bpy
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        layer = os.path.join(tmp, "characters.png")
        scene.render.filepath = layer
        bpy.ops.render.render(write_still=True)
        with Image.open(layer) as im:
            return np.asarray(im.convert("RGBA")).copy()


def render_preview(result_path: str, image_path: str, out_path: str, rig: str | None = None,
                   proportions: str = "baked", scale_percent: int = 100,
                   opacity: float = 0.85) -> str:
    """Build the scene of ``result_path``, render it over ``image_path`` and write ``out_path``."""
    import bpy
    import numpy as np
    from PIL import Image

    from addon.scene.import_result import import_result

    if not 0.0 < opacity <= 1.0:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    if not 1 <= scale_percent <= 100:
        raise ValueError(f"scale must be a percentage in [1, 100], got {scale_percent}")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objs = import_result(bpy.context, result_path, rig=rig, image_path=image_path,
                         options={"proportions": proportions})
    if not any(o.type == "CAMERA" for o in objs):
        raise RuntimeError("the result built no camera")
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.film_transparent = True
    scene.render.resolution_percentage = scale_percent
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    shading = scene.display.shading
    shading.light = "STUDIO"
    shading.color_type = "MATERIAL"
    shading.show_cavity = True
    for obj in objs:  # the armatures would draw nothing in a render; keep the scene clean
        if obj.type == "ARMATURE":
            obj.hide_render = True
    fg = Image.fromarray(render_characters(scene))
    with Image.open(image_path) as im:
        photo = im.convert("RGBA").resize(fg.size, Image.LANCZOS)
    alpha = np.asarray(fg)[..., 3].astype(np.float32) * opacity
    fg.putalpha(Image.fromarray(alpha.round().astype(np.uint8)))
    Image.alpha_composite(photo, fg).convert("RGB").save(out_path)
    return out_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="RESULT.npz (with rig_ arrays, or pass --rig / --mhr)")
    ap.add_argument("--image", required=True, help="the photo the result came from")
    ap.add_argument("--out", required=True, help="PNG to write")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--rig", help="rig .npz")
    src.add_argument("--mhr", help="MHR TorchScript .pt (needs torch)")
    ap.add_argument("--proportions", choices=("baked", "exact"), default="baked")
    ap.add_argument("--scale", type=int, default=100, help="render size in percent")
    ap.add_argument("--opacity", type=float, default=0.85, help="character opacity over the photo")
    args = ap.parse_args()
    for flag, path in (("RESULT.npz", args.result), ("--image", args.image),
                       ("--rig", args.rig), ("--mhr", args.mhr)):
        if path and not os.path.isfile(path):
            print(f"error: {flag} not found: {path}", file=sys.stderr)
            return 2
    try:
        out = render_preview(args.result, os.path.abspath(args.image), args.out,
                             rig=args.rig or args.mhr, proportions=args.proportions,
                             scale_percent=args.scale, opacity=args.opacity)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
