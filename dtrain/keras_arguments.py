"""Keras arguments dtrain does not take: an error that names the argument and says what to do,
instead of Python's bare "unexpected keyword argument" (or, worse, silence)."""

from __future__ import annotations

from typing import Any

# Per method: the Keras 3 arguments dtrain lacks, and what to do instead.
_WHAT_TO_DO: dict[str, dict[str, str]] = {
    "fit": {
        "validation_steps": "validation uses every validation row; pass fewer of them",
        "validation_batch_size": "validation uses the training batch_size",
    },
    "evaluate": {
        "sample_weight": "evaluate the rows of each weight apart, or repeat rows to weight them",
        "steps": "evaluate uses every row; pass fewer of them (x[:n])",
        "callbacks": "evaluate takes no callbacks here",
    },
    "predict": {
        "steps": "predict uses every row; pass fewer of them (x[:n])",
        "callbacks": "predict takes no callbacks here",
    },
    "compile": {
        "loss_weights": "dtrain models have one output and one loss",
        "weighted_metrics": "dtrain's metrics are not weighted by sample_weight: use metrics=",
        "run_eagerly": "dtrain always runs eagerly (NumPy or CuPy calls): leave it out",
        "steps_per_execution": "dtrain runs one step per call: leave it out",
        "jit_compile": "dtrain compiles nothing: leave it out",
        "auto_scale_loss": "dtrain trains in float32 or float64 without loss scaling: leave it out",
    },
}


def refuse_keras_arguments(method: str, arguments: dict[str, Any]) -> None:
    """Raise TypeError for ``arguments`` (the ``**kwargs`` a method caught), naming Keras' ones."""
    if not arguments:
        return
    known = _WHAT_TO_DO.get(method, {})
    parts = []
    for name in arguments:
        if name in known:
            parts.append(f"{name} (a Keras argument dtrain does not support: {known[name]})")
        else:
            parts.append(f"{name} (not an argument of {method}, in Keras or in dtrain)")
    raise TypeError(f"{method}() got unexpected arguments: {'; '.join(parts)}.")
