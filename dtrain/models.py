"""Keras-style import path: ``from dtrain.models import Sequential, load_model``."""

from __future__ import annotations

import os

from .model import Sequential
from .saving import read_model


def load_model(path: str | os.PathLike, device: str | None = None, compile: bool = True) -> Sequential:
    """Load a model saved with ``model.save``. ``path`` may be the file or the folder holding
    ``model.safetensors`` (a job's output directory), locally or as an fsspec URL
    (``s3://bucket/run``, ``memory://runs/x/model.safetensors``...: the file is downloaded into
    memory). With ``compile`` the optimizer (and its state), loss and metrics come back too, so
    training can continue."""
    return read_model(path, Sequential, device=device, compile=compile)


__all__ = ["Sequential", "load_model"]
