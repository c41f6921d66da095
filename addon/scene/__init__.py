"""The Blender scene writers: build (the only module that writes character data), apply a result,
import a result file, export presets, keypoint markers. The math they use lives in addon/rig/."""
