"""Blender UI: properties, preferences, operators, the sidebar panel, the server session,
Refine and the backend installer's operators."""
