"""One image sequence among other files of a folder, named by a pattern (stdlib only).

Render and comp folders often hold several sequences side by side (`beauty_0001.png` and
`depth_0001.png`, a thumbnail, a slate): the folder alone does not say which frames are the
clip. A pattern does, in the conventions animators already type: Blender's and Nuke's
`shots/walk_####.png` (at least as many digits as hashes) or printf's `shots/walk_%04d.png`.
A Blender image-sequence datablock gives its pattern through `pattern_of(one frame's file)`.
Both sides use this module: the server reads the frames, the client uploads them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%(0?)(\d*)d")


def _frame_regex(name: str) -> re.Pattern[str] | None:
    """The file-name regex of a pattern's last path part (one frame field), or None."""
    fields = [*_HASHES.finditer(name), *_PRINTF.finditer(name)]
    if len(fields) != 1:
        return None
    field = fields[0]
    if field.group(0).startswith("#"):
        digits = len(field.group(0))
    else:
        digits = int(field.group(2) or 1) if field.group(1) == "0" else 1
    return re.compile(re.escape(name[:field.start()]) + rf"(\d{{{digits},}})" + re.escape(name[field.end():]) + "$",
                      re.IGNORECASE)


def is_sequence_pattern(path: str | os.PathLike[str]) -> bool:
    """`DIR/name_####.ext` or `DIR/name_%04d.ext` (one frame field in the file name); the
    folder need not exist (that is an error for `sequence_files` to name)."""
    return _frame_regex(Path(path).name) is not None


def sequence_files(path: str | os.PathLike[str]) -> list[Path]:
    """The frames a pattern names, in frame-number order; ValueError says what is wrong."""
    pattern = Path(path)
    regex = _frame_regex(pattern.name)
    if regex is None:
        raise ValueError(f"{path} is not an image-sequence pattern (name_####.png or name_%04d.png)")
    if not pattern.parent.is_dir():
        raise ValueError(f"the folder of the image sequence {path} does not exist")
    frames: list[tuple[int, Path]] = []
    for entry in pattern.parent.iterdir():
        match = regex.match(entry.name)
        if match and entry.is_file():
            frames.append((int(match.group(1)), entry))
    if not frames:
        raise ValueError(f"no file of {pattern.parent} matches the image sequence {pattern.name}")
    frames.sort(key=lambda item: (item[0], item[1].name))
    return [entry for _, entry in frames]


def pattern_of(frame_file: str | os.PathLike[str]) -> str:
    """The pattern of the sequence one frame's file belongs to (`walk_0007.png` ->
    `walk_####.png`: the last run of digits in the name, before the extension); ValueError when
    the name has no frame number."""
    path = Path(frame_file)
    match = re.search(r"(\d+)(?!.*\d)", path.stem)
    if match is None:
        raise ValueError(f"{path.name} has no frame number, so it names no image sequence")
    name = path.stem[:match.start()] + "#" * len(match.group(1)) + path.stem[match.end():] + path.suffix
    if _frame_regex(name) is None:  # the name already holds '#' or '%d' of its own
        raise ValueError(f"{path.name}: its sequence cannot be named by a pattern (it holds '#' or '%d')")
    return str(path.with_name(name))


def is_clip_source(path: str | os.PathLike[str]) -> bool:
    """What the server reads as a clip: a movie file, a folder of images, or a sequence
    pattern (no file of that very name) that names at least one frame."""
    from .clip_result import is_video_file

    text = str(path)
    if os.path.isdir(text) or is_video_file(text):
        return True
    if not is_sequence_pattern(text) or os.path.exists(text):
        return False
    try:
        return bool(sequence_files(text))
    except ValueError:
        return False


def natural_key(path: Path) -> list[int | str]:
    """frame2 before frame10 (numbers compared as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def first_frame_file(path: str | os.PathLike[str]) -> str:
    """The file a clip starts with (Blender loads an image sequence from its first file): the
    movie itself, a folder's first image, a pattern's first frame; FileNotFoundError if none."""
    from .clip_result import IMAGE_SUFFIXES

    text = str(path)
    if os.path.isdir(text):
        files = sorted((p for p in Path(text).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if not files:
            raise FileNotFoundError(f"the folder {text} holds no images")
        return str(files[0])
    if is_sequence_pattern(text) and not os.path.exists(text):
        try:
            return str(sequence_files(text)[0])
        except ValueError as exc:
            raise FileNotFoundError(str(exc)) from None
    return text


def clip_title(path: str | os.PathLike[str]) -> str:
    """A clip's name for the objects built from it: the movie's or folder's name, a pattern's
    name without its frame field (`walk_####.png` -> `walk`; `####.png` -> its folder's name)."""
    p = Path(path)
    if is_sequence_pattern(p) and not p.exists():
        stem = _PRINTF.sub("", _HASHES.sub("", Path(p.name).stem)).strip("_.- ")
        return stem or p.parent.name
    return p.stem if p.suffix else p.name
