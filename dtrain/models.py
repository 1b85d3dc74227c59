"""Keras-style import path: ``from dtrain.models import Sequential``."""

from .model import Sequential
from .saving import load_model

__all__ = ["Sequential", "load_model"]
