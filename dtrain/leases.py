"""One writer per checkpoint folder: a lease that a run holds while it trains.

A run that writes checkpoints takes the folder's lease before it starts (``lease.json`` in the
folder: the run's id, who holds it, and a renewal count), renews it every ``RENEW_S`` seconds
while it trains and before every checkpoint, and releases it when it ends. A second run that
finds the lease held waits: if it sees a renewal, the holder is alive and the second run is
refused (two runs writing one folder would interleave their checkpoints, and ``latest`` would go
backwards); if it sees none for ``EXPIRES_S`` seconds, the holder is gone (its process died, or
its ranks stopped when they lost their scheduler) and the lease is taken over. Only counts are
compared, never clocks, so hosts with skewed clocks agree.

A holder that finds the lease taken over (it was frozen longer than EXPIRES_S) stops at once,
before writing anything (``LeaseLostError``): a folder never has two writers.

Checkpoint folders are leased by the run that writes them (``training.checkpointing.folder_lease``);
a job's output folder by the job service, for the job's whole life (:meth:`Lease.held`), so that
two jobs never write one folder, also from two schedulers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .storage import Location

LEASE_FILE = "lease.json"
RENEW_S = 3.0  # a holder renews at least this often while it trains
EXPIRES_S = 15.0  # a lease not renewed for this long (as its next taker sees it) is the holder's no more
POLL_S = 0.5


class LeaseHeldError(RuntimeError):
    """Another run is writing to the folder (its lease was renewed meanwhile)."""


class LeaseLostError(RuntimeError):
    """The run's lease on its folder was taken over: it must not write there again."""


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """A run's lease on folder ``directory`` (a path or URL). Taking it is not atomic: of two runs
    that take a free lease at the same moment, the one whose write lands first finds the other's
    at its first renewal, and every writer renews before it writes."""

    def __init__(self, directory: str, run: str, holder: str | None = None) -> None:
        self.directory, self.run = directory, run
        self.holder = holder or holder_name()
        self._store = Location(directory, what="a directory (a path or an fsspec URL)")
        self._count = 0
        self._renewed = 0.0

    # -- the driver: take it before training, release it at the end -------------------------------
    def take(self, on_wait: Callable[[dict], None] | None = None) -> dict | None:
        """Hold the lease; returns the lease taken over from a gone holder (None when it was free,
        released, or already this run's). Waits up to EXPIRES_S while another holder may be alive;
        LeaseHeldError when it renews meanwhile."""
        held = self._read()
        if held is not None and not held.get("released") and held.get("run") != self.run:
            if on_wait is not None:
                on_wait(held)
            deadline = time.monotonic() + EXPIRES_S
            while time.monotonic() < deadline:
                time.sleep(POLL_S)
                now = self._read()
                if now is None or now.get("released") or now.get("run") == self.run:
                    break
                if (now.get("run"), now.get("count")) != (held.get("run"), held.get("count")):
                    raise LeaseHeldError(
                        f"Another run ({now.get('run')}, on {now.get('holder')}) is writing to {self.directory}: "
                        "wait for it to end, stop it, or choose another folder. (One run writes a folder at a "
                        f"time; its lease lapses {EXPIRES_S:g} s after the run stops.)"
                    )
            else:
                self._write()
                return held
        self._write()
        return None

    def release(self) -> None:
        """Give the lease up (best effort: a lease not released lapses after EXPIRES_S)."""
        try:
            held = self._read()
            if held is not None and held.get("run") == self.run:
                self._write(released=True)
        except Exception:
            pass

    @contextlib.contextmanager
    def held(self, on_wait: Callable[[dict], None] | None = None, on_lost: Callable[[str], None] | None = None):
        """Take the lease, renew it from a thread of its own every RENEW_S while the block runs
        (a writer that renews nothing itself: the job service for a job's output folder),
        release it after. ``on_lost(message)`` hears of a takeover (the block should stop)."""
        self.take(on_wait)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_S):
                try:
                    self.renew()
                except LeaseLostError as exc:
                    if on_lost is not None:
                        on_lost(str(exc))
                    return
                except Exception:  # storage hiccup: the next renewal tries again
                    pass

        thread = threading.Thread(target=renew, name=f"dtrain-lease-{self.run}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=RENEW_S + 1)
            self.release()

    # -- the writer: renew it while training, check it before every write --------------------------
    def keep(self) -> None:
        """Renew the lease if RENEW_S have passed since the last renewal (cheap otherwise)."""
        if time.monotonic() - self._renewed >= RENEW_S:
            self.renew()

    def renew(self) -> None:
        """Renew the lease now; LeaseLostError when another run holds it."""
        held = self._read()
        if held is not None and held.get("run") != self.run:
            raise LeaseLostError(
                f"Run {held.get('run')} (on {held.get('holder')}) took over the folder {self.directory}: "
                f"this run was silent for more than {EXPIRES_S:g} s (frozen, or cut off), and stops without "
                "writing there again."
            )
        self._count = int(held.get("count", 0)) + 1 if held is not None else self._count + 1
        self._write()

    # -- the file -------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self._store.read(LEASE_FILE))
        except FileNotFoundError:
            return None
        except ValueError:  # cut short: nobody's
            return None
        return value if isinstance(value, dict) else None

    def _write(self, released: bool = False) -> None:
        self._store.make()
        lease = {"run": self.run, "holder": self.holder, "count": self._count, "released": released}
        self._store.write(LEASE_FILE, json.dumps(lease).encode())
        self._renewed = time.monotonic()
