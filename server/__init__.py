"""SAM 3D Body inference server (runs in its own Python with torch, never inside Blender)."""

__version__ = "0.1.0"
