"""load_image on odd inputs: every mode to RGB uint8, EXIF rotation/focal, bad data, pixel limit."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.errors import BAD_IMAGE, ServerError
from server.imageio import load_image


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient(w: int = 24, h: int = 16) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 90.0)], axis=2)
    return rgb.round().astype(np.uint8)


def _check_rgb(rgb: np.ndarray, h: int, w: int) -> None:
    assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3) and rgb.flags["C_CONTIGUOUS"]


def test_rgb_png_roundtrip_from_bytes_and_path(tmp_path: Path) -> None:
    ref = _gradient()
    data = _encode(Image.fromarray(ref), "PNG")
    rgb, info = load_image(data)
    np.testing.assert_array_equal(rgb, ref)
    assert info["width"] == 24 and info["height"] == 16 and info["format"] == "PNG"
    assert info["exif_focal_35mm"] is None
    path = tmp_path / "a.png"
    path.write_bytes(data)
    rgb2, info2 = load_image(path)
    np.testing.assert_array_equal(rgb2, ref)
    assert load_image(str(path))[1]["source"] == str(path)


def test_grayscale_and_bilevel() -> None:
    grey = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)
    rgb, info = load_image(_encode(Image.fromarray(grey, "L"), "PNG"))
    _check_rgb(rgb, 16, 24)
    assert info["mode"] == "L"
    np.testing.assert_array_equal(rgb[..., 0], grey)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    bits = Image.fromarray(grey > 100).convert("1")
    rgb1, _ = load_image(_encode(bits, "PNG"))
    assert set(np.unique(rgb1)) <= {0, 255}


def test_rgba_drops_alpha_keeps_colour() -> None:
    ref = _gradient()
    rgba = np.concatenate([ref, np.full(ref.shape[:2] + (1,), 7, np.uint8)], axis=2)
    rgb, info = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert info["mode"] == "RGBA"
    np.testing.assert_array_equal(rgb, ref)


def test_palette_image() -> None:
    ref = _gradient()
    pal = Image.fromarray(ref).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rgb, info = load_image(_encode(pal, "PNG"))
    assert info["mode"] == "P"
    np.testing.assert_array_equal(rgb, np.asarray(pal.convert("RGB")))


def test_16bit_grey_png_scaled_to_8bit() -> None:
    grey16 = (np.arange(16 * 24, dtype=np.uint32).reshape(16, 24) * 170).astype(np.uint16)
    img = Image.fromarray(grey16)  # mode I;16
    rgb, info = load_image(_encode(img, "PNG"))
    _check_rgb(rgb, 16, 24)
    assert info["mode"].startswith("I")
    np.testing.assert_array_equal(rgb[..., 1], (grey16 >> 8).astype(np.uint8))
    assert rgb.max() > 200  # scaled, not clipped to 255 nor left as the low byte


def test_16bit_rgb_png() -> None:
    import cv2

    rgb16 = (_gradient().astype(np.uint16) * 257)
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])
    assert ok
    rgb, _ = load_image(buf.tobytes())
    np.testing.assert_array_equal(rgb, _gradient())


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    rgb, info = load_image(_encode(cmyk, "JPEG", quality=95))
    _check_rgb(rgb, 10, 20)
    assert info["mode"] == "CMYK"
    r, g, b = rgb.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_float_and_int32_modes() -> None:
    f = Image.fromarray(np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24), "F")
    rgb, _ = load_image(_encode(f, "TIFF"))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_exif_rotation_and_focal() -> None:
    ref = _gradient(24, 16)
    img = Image.fromarray(ref)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    exif.get_ifd(0x8769)[0xA405] = 28
    exif.get_ifd(0x8769)[0x920A] = 4.2
    rgb, info = load_image(_encode(img, "JPEG", quality=100, exif=exif.tobytes()))
    assert info["exif_orientation"] == 6
    assert info["exif_focal_35mm"] == 28.0
    assert info["exif_focal_mm"] == pytest.approx(4.2)
    assert rgb.shape == (24, 16, 3) and (info["width"], info["height"]) == (16, 24)
    expected = np.rot90(ref, k=-1)  # 90 degrees clockwise
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() < 4  # JPEG loss only


def test_zero_exif_focal_means_unknown() -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 0
    _, info = load_image(_encode(Image.fromarray(_gradient()), "JPEG", exif=exif.tobytes()))
    assert info["exif_focal_35mm"] is None


def test_empty_truncated_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="empty") as e:
        load_image(b"")
    assert e.value.code == BAD_IMAGE
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ServerError, match="empty"):
        load_image(empty)
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ServerError, match="truncated|damaged"):
        load_image(data[: len(data) // 2])
    png = _encode(Image.fromarray(_gradient(64, 64)), "PNG")
    with pytest.raises(ServerError, match="truncated|damaged|Cannot read"):
        load_image(png[: len(png) // 2])
    with pytest.raises(ServerError, match="not an image"):
        load_image(b"this is not an image at all")


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ServerError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ServerError, match="path or bytes"):
        load_image(12345)  # type: ignore[arg-type]


def test_pixel_limit_checked_before_decoding() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ServerError, match="60,000 pixels, more than the limit"):
        load_image(data, max_pixels=59_999)
    rgb, _ = load_image(data, max_pixels=60_000)
    assert rgb.shape == (200, 300, 3)


def test_decompression_bomb_header_is_rejected() -> None:
    # A tiny PNG whose header claims 100000 x 100000 pixels: rejected from the header alone.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")
    with pytest.raises(ServerError, match="too large|more than the limit"):
        load_image(data)
