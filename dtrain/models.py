"""Keras-style import path: ``from dtrain.models import Sequential, load_model``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .keras_files import load_keras, model_from_keras_config
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


def model_from_json(json_string: str, device: str | None = None) -> Sequential:
    """The (unbuilt, uncompiled) model of ``model.to_json()``, dtrain's or Keras' (Keras'
    ``to_json`` of a Sequential model of the layers dtrain has)."""
    try:
        config = json.loads(json_string)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"model_from_json expected a JSON string of a model, received {json_string!r:.80} ({exc})."
        ) from None
    return model_from_keras_config(config, Sequential, device=device)


__all__ = ["Sequential", "load_model", "model_from_json"]
