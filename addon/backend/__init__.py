"""The managed server environment: a venv with a platform-aware torch build (no bpy)."""
