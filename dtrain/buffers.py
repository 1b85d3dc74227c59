"""Reusable work buffers keyed by batch size.

A training step writes its activations and gradients into buffers allocated once per batch
size, so steady-state training allocates nothing. The cache keeps the few sizes in use (the
full batch, the last partial batch, and the evaluation batches) and forgets the least recently
used beyond that, so calling ``predict`` with many different lengths cannot pile up memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BufferCache(Generic[T]):
    def __init__(self, max_sizes: int = 4):
        self.max_sizes = max_sizes
        self._entries: OrderedDict[int, T] = OrderedDict()

    def get(self, size: int, make: Callable[[], T]) -> T:
        """The buffers for ``size``, made by ``make()`` the first time (or after eviction)."""
        entry = self._entries.get(size)
        if entry is None:
            entry = self.put(size, make())
        else:
            self._entries.move_to_end(size)
        return entry

    def put(self, size: int, entry: T) -> T:
        self._entries[size] = entry
        self._entries.move_to_end(size)
        while len(self._entries) > self.max_sizes:
            self._entries.popitem(last=False)
        return entry

    def peek(self, size: int) -> T | None:
        return self._entries.get(size)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
