"""Run folders: each run of a job writes into a folder of its own inside the job's output
location, ``OUTPUT/<run>/``, so that running a job again never overwrites an earlier run and the
checkpoints of two runs never mix.

A run's name is the UTC time it was submitted and a random suffix (``20261208-001503-3fa2c1``):
names sort in time order, so the newest run is the greatest name. What reads an output location
(``dtrain.load_model(OUTPUT)``, ``dtrain report OUTPUT``, ``dtrain resume OUTPUT``) takes the
newest run; given a run folder itself (``OUTPUT/<run>``), it takes that one. An output location
written before run folders existed holds its one run's files directly: it is read as it is.
"""

from __future__ import annotations

import os
import re
import secrets
import time

from .storage import Location

RUN_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def new_run_name(now: float | None = None) -> str:
    """A fresh run name: the UTC time (to the second) and 6 random hex digits."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"


def run_location(output: str | os.PathLike, run: str) -> str:
    """Where run ``run`` of the output location ``output`` writes: a path, or a URL."""
    return Location(os.fspath(output)).where(run)


def run_names(output: str | os.PathLike) -> list[str]:
    """The runs in the output location, oldest first ([] where there is none, or no folder)."""
    return sorted(name for name in Location(os.fspath(output)).names() if RUN_NAME.match(name))


def is_run_folder(location: str | os.PathLike) -> bool:
    """Whether ``location`` names a run folder itself (its last part is a run's name)."""
    text = os.fspath(location).rstrip("/").rstrip(os.sep)
    return bool(RUN_NAME.match(re.split(r"[/\\]", text)[-1]))


def resolve_run(output: str | os.PathLike, holding: str) -> str:
    """The folder to read a run's file ``holding`` from: ``output`` itself where it holds that
    file (a run folder given directly, or an output written before run folders), else the newest
    run folder inside it; ``output`` unchanged when it has no runs (the caller then says what is
    missing there)."""
    text = os.fspath(output)
    if Location(text).exists(holding):
        return text
    runs = run_names(text)
    return run_location(text, runs[-1]) if runs else text
