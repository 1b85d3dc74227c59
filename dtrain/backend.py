"""Array backend: NumPy on CPU, CuPy on a GPU, chosen once per process or per model.

This is the only module that imports CuPy, and it does so only when a GPU is asked for
(``device="gpu"``) or probed for (``device="auto"``). The import error is kept and shown
when a GPU is requested, so the user learns *why* there is no GPU (no CuPy, no CUDA device).
The maths never branches on the device: it takes ``xp`` (``numpy`` or ``cupy``) from a
:class:`Backend`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

DEVICES = ("auto", "cpu", "gpu")
FLOAT_DTYPES = ("float32", "float64")

# A NumPy or a CuPy array: the maths runs unchanged on either (through ``xp``), so it is typed by
# what it does, not by its class. ``np.ndarray`` marks the arrays that are always on the host.
Array = Any

_default_device = os.environ.get("DTRAIN_DEVICE", "auto")
_default_floatx = "float32"
_cupy_probe: tuple[ModuleType | None, str | None] | None = None


@dataclass(frozen=True)
class Backend:
    """An array module and the device it runs on."""

    device: str  # "cpu" or "gpu"
    xp: ModuleType  # numpy or cupy

    @property
    def name(self) -> str:
        return self.xp.__name__

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move ``array`` to this backend's device (a no-op when it is already there)."""
        return self.xp.asarray(array, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU); used for honest timings."""
        if self.device == "gpu":
            self.xp.cuda.get_current_stream().synchronize()


def to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a NumPy array, copying from the GPU if needed."""
    if isinstance(array, np.ndarray):
        return array
    if type(array).__module__.startswith("cupy"):
        return array.get()  # device -> host copy
    return np.asarray(array)


def host_copy(array: Any) -> np.ndarray:
    """A NumPy copy of ``array`` that shares no memory with it (one copy, from either device)."""
    return array.copy() if isinstance(array, np.ndarray) else to_numpy(array)


def host_copy_aside(array: Any) -> np.ndarray:
    """``host_copy``, from a GPU on a non-blocking stream of its own: it does not wait behind the
    work queued on the current stream, which after a failure may be a collective that never ends
    (the caller makes sure the work that wrote ``array`` has finished)."""
    if isinstance(array, np.ndarray) or not type(array).__module__.startswith("cupy"):
        return host_copy(array)
    cupy = sys.modules["cupy"]  # imported already: ``array`` is one of its arrays
    stream = cupy.cuda.Stream(non_blocking=True)
    copy = array.get(stream=stream)
    stream.synchronize()
    return copy


def array_module_of(array: Any) -> ModuleType:
    """NumPy, or CuPy for a CuPy array."""
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def erf_of(xp: ModuleType) -> Any:
    """The error function for arrays of module ``xp`` (SciPy's, or CuPy's for CuPy)."""
    if xp is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf


def _probe_cupy() -> tuple[ModuleType | None, str | None]:
    """Import CuPy and count CUDA devices once; return (cupy or None, reason it is unusable)."""
    global _cupy_probe
    if _cupy_probe is None:
        try:
            import cupy  # noqa: PLC0415  (the one guarded CuPy import of the package)
        except Exception as exc:  # ImportError, or a broken CUDA install raising at import
            _cupy_probe = (None, f"CuPy could not be imported ({type(exc).__name__}: {exc})")
        else:
            try:
                count = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:
                _cupy_probe = (None, f"CuPy found no usable CUDA device ({type(exc).__name__}: {exc})")
            else:
                if count < 1:
                    _cupy_probe = (None, "CuPy is installed but no CUDA device is visible")
                else:
                    _cupy_probe = (cupy, None)
    return _cupy_probe


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _probe_cupy()[0] is not None


def gpu_count() -> int:
    """How many CUDA devices CuPy sees (0 without CuPy or a device)."""
    cupy = _probe_cupy()[0]
    return 0 if cupy is None else int(cupy.cuda.runtime.getDeviceCount())


def device_info() -> dict[str, Any]:
    """What this process can train on: {"gpu": bool, "gpu_index": int | None, "nccl": bool,
    "reason": why there is no GPU}. The GPU index is the physical one (the first entry of
    CUDA_VISIBLE_DEVICES, which dask-cuda sets per worker), used to order ranks."""
    cupy, reason = _probe_cupy()
    if cupy is None:
        return {"gpu": False, "gpu_index": None, "gpu_uid": None, "nccl": False, "reason": reason}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    index = int(visible) if visible.isdigit() else int(cupy.cuda.runtime.getDevice())
    # The PCI bus id tells GPUs apart also when CUDA_VISIBLE_DEVICES names them by UUID (every
    # worker then sees "device 0"): two ranks on one GPU must not use NCCL.
    try:
        uid = cupy.cuda.Device().pci_bus_id
    except Exception:
        uid = f"index-{index}"
    try:
        from cupy.cuda import nccl  # noqa: PLC0415

        has_nccl = bool(getattr(nccl, "available", True))
    except Exception:
        has_nccl = False
    return {"gpu": True, "gpu_index": index, "gpu_uid": uid, "nccl": has_nccl, "reason": None}


def check_device(device: str) -> str:
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"Unknown device {device!r}: expected one of {', '.join(map(repr, DEVICES))}.")
    return device


def set_default_device(device: str) -> None:
    """Set the device that models use when they are created with ``device=None``."""
    global _default_device
    _default_device = check_device(device)


def get_default_device() -> str:
    return _default_device


def get_backend(device: str | None = None) -> Backend:
    """Return the backend for ``device`` ("auto", "cpu" or "gpu"; None means the default).

    "auto" picks the GPU when CuPy and a CUDA device are present, else the CPU.
    "gpu" raises a RuntimeError that says why when there is no usable GPU.
    """
    if device is None:
        try:
            device = check_device(_default_device)
        except ValueError as exc:  # set_default_device validates, so this came from the environment
            raise ValueError(f"{exc} It was read from the DTRAIN_DEVICE environment variable.") from None
    else:
        device = check_device(device)
    if device == "cpu":
        return Backend("cpu", np)
    cupy, reason = _probe_cupy()
    if cupy is not None:
        return Backend("gpu", cupy)
    if device == "auto":
        return Backend("cpu", np)
    raise RuntimeError(
        f"device='gpu' was requested but no GPU can be used: {reason}. "
        "Install the GPU extra (pip install 'dtrain[gpu]') on a machine with an NVIDIA GPU, "
        "or use device='cpu'."
    )


def set_floatx(dtype: str) -> None:
    """Set the default float type of new models: "float32" (default) or "float64"."""
    global _default_floatx
    _default_floatx = check_dtype(dtype)


def floatx() -> str:
    return _default_floatx


def check_dtype(dtype: Any) -> str:
    if dtype is None:
        return _default_floatx
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in FLOAT_DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}: expected one of {', '.join(map(repr, FLOAT_DTYPES))}.")
    return name
