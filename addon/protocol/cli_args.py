"""Argument types shared by `python -m addon.cli` and `python -m server` (stdlib only: the
server imports it as `addon.protocol.cli_args`, like the wire format)."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def floats(count: int, what: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: `count` finite comma-separated numbers."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{what} needs {count} comma-separated numbers, got {text!r}")
        return values
    return parse


def box(text: str) -> tuple[float, ...]:
    values = floats(4, "--box x1,y1,x2,y2")(text)
    if values[2] <= values[0] or values[3] <= values[1]:
        raise argparse.ArgumentTypeError(f"--box {text!r}: need x2 > x1 and y2 > y1")
    return values


def intrinsics(text: str) -> tuple[float, ...]:
    values = floats(4, "--intrinsics fx,fy,cx,cy")(text)
    if values[0] <= 0 or values[1] <= 0:
        raise argparse.ArgumentTypeError(f"--intrinsics {text!r}: focal lengths must be > 0")
    return values


PROMPT_HELP = ("keypoint prompt in image pixels, repeatable (label: MHR-70 index 0..69, -1 = 'not a "
               "point', -2 = Meta's padding/dummy prompt, taken and ignored as its code does); "
               "a value starting with '-' must be joined with '=', e.g. --prompt=-107.5,-41.5,-2")


def prompt(text: str) -> tuple[float, float, int]:
    x, y, label = floats(3, "--prompt x,y,label")(text)
    if not float(label).is_integer():
        raise argparse.ArgumentTypeError(f"--prompt {text!r}: the label must be an integer")
    return x, y, int(label)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (frame numbers, steps, counts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"needs a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"needs a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a frame rate)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (a smoothing strength; 0 turns it off)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value
