""":func:`as_source`: whatever fit() was given for x or y, as a Source of the right format."""

from __future__ import annotations

import os
from typing import Any

from .arrays import ArraySource
from .base import Source
from .dask_arrays import DaskArraySource
from .npy import NpySource

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".tsv")
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def as_source(value: Any, role: str) -> Source:
    """``value`` as a Source: a NumPy array (or anything np.asarray takes), a Dask array, a path or
    fsspec URL of a .npy file, or a Source (returned as is). ``role`` names it in messages."""
    if isinstance(value, Source):
        if value.role is None:
            value.role = role
        return value
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        lower = str(text).lower()
        if lower.endswith(".npy"):
            return NpySource(text, role=role)
        if lower.endswith(".npz"):
            raise ValueError(
                f"{role} is the path {str(text)!r}: a .npz archive holds several arrays, so read it with "
                f"x, y = dtrain.from_npz({str(text)!r}, x='x', y='y') and pass both to fit(x, y, ...)."
            )
        is_csv = lower.endswith(_CSV_SUFFIXES)
        if is_csv or lower.endswith(_PARQUET_SUFFIXES) or os.path.isdir(text):
            fn = "from_csv" if is_csv else "from_parquet"
            raise ValueError(
                f"{role} is the path {str(text)!r}: a table holds features and labels together, so read it "
                f"with x, y = dtrain.{fn}({str(text)!r}, label=...) and pass both to fit(x, y, ...)."
            )
        raise ValueError(
            f"{role} is the string {str(text)!r}, which dtrain cannot read: pass an array, a Dask array, "
            f"the path of a .npy file, or sources from dtrain.from_npy / from_npz / from_parquet / from_csv / "
            f"from_synthetic."
        )
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, Source) for v in value):
        raise ValueError(
            f"{role} is a {type(value).__name__} of {len(value)} sources; unpack it first: "
            f"x, y = dtrain.from_csv(...); fit(x, y, ...)."
        )
    if hasattr(value, "__dask_graph__"):
        import dask.array as da

        if isinstance(value, da.Array):
            return DaskArraySource(value, role)
        raise ValueError(
            f"{role} is a {type(value).__name__}, a Dask collection that is not an array: convert it with "
            f".to_dask_array(lengths=True), or read the files with dtrain.from_parquet / from_csv."
        )
    return ArraySource(value, role)
