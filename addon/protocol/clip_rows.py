"""The rows of a clip result arriving in parts (numpy + stdlib only).

A long clip is never held whole twice: the server's clip job hands its person-frame rows out in
parts as it makes them (`clip_rows` messages on the wire, addon/protocol/wire.py), keeping only
what the shape lock needs, and the receiver joins them here. The per-frame arrays (boxes,
keypoints, camera translation) come while the clip runs, before the total is known: they are
kept as parts and joined once at the end, an array at a time. The arrays made after the shape
lock (skeleton states, locked parameters, correctives) come with the total row count and are
written straight into one array each. Every array must be covered exactly once, rows 0..N-1.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .clip_result import CORRECTIVE_ARRAYS, ROW_ARRAYS

# Row arrays a part may carry: ROW_ARRAYS plus the per-row corrective weights (N, K).
PART_ARRAYS = frozenset(ROW_ARRAYS) | {CORRECTIVE_ARRAYS[0]}


class RowAssembler:
    """Collects parts (`add`) and returns the whole row arrays (`finish`); ValueError names
    what is wrong with a part (unknown array, mismatched rows or dtype, overlap, gap)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self._parts: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._whole: dict[str, np.ndarray] = {}
        self._spans: dict[str, list[tuple[int, int]]] = {}

    def add(self, start: int, arrays: Mapping[str, np.ndarray], total: int | None = None) -> None:
        """Rows start..start+n-1 of each array in `arrays` (all n rows long). With `total`, the
        clip's row count, an array not seen before is allocated whole and filled in place."""
        if not arrays:
            raise ValueError("a clip rows part holds no array")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"a clip rows part must start at a row >= 0, not {start!r}")
        start = int(start)
        if total is not None:
            if self.total is not None and total != self.total:
                raise ValueError(f"clip rows parts disagree on the row count ({self.total} vs {total})")
            self.total = int(total)
        lengths = {name: np.shape(a)[0] if np.ndim(a) else -1 for name, a in arrays.items()}
        n = next(iter(lengths.values()))
        if n < 1 or any(length != n for length in lengths.values()):
            raise ValueError(f"the arrays of a clip rows part must have the same number of rows (>= 1): {lengths}")
        if self.total is not None and start + n > self.total:
            raise ValueError(f"clip rows {start}..{start + n - 1} run past the clip's {self.total} rows")
        for name, value in arrays.items():
            self._add_one(name, start, np.asarray(value), total is not None)

    def _add_one(self, name: str, start: int, array: np.ndarray, sized: bool) -> None:
        if name not in PART_ARRAYS:
            raise ValueError(f"{name!r} is not a row array of a clip result")
        tail = ROW_ARRAYS.get(name)
        if tail is not None and array.shape[1:] != tail:
            raise ValueError(f"clip rows {name!r} have shape {array.shape[1:]} per row, expected {tail}")
        known = self._whole.get(name)
        if known is None and name in self._parts:
            known = self._parts[name][0][1]
        if known is not None and (known.dtype != array.dtype or known.shape[1:] != array.shape[1:]):
            raise ValueError(f"clip rows {name!r}: a part of {array.dtype} {array.shape[1:]} after "
                             f"{known.dtype} {known.shape[1:]}")
        self._spans.setdefault(name, []).append((start, start + len(array)))
        if name in self._whole:
            self._whole[name][start:start + len(array)] = array
        elif sized and name not in self._parts:
            assert self.total is not None
            whole = np.empty((self.total, *array.shape[1:]), dtype=array.dtype)
            whole[start:start + len(array)] = array
            self._whole[name] = whole
        else:
            # A copy, so the received message's buffer is freed as soon as the caller drops it.
            self._parts.setdefault(name, []).append((start, np.array(array, copy=True)))

    def finish(self, total: int) -> dict[str, np.ndarray]:
        """The whole arrays of a clip of `total` rows; the parts are released as they are joined."""
        if self.total is not None and total != self.total:
            raise ValueError(f"the clip result has {total} rows but its parts said {self.total}")
        if total > 0 and not self._spans:
            raise ValueError(f"none of the clip's {total} rows arrived")
        for name, spans in self._spans.items():
            covered = 0
            for lo, hi in sorted(spans):
                if lo != covered:
                    what = "overlap" if lo < covered else "a gap"
                    raise ValueError(f"clip rows {name!r} have {what} at row {min(lo, covered)}")
                covered = hi
            if covered != total:
                raise ValueError(f"clip rows {name!r} cover {covered} of the clip's {total} rows")
        out = dict(self._whole)
        self._whole = {}
        for name in list(self._parts):
            parts = sorted(self._parts.pop(name), key=lambda part: part[0])
            out[name] = np.concatenate([array for _, array in parts])
            del parts
        self._spans = {}
        return out
