"""scripts/render_preview.py: a Workbench render through the photo camera lines up with 3DB."""
from __future__ import annotations

import importlib.util

import numpy as np

from addon.protocol.result_file import with_rig_arrays
from addon.rig.camera import project_camera_points
from tests.conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("render_preview",
                                                  ROOT / "scripts" / "render_preview.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_silhouette_matches_the_projected_mesh(scene, lod1_result, lod1_rig, tmp_path):
    from PIL import Image

    w, h = 480, 222  # the samples' 1920x890 photo at a quarter
    res = dict(lod1_result)
    res["cam_int"] = res["cam_int"] * np.array([[0.25], [0.25], [1]], np.float32)
    res["image_size"] = np.array([w, h], np.int32)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (w, h), (40, 90, 160)).save(photo)
    result_path = tmp_path / "RESULT.npz"
    with open(result_path, "wb") as handle:
        np.savez(handle, **with_rig_arrays(res, lod1_rig))
    module = _script()
    out = tmp_path / "preview.png"
    module.render_preview(str(result_path), str(photo), str(out))
    with Image.open(out) as im:
        assert im.size == (w, h)
        composite = np.asarray(im.convert("RGB")).astype(int)
    covered = np.abs(composite - (40, 90, 160)).sum(axis=2) > 30
    # where the projected MHR vertices say the bodies are
    cam = np.concatenate([res["mhr_vertices"][i] * np.array([1, -1, -1]) / 100
                          + res["pred_cam_t"][i] for i in range(res["pred_cam_t"].shape[0])])
    px = project_camera_points(cam, res["cam_int"])
    ys, xs = np.nonzero(covered)
    assert abs(xs.min() - px[:, 0].min()) < 2 and abs(xs.max() + 1 - px[:, 0].max()) < 2
    assert abs(ys.min() - px[:, 1].min()) < 2 and abs(ys.max() + 1 - px[:, 1].max()) < 2
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    # every vertex lands on the silhouette, give or take the 1-px anti-aliased rim
    grown = covered.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(covered, dy, axis=0), dx, axis=1)
    hit = grown[px[inside, 1].astype(int), px[inside, 0].astype(int)]
    assert hit.mean() > 0.999, hit.mean()
