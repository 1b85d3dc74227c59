"""Where training data comes from: NumPy arrays, Dask arrays, and files each worker reads itself.

A :class:`Source` is metadata (rows, row shape, dtype) plus the recipe that gets rows
[start, stop) to the worker training on them, without passing through the client when they
need not: a NumPy slice is scattered straight to its worker, Dask chunks move worker to worker,
files (.npy, .npz, Parquet, CSV) are read by the worker itself, and synthetic data is generated
by the worker that trains on it. The client never materialises a file-backed source:
it reads metadata only (a .npy header, Parquet footers, a CSV sample), and table partition
lengths are counted on the cluster.

Modules (each format imports only :mod:`.base`; :mod:`.resolve` chooses among them):

- :mod:`.base`: the :class:`Source` and :class:`ShardReader` interfaces, :func:`check_same_rows`,
  and helpers several formats share (error wording, row ranges, the .npy header)
- :mod:`.arrays`: NumPy arrays in the client's memory (:class:`ArraySource`)
- :mod:`.dask_arrays`: Dask arrays persisted on the cluster (:class:`DaskArraySource`)
- :mod:`.npy`: .npy files (:class:`NpySource`, :func:`from_npy`)
- :mod:`.npz`: arrays of .npz archives (:class:`NpzSource`, :func:`from_npz`)
- :mod:`.synthetic`: generated classification data (:class:`SyntheticSource`, :func:`from_synthetic`)
- :mod:`.tables`: Parquet and CSV tables (:class:`TableSource`, :func:`from_parquet`, :func:`from_csv`)
- :mod:`.resolve`: :func:`as_source`, whatever fit() was given as a Source
"""

from __future__ import annotations

from .arrays import ArraySource
from .base import ShardReader, Source, check_same_rows
from .dask_arrays import DaskArraySource
from .npy import NpySource, from_npy
from .npz import NpzSource, from_npz
from .resolve import as_source
from .synthetic import SYNTHETIC_BLOCK as SYNTHETIC_BLOCK  # importable from here, as before; not in __all__
from .synthetic import SyntheticSource, from_synthetic
from .tables import TableSource, from_csv, from_parquet

__all__ = [
    "Source",
    "ShardReader",
    "ArraySource",
    "DaskArraySource",
    "NpySource",
    "NpzSource",
    "SyntheticSource",
    "TableSource",
    "as_source",
    "from_npy",
    "from_npz",
    "from_synthetic",
    "from_parquet",
    "from_csv",
    "check_same_rows",
]
