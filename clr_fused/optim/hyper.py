"""The hyperparameter checks torch's optimizers make, with torch's messages
(numpy scalars accepted, bools not), and torch's implementation switches
mapped onto our backends.  Shared by the optimizers' constructors,
``add_param_group`` and ``load_state_dict``."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..schedules import Schedule
from ..schedules import _is_number as _is_real  # numpy scalars accepted, bools not (as torch)


def _check_lr_value(lr: Any, *, read_tensor: bool = True) -> None:
    """torch's checks and messages for an ``lr``, plus our schedule specs.
    ``read_tensor=False``: a tensor's value is not read (a tensor assigned to
    ``group["lr"]`` between steps must not cost a device sync)."""
    if isinstance(lr, Schedule):
        return
    if isinstance(lr, Tensor):
        # torch's capturable idiom; its value is read on the device every step, checked once here as torch does
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise ValueError(f"a tensor lr must be a floating tensor, got {lr.dtype}")
        if not read_tensor or lr.device.type == "meta":
            return
        lr_value = float(lr.detach())
        if not lr_value >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr_value} (lr must be >= 0)")
        return
    if not _is_real(lr):
        raise ValueError(f"lr must be a finite float >= 0 or a clr_fused schedule spec, got {lr!r}")
    if not 0.0 <= lr or not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr} (lr must be a finite number >= 0)")


def backend_from_torch_flags(backend: str, cls_name: str, *, foreach=None, fused=None, differentiable=False) -> str:
    """torch's implementation switches, mapped onto ours: ``fused=True`` ->
    the fused kernels (``backend="auto"``, or the fused backend named);
    ``foreach=True`` -> ``"torch"`` (our foreach reference path); ``False`` /
    ``None`` change nothing; ``differentiable=True`` is refused."""
    if differentiable:
        raise NotImplementedError(
            f"differentiable=True is not supported by clr_fused.{cls_name}: its step updates in place, outside "
            f"autograd; use torch.optim.{cls_name}(..., differentiable=True)"
        )
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot both be set")
    if fused and backend == "torch":
        raise ValueError("fused=True asks for the fused kernels, backend='torch' for the reference path: pick one")
    if foreach and backend not in ("auto", "torch"):
        raise ValueError(f"foreach=True means backend='torch' (the foreach reference path), got backend={backend!r}")
    return "torch" if foreach else backend
