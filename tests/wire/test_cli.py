"""server/__main__.py: `python -m server reconstruct` locally and through a running server."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from addon.protocol.client import ServerProcess
from tests.conftest import ROOT

ENGINE_ARGS = ["--engine", "tests.wire.fake_engine:make_engine"]


def run_cli(*args, token=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SAM3D_BODY_TOKEN", None)
    if token is not None:
        env["SAM3D_BODY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return path, pixels


def check_result(path, pixels):
    with np.load(path, allow_pickle=False) as data:  # no pickled objects inside
        result = {k: data[k] for k in data.files}
    assert int(result["image_sum"]) == int(pixels.sum())
    np.testing.assert_array_equal(result["bbox"], [[1, 2, 25, 18]])
    assert str(result["mode"]) == "body" and result["mode"].dtype.kind == "U"
    # The file's 0/255 values arrive unchanged (as Meta's code would get them).
    assert result["mask"].shape == (1, 20, 30, 1) and result["mask"].max() == 255
    assert result["mask"][0, 10, 15, 0] == 255 and result["mask"][0, 0, 0, 0] == 0
    np.testing.assert_allclose(result["cam_int"][0], [400, 0, 15])
    np.testing.assert_array_equal(result["prompts_seen"], [[3, 4, 7]])
    return result


REQUEST_ARGS = ["--mode", "body", "--box", "1,2,25,18", "--intrinsics", "400,410,15,10",
                "--prompt", "3,4,7"]


def test_reconstruct_locally(photo, tmp_path):
    path, pixels = photo
    out = tmp_path / "result.npz"
    done = run_cli("reconstruct", str(path), *REQUEST_ARGS, "--mask",
                   str(tmp_path / "mask.png"), "--out", str(out), *ENGINE_ARGS)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    check_result(out, pixels)


def test_reconstruct_through_a_running_server_writes_the_same_file(photo, tmp_path):
    path, pixels = photo
    server = ServerProcess(sys.executable, root=ROOT, device="cpu", extra_args=ENGINE_ARGS,
                           ready_timeout=60)
    server.start()
    try:
        out = tmp_path / "remote.npz"
        done = run_cli("reconstruct", str(path), *REQUEST_ARGS, "--mask",
                       str(tmp_path / "mask.png"), "--out", str(out), "--connect",
                       f"127.0.0.1:{server.port}", token=server.token)
        assert done.returncode == 0, done.stderr
        remote = check_result(out, pixels)
        local_out = tmp_path / "local.npz"
        assert run_cli("reconstruct", str(path), *REQUEST_ARGS, "--mask",
                       str(tmp_path / "mask.png"), "--out", str(local_out),
                       *ENGINE_ARGS).returncode == 0
        with np.load(local_out) as local:
            assert sorted(local.files) == sorted(remote)
            for name in local.files:
                np.testing.assert_array_equal(local[name], remote[name])
        wrong = run_cli("reconstruct", str(path), "--out", str(out), "--connect",
                        f"127.0.0.1:{server.port}", token="wrong")
        assert wrong.returncode == 1 and "auth" in wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("args,needle", [
    (["--box", "1,2,3"], "4 comma-separated"),
    (["--box", "5,5,1,1"], "x2 > x1"),
    (["--intrinsics", "a,b,c,d"], "--intrinsics"),
    (["--prompt", "1,2,3.5"], "integer"),
    (["--fit-prompts"], "needs at least one --prompt"),
    (["--mode", "hands"], "invalid choice"),
    (["--mask", "m.png"], "one --mask per --box"),
    (["--connect", "nohost"], "HOST:PORT"),
    (["--device", "tpu"], "invalid choice"),
])
def test_bad_arguments_exit_with_code_2(photo, tmp_path, args, needle):
    path, _ = photo
    done = run_cli("reconstruct", str(path), "--out", str(tmp_path / "r.npz"), *args,
                   *ENGINE_ARGS)
    assert done.returncode == 2 and needle in done.stderr, done.stderr


def test_missing_inputs_and_runtime_failures(photo, tmp_path):
    path, _ = photo
    missing = run_cli("reconstruct", str(tmp_path / "none.jpg"), "--out",
                      str(tmp_path / "r.npz"), *ENGINE_ARGS)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_token = run_cli("reconstruct", str(path), "--out", str(tmp_path / "r.npz"),
                       "--connect", "127.0.0.1:9")
    assert no_token.returncode == 2 and "SAM3D_BODY_TOKEN" in no_token.stderr
    refused = run_cli("reconstruct", str(path), "--out", str(tmp_path / "r.npz"),
                      "--connect", "127.0.0.1:9", token="t")
    assert refused.returncode == 1 and "cannot connect" in refused.stderr
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not a jpeg")
    failed = run_cli("reconstruct", str(bad_image), "--out", str(tmp_path / "r.npz"),
                     *ENGINE_ARGS)
    assert failed.returncode == 1 and "bad_image" in failed.stderr
    assert not (tmp_path / "r.npz").exists()
