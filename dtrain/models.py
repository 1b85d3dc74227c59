"""Keras-style import path: ``from dtrain.models import Sequential, load_model``."""

from __future__ import annotations

import os
from pathlib import Path

from .keras_files import load_keras
from .model import Sequential
from .saving import read_model


def load_model(path: str | os.PathLike, device: str | None = None, compile: bool = True) -> Sequential:
    """Load a model saved with ``model.save``. ``path`` may be the file or the folder holding
    ``model.safetensors`` (a job's output directory), locally or as an fsspec URL
    (``s3://bucket/run``, ``memory://runs/x/model.safetensors``...: the file is downloaded into
    memory). With ``compile`` the optimizer (and its state), loss and metrics come back too, so
    training can continue. A ``.keras`` file (Keras 3's, written by Keras or by dtrain) gives
    its Sequential model, compiled as saved with a fresh optimizer state; nothing in it is run."""
    suffix = Path(path).suffix.lower()
    if suffix == ".keras":
        return load_keras(path, Sequential, device=device, compile=compile)
    if suffix in (".h5", ".hdf5"):
        raise ValueError(
            f"{str(path)!r}: Keras' legacy HDF5 model format (.h5) is not supported; in Keras 3, load it and "
            "model.save('model.keras'), then dtrain.load_model('model.keras')."
        )
    return read_model(path, Sequential, device=device, compile=compile)


__all__ = ["Sequential", "load_model"]
