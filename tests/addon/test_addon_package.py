# SPDX-License-Identifier: GPL-3.0-or-later
"""The extension package: manifest rules, validate + build with Blender's own CLI, zip contents,
and the bpy-free import the server relies on."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import build_extension  # noqa: E402


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_extension.py"),
                           "--output-dir", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file()
    return path


def manifest() -> dict:
    return tomllib.loads((ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))


def test_manifest_follows_extension_rules() -> None:
    m = manifest()
    assert m["schema_version"] == "1.0.0"
    assert m["id"].isidentifier() and "__" not in m["id"] and not m["id"].startswith("_")
    assert m["type"] == "add-on"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert m["blender_version_min"] == "4.2.0"
    tagline = m["tagline"]
    assert len(tagline) <= 64 and (tagline[-1].isalnum() or tagline[-1] in ")]}")
    permissions = m["permissions"]
    assert set(permissions) <= {"files", "network"} and "files" in permissions
    for reason in permissions.values():
        assert len(reason) <= 64 and reason[-1].isalnum()


def test_blender_ext_validates_the_source_tree() -> None:
    tool = build_extension.find_blender_ext()
    proc = subprocess.run([sys.executable, str(tool), "validate", str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_blender_ext_rejects_a_bad_manifest(tmp_path: Path) -> None:
    # The same validator must fail on a rule we rely on (no trailing period in the tagline),
    # otherwise the passing validation above proves nothing.
    (tmp_path / "__init__.py").write_text("def register(): pass\ndef unregister(): pass\n")
    text = (ROOT / "blender_manifest.toml").read_text(encoding="utf-8")
    tagline = manifest()["tagline"]
    (tmp_path / "blender_manifest.toml").write_text(text.replace(tagline, tagline + "."))
    tool = build_extension.find_blender_ext()
    proc = subprocess.run([sys.executable, str(tool), "validate", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "tagline" in (proc.stdout + proc.stderr)


def test_zip_holds_the_addon_and_server_only(built_zip: Path) -> None:
    m = manifest()
    assert built_zip.name == f"{m['id']}-{m['version']}.zip"
    with zipfile.ZipFile(built_zip) as z:
        names = set(z.namelist())
        init = z.read("__init__.py").decode()
    for required in ("__init__.py", "blender_manifest.toml", "LICENSE", "addon/__init__.py",
                     "addon/ui/operators.py", "addon/ui/panel.py", "addon/ui/preferences.py",
                     "addon/ui/properties.py", "addon/protocol/client.py", "addon/protocol/wire.py",
                     "server/__init__.py", "server/__main__.py"):
        assert required in names, required
    top = {name.split("/")[0] for name in names}
    assert top == {"__init__.py", "blender_manifest.toml", "LICENSE", "addon", "server"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "from .addon import register, unregister" in init
    # Every Python file of the tree is shipped (nothing silently left out).
    for package in ("addon", "server"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert rel in names, rel


def test_addon_package_imports_without_bpy() -> None:
    # The server imports addon.protocol.wire in a Python without bpy: the package must not pull it in.
    code = ("import sys; import addon, addon.protocol.wire, addon.protocol.client, addon.protocol.results, addon.cli; "
            "assert 'bpy' not in sys.modules, 'bpy imported'; print(addon.root_package())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "addon"


def test_root_package_of_an_installed_extension() -> None:
    # Installed, the sub-package is bl_ext.<repo>.<id>.addon and Blender's key is the parent.
    code = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('bl_ext.user_default.x.addon', "
            "'addon/__init__.py', submodule_search_locations=['addon']); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.root_package())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "bl_ext.user_default.x"
