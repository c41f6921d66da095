#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Type-check the add-on (addon/) against Blender 4.2's API stubs.
#
# fake-bpy-module installs stub packages named `bpy`, `mathutils`, ... so it lives in its own
# virtual environment (.venv-typecheck), never next to the real bpy wheel in .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-typecheck"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/mypy" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "fake-bpy-module-4.2==20260730" "mypy==2.4.1" "numpy==1.26.4"
fi

CONFIG="$(mktemp "${TMPDIR:-/tmp}/sam3d-mypy.XXXXXX.ini")"
trap 'rm -f "$CONFIG"' EXIT
cat > "$CONFIG" <<'INI'
[mypy]
python_version = 3.11
check_untyped_defs = True
disallow_incomplete_defs = True
no_implicit_optional = True
warn_redundant_casts = True
warn_unused_ignores = True
warn_unreachable = True
strict_equality = True
cache_dir = .mypy_cache

# bpy declares RNA properties as annotations whose value is a call (`x: IntProperty(...)`),
# which is how Blender registers them and which mypy cannot read as a type; the stubs also
# declare those functions as returning None.
[mypy-addon.ui.properties,addon.ui.preferences,addon.ui.operators,addon.ui.panel,addon.ui.retarget,addon.cli.photo]
disable_error_code = valid-type, func-returns-value

# The scene-writing modules dereference RNA pointers (obj.data, context.scene, node sockets)
# that the 4.2 stubs declare Optional although Blender never hands them over as None there;
# narrowing each one would bury the geometry code. Everything else is checked as strictly.
[mypy-addon.scene.builder,addon.scene.apply,addon.scene.export,addon.scene.retarget]
disable_error_code = valid-type, func-returns-value, union-attr
INI

cd "$ROOT"
exec "$VENV/bin/mypy" --config-file "$CONFIG" -p addon "$@"
