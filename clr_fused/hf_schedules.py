"""``get_schedule``: the schedules of ``transformers.get_scheduler`` as specs.

Each name gives, step for step, the LR that ``transformers.get_scheduler(name,
optimizer, ...)`` sets with the same arguments, with transformers' float64
operations in its order: closed forms (``constant``; ``linear`` as
``WarmupLinear``; ``cosine``, ``cosine_with_min_lr``,
``cosine_warmup_with_min_lr`` as ``WarmupCosine``; ``inverse_sqrt`` as
``InverseSqrt``), ``warmup_stable_decay`` as ``WarmupStableDecay``, and the
others as a ``LambdaLR`` table over ``0 .. num_training_steps`` whose last
value is what transformers returns from there on.  transformers itself runs
none of them on the device: it builds a ``LambdaLR`` over Python functions.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from .schedules import (
    Constant,
    InverseSqrt,
    LambdaLR,
    Schedule,
    WarmupCosine,
    WarmupLinear,
    WarmupStableDecay,
    _check_int,
    _check_lr,
)

NAMES = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
)  # fmt: skip
METRIC_DRIVEN = ("reduce_lr_on_plateau", "greedy")


def _warmup(k: int, w: int) -> float:
    return float(k) / float(max(1, w))


def _factor_functions(name: str, w: int, total: int | None, base_lr: float, kw: dict[str, Any]):
    """(factor(k), table length) for a table-backed name: the table runs to the
    first step from which transformers' factor is constant (warm-up longer
    than training included: it keeps warming up, then drops)."""
    if name == "cosine_with_restarts":
        nc = kw.get("num_cycles", 1)

        def restarts(k):
            if k < w:
                return _warmup(k, w)
            progress = float(k - w) / float(max(1, total - w))
            if progress >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(nc) * progress) % 1.0))))

        return restarts, w + max(1, total - w) + 1
    if name == "polynomial":
        lr_end, power = kw.get("lr_end", 1e-7), kw.get("power", 1.0)
        if not base_lr > lr_end:
            raise ValueError(f"lr_end ({lr_end}) must be smaller than base_lr ({base_lr})")
        if total == w:
            # transformers divides by num_training_steps - num_warmup_steps at that step
            raise ValueError(
                f"polynomial needs num_training_steps != num_warmup_steps (both {w}): transformers divides by their difference"
            )

        def poly(k):
            if k < w:
                return _warmup(k, w)
            if k > total:
                return lr_end / base_lr
            pct_remaining = 1 - (k - w) / (total - w)
            return ((base_lr - lr_end) * pct_remaining**power + lr_end) / base_lr

        return poly, max(total + 2, w + 1)
    if name == "constant_with_warmup":
        return (lambda k: float(k) / float(max(1.0, w)) if k < w else 1.0), w + 1
    raise AssertionError(name)


# The keywords transformers' schedule functions take besides the optimizer and
# the two step counts (an unknown one is its TypeError); constant and
# constant_with_warmup are called without them (ignored there, so here).
_KEYWORDS = {
    "linear": ("get_linear_schedule_with_warmup", ()),
    "cosine": ("get_cosine_schedule_with_warmup", ("num_cycles",)),
    "cosine_with_restarts": ("get_cosine_with_hard_restarts_schedule_with_warmup", ("num_cycles",)),
    "polynomial": ("get_polynomial_decay_schedule_with_warmup", ("lr_end", "power")),
    "inverse_sqrt": ("get_inverse_sqrt_schedule", ("timescale",)),
    "cosine_with_min_lr": ("get_cosine_with_min_lr_schedule_with_warmup", ("num_cycles", "min_lr", "min_lr_rate")),
    "cosine_warmup_with_min_lr": ("get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
                                  ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate")),
    "warmup_stable_decay": ("get_wsd_schedule", ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type",
                                                 "min_lr_ratio", "num_cycles")),
}  # fmt: skip


def _keywords(name: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """``scheduler_specific_kwargs`` as transformers takes them for ``name``."""
    if name not in _KEYWORDS:
        return {}
    func, known = _KEYWORDS[name]
    kw = dict(given or {})
    for key in kw:
        if key not in known and key != "last_epoch":
            raise TypeError(f"{func}() got an unexpected keyword argument {key!r}")
    last_epoch = kw.pop("last_epoch", -1)
    if last_epoch != -1:
        raise ValueError(
            f"last_epoch={last_epoch!r}: the schedule's step is the optimizer's counter here; "
            "resume by loading the optimizer's state_dict (or setting optimizer.schedule_step)"
        )
    return kw


def get_schedule(
    name: str,
    base_lr: float,
    num_warmup_steps: int | None = None,
    num_training_steps: int | None = None,
    scheduler_specific_kwargs: dict[str, Any] | None = None,
) -> Schedule:
    """The spec for ``transformers.get_scheduler(name, optimizer, num_warmup_steps,
    num_training_steps, scheduler_specific_kwargs)`` on an optimizer with
    ``lr=base_lr`` (see the module docstring)."""
    name = getattr(name, "value", name)  # a transformers.SchedulerType
    if name in METRIC_DRIVEN:
        raise ValueError(
            f"{name!r} is driven by a metric, not the step: use clr_fused.ReduceLROnPlateau and optimizer.report()"
        )
    if name not in NAMES:
        raise ValueError(f"unknown schedule name {name!r}; known: {list(NAMES)}")
    base_lr = _check_lr("base_lr", base_lr)
    kw = _keywords(name, scheduler_specific_kwargs)
    if name == "constant":
        return Constant(base_lr)
    if num_warmup_steps is None:
        raise ValueError(f"{name} requires num_warmup_steps")
    w = _check_int("num_warmup_steps", num_warmup_steps, 0, "an integer number of steps >= 0")
    if name == "warmup_stable_decay":
        decay = kw.pop("num_decay_steps", None)
        if decay is None:
            raise ValueError("warmup_stable_decay needs num_decay_steps in scheduler_specific_kwargs")
        stable = kw.pop("num_stable_steps", None)
        if stable is None:
            if num_training_steps is None:
                raise ValueError("warmup_stable_decay needs num_training_steps or num_stable_steps")
            # negative where the decay is longer than the steps after warm-up: as in
            # transformers, the decay then starts part-way through
            stable = (
                _check_int("num_training_steps", num_training_steps, 0, "an integer number of steps >= 0") - w - decay
            )
        elif num_training_steps is not None:
            warnings.warn(
                "Both num_training_steps and num_stable_steps are specified. num_stable_steps will be used.",
                stacklevel=2,
            )
        return WarmupStableDecay(base_lr, w, stable, decay, **kw)
    if name == "inverse_sqrt":
        return InverseSqrt(base_lr, w, kw.get("timescale"))
    total = None
    if name != "constant_with_warmup":
        if num_training_steps is None:
            raise ValueError(f"{name} requires num_training_steps (on the device its LR is a table of that length)")
        total = _check_int("num_training_steps", num_training_steps, 1, "a positive integer number of steps")
    if name == "linear":
        return WarmupLinear(base_lr, w, total)
    if name in ("cosine", "cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        rate = 0.0
        if name != "cosine":
            min_lr, rate = kw.get("min_lr"), kw.get("min_lr_rate")
            if min_lr is not None and rate is not None:
                raise ValueError("Only one of min_lr or min_lr_rate should be set")
            if min_lr is not None:
                rate = min_lr / base_lr
            elif rate is None:
                raise ValueError(f"{name} needs min_lr or min_lr_rate in scheduler_specific_kwargs")
        return WarmupCosine(base_lr, w, total, kw.get("num_cycles", 0.5), rate, shifted=name == "cosine_warmup_with_min_lr",
                            warmup_lr_rate=kw.get("warmup_lr_rate") if name == "cosine_warmup_with_min_lr" else None)  # fmt: skip
    factor, n = _factor_functions(name, w, total, base_lr, kw)
    return LambdaLR(base_lr, factor, n)
