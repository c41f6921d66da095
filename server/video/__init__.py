"""Video clips: frame sources (source.py) and the clip job (clip.py: per-frame reconstruction,
tracking, shape lock)."""
