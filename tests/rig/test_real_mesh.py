"""The real 3DB sample vertices with the real MHR LOD1 faces: a closed, outward-oriented surface,
in MHR axes, in 3DB camera space and in Blender axes (the axis changes are rotations)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from addon.rig import axes

_VERTEX = np.dtype([("xyz", "<f4", 3), ("rgba", "u1", 4)])
_FACE = np.dtype([("n", "u1"), ("idx", "<i4", 3)], align=False)


def read_binary_ply_triangles(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of a binary little-endian PLY with the layout of
    mhr_face_mask.ply (x y z float, r g b a uchar; uchar-counted int lists)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: not a binary little-endian PLY")
    counts = {line.split()[1]: int(line.split()[2]) for line in header
              if line.startswith("element")}
    nv, nf = counts["vertex"], counts["face"]
    verts = np.frombuffer(data, _VERTEX, nv, end)["xyz"]
    faces = np.frombuffer(data, _FACE, nf, end + nv * _VERTEX.itemsize)
    if np.any(faces["n"] != 3):
        raise ValueError(f"{path}: only triangle faces are supported")
    return verts.astype(np.float64), faces["idx"].astype(np.int64)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


@pytest.fixture(scope="module")
def lod1_faces(mhr_samples):
    path = mhr_samples / "mhr_face_mask.ply"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return read_binary_ply_triangles(path)[1]


def test_lod1_faces_form_a_closed_consistently_oriented_surface(lod1_faces):
    edges = np.concatenate([lod1_faces[:, [0, 1]], lod1_faces[:, [1, 2]], lod1_faces[:, [2, 0]]])
    directed = {tuple(e) for e in edges.tolist()}
    assert len(directed) == edges.shape[0]  # no directed edge twice: consistent winding
    assert all((b, a) in directed for a, b in directed)  # every edge has its twin: closed


@pytest.mark.parametrize("name", ["img_subj00", "img_subj01"])
def test_sample_mesh_has_positive_volume_in_every_frame(mhr_samples, lod1_faces, name):
    with np.load(mhr_samples / f"{name}.npz") as d:
        pred = d["pred_vertices"][0] if d["pred_vertices"].ndim == 3 else d["pred_vertices"]
        cam_t = d["pred_cam_t"].reshape(-1, 3)[0]
    pred = pred.astype(np.float64)
    assert pred.shape == (18439, 3) and lod1_faces.max() < pred.shape[0]
    v_mhr = pred @ axes.FLIP_YZ.T * 100.0  # back to MHR cm (FLIP is its own inverse)
    camera = pred + cam_t
    blender = axes.camera_to_blender_points(camera, cam_t)
    vol_mhr = signed_volume(v_mhr / 100.0, lod1_faces)
    # a human body: tens of litres, outward normals give a positive volume
    assert 0.02 < vol_mhr < 0.2
    for frame in (camera, blender):
        assert signed_volume(frame, lod1_faces) == pytest.approx(vol_mhr, rel=1e-6)
    assert np.linalg.det(axes.FLIP_YZ) == pytest.approx(1.0)
