# SPDX-License-Identifier: GPL-3.0-or-later
"""A bounded job queue that takes turns between owners (connections) instead of FIFO.

Each owner has its own FIFO line; `get` serves the owners round-robin, so a client that queued
many jobs gets one turn, then every other waiting client gets one, and so on. The total size is
bounded (a full queue refuses at once, it never blocks the sender) and so is each owner's share.
"""
from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Generic, Hashable, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """``put_nowait(owner, item)`` / ``get(timeout)`` with round-robin between owners."""

    def __init__(self, maxsize: int, max_per_owner: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        if max_per_owner is not None and max_per_owner < 1:
            raise ValueError(f"max_per_owner must be at least 1, got {max_per_owner}")
        self.maxsize = maxsize
        self.max_per_owner = max_per_owner or maxsize
        self._lines: dict[Hashable, collections.deque[T]] = {}
        # Owners with queued items, in turn order; the head is served next.
        self._turns: collections.deque[Hashable] = collections.deque()
        self._size = 0
        self._ready = threading.Condition(threading.Lock())

    def qsize(self) -> int:
        with self._ready:
            return self._size

    def owner_size(self, owner: Hashable) -> int:
        with self._ready:
            line = self._lines.get(owner)
            return len(line) if line else 0

    def put_nowait(self, owner: Hashable, item: T) -> None:
        """Queue ``item`` at the end of ``owner``'s line; `queue.Full` when there is no room
        (in total, or for this owner)."""
        with self._ready:
            line = self._lines.get(owner)
            if self._size >= self.maxsize or (line is not None
                                               and len(line) >= self.max_per_owner):
                raise queue.Full
            if line is None:
                line = self._lines[owner] = collections.deque()
                self._turns.append(owner)
            line.append(item)
            self._size += 1
            self._ready.notify()

    def get(self, timeout: float | None = None) -> T:
        """The next item in round-robin order; `queue.Empty` after ``timeout`` seconds."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size > 0, timeout):
                raise queue.Empty
            owner = self._turns.popleft()
            line = self._lines[owner]
            item = line.popleft()
            self._size -= 1
            if line:
                self._turns.append(owner)  # back of the round: everyone else goes first
            else:
                del self._lines[owner]
            return item

    def remove_owner(self, owner: Hashable) -> list[T]:
        """Take all of ``owner``'s queued items out (it went away) and return them."""
        with self._ready:
            line = self._lines.pop(owner, None)
            if not line:
                return []
            self._turns.remove(owner)
            self._size -= len(line)
            return list(line)

    def remove(self, owner: Hashable, item: Any) -> bool:
        """Take one queued item out (a cancel); False when it is not queued (any more)."""
        with self._ready:
            line = self._lines.get(owner)
            if not line:
                return False
            try:
                line.remove(item)
            except ValueError:
                return False
            self._size -= 1
            if not line:
                del self._lines[owner]
                self._turns.remove(owner)
            return True
