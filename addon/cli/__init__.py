"""Command lines that run headless with the PyPI bpy module: `python -m addon.cli PHOTO ...`
(photo.py) and `python -m addon.cli --from-result RESULT.npz ...` (from_result.py)."""
