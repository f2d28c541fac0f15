"""Backend choice, in one place.

``"torch"``: pure PyTorch (``torch._foreach_*`` and tensor ops); every device and
dtype; the reference the kernels are tested against.  ``"triton"``, ``"cuda"``
and ``"cpu"``: fused multi-tensor kernels (``"cuda"`` and ``"cpu"`` are the
same csrc/ kernel templates compiled for the GPU and for the CPU).  ``"auto"``
picks cuda, then triton on CUDA tensors; cpu on CPU tensors; else torch,
silently.  ``CLR_FUSED_BACKEND`` overrides ``"auto"``.  Asking for an
unavailable backend by name raises :class:`BackendUnavailable` with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import _ext

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu")


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run here."""


def check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_unavailable(backend: str, device: torch.device) -> str | None:
    """``None`` when ``backend`` can run on ``device``, else the reason."""
    if backend == "torch":
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        if device.type == "cpu" and not _triton_interpret():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
        if device.type == "cuda" and _triton_interpret():
            return "TRITON_INTERPRET=1 is set, so Triton cannot launch on CUDA tensors"
        from .kernels import triton_available

        return triton_available.why_not()
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
        mod = _ext.load()
        if mod is None:
            return f"the clr_fused extension did not load: {_ext.error()!r}"
        if not mod.HAS_CUDA_KERNELS:
            return "the clr_fused extension was built without CUDA (no nvcc or a CPU-only torch at install time)"
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend needs CPU tensors, got {device.type} tensors"
        if _ext.load() is None:
            return f"the clr_fused extension did not load: {_ext.error()!r}"
        return None
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def _requested(backend: str) -> str:
    """The backend asked for: ``CLR_FUSED_BACKEND`` overrides ``"auto"``."""
    check_name(backend)
    env = os.environ.get("CLR_FUSED_BACKEND", "").strip() if backend == "auto" else ""
    return check_name(env) if env else backend


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device``."""
    backend = _requested(backend)
    if backend == "auto":
        candidates = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}.get(device.type, ())
        for name in candidates:
            if why_unavailable(name, device) is None:
                return name
        return "torch"
    reason = why_unavailable(backend, device)
    if reason is not None:
        raise BackendUnavailable(f"backend={backend!r} is unavailable on {device}: {reason}")
    return backend


#: Parameter dtypes the fused kernels update (complex ones through their real
#: views); anything else (float64) takes the torch backend.
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.complex64)


def resolve_for(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend for parameters of ``dtype`` on ``device``:
    ``"auto"`` sends float64 (and complex128) to ``"torch"``; a fused
    backend asked for by name refuses them with a ValueError."""
    name = resolve(backend, device)
    if name == "torch" or dtype in FUSED_DTYPES:
        return name
    if _requested(backend) == "auto":
        return "torch"
    raise ValueError(
        f"backend={name!r} updates float32, bfloat16 and float16 parameters, got a {dtype} parameter; "
        "use backend='auto' (which sends it to the torch backend) or backend='torch'"
    )
