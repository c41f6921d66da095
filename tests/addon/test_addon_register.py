# SPDX-License-Identifier: GPL-3.0-or-later
"""Registration: the built zip installed as an extension, and the plain package used in tests."""
from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.bpy

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402  (only importable after bpy)

from addon_helpers import PACKAGE, enabled_addon, write_photo  # noqa: E402

ENGINE = ("--engine", "tests.addon.synthetic_engine:make_engine")

OPERATORS = ("reconstruct", "cancel", "server_start", "server_stop", "export_fbx")
PANELS = ("SAM3D_PT_main", "SAM3D_PT_server", "SAM3D_PT_input", "SAM3D_PT_character",
          "SAM3D_PT_camera", "SAM3D_PT_export")


def _registered() -> dict[str, bool]:
    state = {f"op:{name}": _op_exists(name) for name in OPERATORS}
    state.update({f"panel:{p}": hasattr(bpy.types, p) for p in PANELS})
    state["scene"] = hasattr(bpy.types.Scene, "sam3d_body")
    state["wm"] = hasattr(bpy.types.WindowManager, "sam3d_body_status")
    return state


def _op_exists(name: str) -> bool:
    try:
        getattr(bpy.ops.sam3d_body, name).get_rna_type()
    except (KeyError, AttributeError):
        return False
    return True


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_extension.py"),
                           "--output-dir", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


EXT_ID = tomllib.loads((ROOT / "blender_manifest.toml").read_text())["id"]
KEY = f"bl_ext.user_default.{EXT_ID}"


def install(extension_zip: Path) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert not any(_registered().values())
    result = bpy.ops.extensions.package_install_files(
        filepath=str(extension_zip), repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}


def uninstall() -> None:
    if KEY in bpy.context.preferences.addons:
        addon_utils.disable(KEY, default_set=True, handle_error=_raise)
    repos = bpy.context.preferences.extensions.repos
    index = next(i for i, r in enumerate(repos) if r.module == "user_default")
    assert bpy.ops.extensions.package_uninstall(repo_index=index, pkg_id=EXT_ID) == {"FINISHED"}
    assert not any(_registered().values())


def test_installed_extension_registers_and_unregisters(extension_zip: Path) -> None:
    key = KEY
    install(extension_zip)
    try:
        assert key in bpy.context.preferences.addons
        assert all(_registered().values()), _registered()
        prefs = bpy.context.preferences.addons[key].preferences
        assert type(prefs).bl_idname == key
        assert prefs.checkpoint_repo and prefs.device == "auto"
        # The installed copy is what runs, with the server next to it for PYTHONPATH.
        module = sys.modules[key + ".addon.ui.operators"]
        installed = Path(module.__file__).resolve().parents[2]
        assert installed != ROOT and (installed / "server" / "__main__.py").is_file()
        client = sys.modules[key + ".addon.protocol.client"]
        assert client.project_root() == installed
        # Writable cache under the user's extension data, not inside the add-on.
        cache = Path(module.cache_dir())
        assert cache.is_dir() and installed not in cache.parents
        assert bpy.context.scene.sam3d_body.mode == "full"
    finally:
        addon_utils.disable(key, default_set=True, handle_error=_raise)
    assert not any(_registered().values()), _registered()
    # Enabling again after a clean unregister works (no stale classes left behind).
    addon_utils.enable(key, default_set=True, handle_error=_raise)
    assert all(_registered().values())
    uninstall()


def test_installed_extension_runs_its_shipped_server(extension_zip: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The server that runs is the copy inside the installed extension (PYTHONPATH = the
    # extension directory); only the synthetic test-double engine comes from the checkout.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    install(extension_zip)
    try:
        context = bpy.context
        ops = sys.modules[KEY + ".addon.ui.operators"]
        monkeypatch.setattr(sys.modules[KEY + ".addon.ui.session"], "EXTRA_SERVER_ARGS",
                            list(ENGINE))
        prefs = context.preferences.addons[KEY].preferences
        prefs.server_python = sys.executable
        prefs.checkpoint_source = "FOLDER"
        prefs.checkpoint_dir = str(tmp_path)
        settings = context.scene.sam3d_body
        settings.image_source = "FILE"
        settings.image_path = str(write_photo(tmp_path / "photo.png"))
        assert bpy.ops.sam3d_body.reconstruct() == {"FINISHED"}
        deadline = time.monotonic() + 60
        while ops.drain_events(context):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        live = context.window_manager.sam3d_body_status
        assert live.last_error == "", live.last_error + live.log_tail
        assert [o.type for o in bpy.data.objects].count("ARMATURE") == 1
        server = ops.SESSION.runner.server
        installed = Path(ops.__file__).resolve().parents[2]
        assert server.root.resolve() == installed
        assert server.command[1:4] == ["-m", "server", "serve"]
    finally:
        uninstall()


def test_plain_package_registers_with_its_own_preferences() -> None:
    gen = enabled_addon()
    context = next(gen)
    try:
        assert all(_registered().values()), _registered()
        prefs = context.preferences.addons[PACKAGE].preferences
        assert type(prefs).bl_idname == PACKAGE
        assert context.window_manager.sam3d_body_status.server_state == "STOPPED"
    finally:
        next(gen, None)
    assert not any(_registered().values())


def test_draw_functions_run_and_do_not_write() -> None:
    # Panels only read: drawing every panel, idle and busy, must not raise or change data.
    gen = enabled_addon()
    context = next(gen)
    try:
        settings = context.scene.sam3d_body
        live = context.window_manager.sam3d_body_status
        for busy in (False, True):
            live.job_running = busy
            live.progress = 0.25 if busy else 0.0
            live.last_error = "boom" if busy else ""
            live.log_tail = "line 1\nline 2" if busy else ""
            before = _snapshot(settings) | _snapshot(live)
            calls = [c for name in PANELS for c in _draw_panel(getattr(bpy.types, name), context)]
            assert _snapshot(settings) | _snapshot(live) == before
            names = [c[0] for c in calls]
            assert ("progress" in names) == busy
            operators = {c[1][0] for c in calls if c[0] == "operator"}
            assert ("sam3d_body.cancel" in operators) == busy
            assert {"sam3d_body.server_start", "sam3d_body.export_fbx"} <= operators
        for source in ("FILE", "CAMERA", "EDITOR", "CLIP"):
            settings.image_source = source
            calls = [c for name in PANELS for c in _draw_panel(getattr(bpy.types, name), context)]
            props = {c[1][1] for c in calls if c[0] == "prop"}
            clip_box = {"clip_step", "clip_smoothing", "clip_foot_lock", "clip_replace"} <= props
            assert clip_box == (source == "CLIP")  # no file chosen: a photo's options
            picker = ("template_ID", (settings, "movie_clip"))
            assert (picker in [(c[0], c[1][:2]) for c in calls]) == (source == "CLIP")
    finally:
        next(gen, None)


def test_preferences_draw_runs_for_both_server_modes() -> None:
    gen = enabled_addon()
    context = next(gen)
    try:
        prefs = context.preferences.addons[PACKAGE].preferences
        drawn = {}
        for mode in ("LOCAL", "REMOTE"):
            prefs.server_mode = mode
            before = _snapshot(prefs)
            calls: list = []
            type(prefs).draw(_WithLayout(prefs, _RecordingLayout(calls)), context)
            assert _snapshot(prefs) == before
            drawn[mode] = {c[1][1] for c in calls if c[0] == "prop"}
        assert {"server_python", "checkpoint_source", "device"} <= drawn["LOCAL"]
        assert {"remote_host", "remote_token", "remote_pin"} <= drawn["REMOTE"]
        assert "server_python" not in drawn["REMOTE"]
    finally:
        next(gen, None)


def _snapshot(group) -> dict:
    return {(type(group).__name__, p): getattr(group, p)
            for p in group.bl_rna.properties.keys() if p != "rna_type"}


class _WithLayout:
    """The real preferences (values) with a recording layout in place of `self.layout`."""

    def __init__(self, target, layout) -> None:
        self._target = target
        self.layout = layout

    def __getattr__(self, name: str):
        return getattr(self._target, name)


class _RecordingLayout:
    """Accepts any UILayout call; every layout made from it records into the same list."""

    def __init__(self, calls: list) -> None:
        object.__setattr__(self, "calls", calls)

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return _RecordingLayout(self.calls)
        return call

    def panel(self, *args, **kwargs):
        # UILayout.panel returns (header, body); record the body as open.
        self.calls.append(("panel", args, kwargs))
        return _RecordingLayout(self.calls), _RecordingLayout(self.calls)


def _draw_panel(cls: type, context) -> list:
    """Run a panel's draw code with a recording layout (only Blender can create real Panel
    instances and layouts need a region, neither of which exists headless)."""
    calls: list = []
    attrs = {name: value for klass in reversed(cls.__mro__) for name, value in vars(klass).items()
             if name.startswith("draw")}
    attrs["layout"] = _RecordingLayout(calls)
    type(cls.__name__ + "Shim", (), attrs)().draw(context)
    return calls
