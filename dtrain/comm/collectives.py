"""A :class:`~dtrain.comm.base.Communicator` built from a :class:`~dtrain.comm.algorithms.Transport`:
the checks on the buffer, the numbering of calls, and the choice of algorithm live here once for
the Dask and in-memory backends."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import algorithms
from .algorithms import Transport
from .base import CommError


def flat_view(array: Any, backend: str) -> np.ndarray:
    """A 1-D view of a contiguous, writable NumPy array, or a TypeError that says what to pass."""
    if not isinstance(array, np.ndarray):
        hint = (
            " For CuPy arrays use the 'nccl' or 'host-staged' communicator."
            if hasattr(array, "__cuda_array_interface__")
            else ""
        )
        raise TypeError(f"The {backend!r} communicator sums NumPy arrays, received {type(array).__name__}.{hint}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(
            "Collectives work in place on one contiguous, writable buffer; received an array that is "
            f"{'not contiguous' if not array.flags.c_contiguous else 'read-only'}. "
            "Pass the flat gradient buffer itself (or np.ascontiguousarray(a) and copy the result back)."
        )
    if array.dtype.kind not in "fiuc":
        raise TypeError(f"Collectives sum numbers; received an array of dtype {array.dtype}.")
    return array.reshape(-1)


class TransportCommunicator:
    """Allreduce, broadcast and barrier over point-to-point messages.

    Every call takes the next number of a per-communicator sequence, advanced identically on every
    rank because every rank makes the same calls; the number prefixes all tags of the call, so the
    messages of different calls and rounds never mix. Subclasses provide the transport, and
    ``check_abort``/``abort``/``close``.
    """

    name = "transport"
    has_reduce_scatter = True

    def __init__(self, transport: Transport, *, allow_ring: bool = True) -> None:
        self._transport = transport
        self.allow_ring = allow_ring
        self.rank = transport.rank
        self.size = transport.size
        self._seq = 0

    def _tag(self, op: str) -> str:
        if self._seq == 0:
            self._connect()
        self._seq += 1
        return f"{self._seq}.{op}"

    def _connect(self) -> None:
        """Runs on every rank at the start of its first collective (a point all ranks reach in step)."""

    def _sum_small(self, source: np.ndarray, out: np.ndarray) -> bool:
        """A subclass's faster path for small sums (True when it did the sum); none here."""
        return False

    def allreduce(self, array: Any) -> None:
        buf = flat_view(array, self.name)
        tag = self._tag("allreduce")
        self.check_abort()
        if not self._sum_small(buf, buf):
            algorithms.allreduce(self._transport, buf, tag, allow_ring=self.allow_ring)

    def allreduce_into(self, array: Any, out: Any) -> None:
        source, buf = self._separate(array, out, "allreduce_into")
        tag = self._tag("allreduce")
        self.check_abort()
        if not self._sum_small(source, buf):
            algorithms.allreduce_into(self._transport, source, buf, tag, allow_ring=self.allow_ring)

    def reduce_scatter_into(self, array: Any, out: Any) -> slice:
        source, buf = self._separate(array, out, "reduce_scatter_into")
        tag = self._tag("reduce_scatter")
        self.check_abort()
        return algorithms.reduce_scatter_into(self._transport, source, buf, tag)

    def allgather(self, array: Any) -> None:
        buf = flat_view(array, self.name)
        tag = self._tag("allgather")
        self.check_abort()
        algorithms.allgather(self._transport, buf, tag)

    def _separate(self, array: Any, out: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        source, buf = flat_view(array, self.name), flat_view(out, self.name)
        if source.shape != buf.shape or source.dtype != buf.dtype or np.shares_memory(source, buf):
            raise ValueError(
                f"{what} needs two separate buffers of one size and dtype; received {source.size} "
                f"{source.dtype} and {buf.size} {buf.dtype}{' that overlap' if np.shares_memory(source, buf) else ''}."
            )
        return source, buf

    def shared_array(self, size: int, dtype: Any) -> np.ndarray | None:
        return None

    def broadcast(self, array: Any, root: int = 0) -> None:
        if not isinstance(root, int) or not 0 <= root < self.size:
            raise ValueError(f"root={root!r} is not a rank: expected an integer in [0, {self.size}).")
        buf = flat_view(array, self.name)
        tag = self._tag(f"broadcast{root}")
        self.check_abort()
        algorithms.broadcast(self._transport, buf, root, tag)

    def barrier(self) -> None:
        """A one-element allreduce of ones: returns once every rank has contributed, and checks the count."""
        ones = np.ones(1)
        self.allreduce(ones)
        if ones[0] != self.size:
            raise CommError(f"Barrier counted {ones[0]:g} ranks instead of {self.size}: the ranks are out of step.")

    def check_abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"
