"""Learning-rate schedule specs that mirror ``torch.optim.lr_scheduler``.

A spec is small and immutable: it validates its arguments, knows its flat
encoding (``rows()``, see ``schedule_math.py``) and evaluates itself:

* ``sched(step)`` with a Python ``int`` -> Python ``float`` (float64 math);
* ``sched(step)`` with an integer tensor -> float32 tensor on that device,
  computed with tensor ops only (no host sync).

Step ``k`` (0-based) is the LR applied by the k-th update: the value that
``optimizer.param_groups[g]["lr"]`` holds before the k-th ``optimizer.step()``
when the matching torch scheduler is stepped after every update.  Every length
is counted in optimizer steps.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from . import schedule_math as sm

__all__ = [
    "Schedule",
    "CyclicLR",
    "OneCycleLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "ExponentialLR",
    "StepLR",
    "MultiStepLR",
    "PolynomialLR",
    "LinearLR",
    "ConstantLR",
    "SequentialLR",
    "ReduceLROnPlateau",
    "LambdaLR",
    "WarmupStableDecay",
    "WarmupCosine",
    "InverseSqrt",
    "WarmupLinear",
    "schedule_from_dict",
]


# ---------------------------------------------------------------- validation
# The checks return the value normalised (numpy scalars -> Python numbers);
# each spec stores what they return (``_norm``), so its rows, its dict form
# and its evaluation see plain ints and floats.
def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_lr(name: str, v) -> float:
    if not _is_number(v) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _check_positive(name: str, v) -> float:
    if not _is_number(v) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _check_int(name: str, v, low: int, what: str) -> int:
    """An integer in [low, sm.MAX_INT]: the rows hold integers as float64 and
    the step arithmetic is int64, so larger values are refused, not wrapped."""
    if not _is_int(v) or not low <= int(v) <= sm.MAX_INT:
        raise ValueError(f"{name} must be {what} <= 2**53, got {v!r}")
    return int(v)


def _check_length(name: str, v) -> int:
    return _check_int(name, v, 1, "a positive integer number of steps")


def _check_unit(name: str, v, *, low_open=True, high_open=True) -> float:
    ok = _is_number(v) and math.isfinite(v)
    if ok:
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {v!r}")
    return float(v)


def _check_choice(name: str, v, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")
    return v


def _check_int_list(name: str, v, low: int) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"{name} must be a sequence of integers, got {v!r}")
    out = tuple(v)
    for m in out:
        if not _is_int(m) or not low <= int(m) <= sm.MAX_INT:
            raise ValueError(f"{name} must hold integers in [{low}, 2**53], got {list(out)}")
    return tuple(int(m) for m in out)


def _norm(spec, name: str, check, *args, **kwargs) -> None:
    """Validate field ``name`` of a frozen spec and store the normalised value."""
    object.__setattr__(spec, name, check(name, getattr(spec, name), *args, **kwargs))


# ---------------------------------------------------------------- base class
class Schedule:
    """Base of every spec: evaluation, encoding and serialisation."""

    #: True where the spec also cycles SGD's momentum / Adam's beta1.
    cycles_momentum: ClassVar[bool] = False

    def rows(self) -> list[list[float]]:
        """The flat encoding: a list of ``ROW_WIDTH``-long rows (segments; then
        a table's values, see ``schedule_math.pack``).  Built once per spec (a
        spec is frozen; a LambdaLR's rows are large): callers must not modify it."""
        cached = self.__dict__.get("_rows")
        if cached is None:
            cached = sm.pack(self.segments())
            object.__setattr__(self, "_rows", cached)
        return cached

    def segments(self) -> list[tuple[list[float], tuple[float, ...] | None]]:
        """``(row, table or None)`` per segment."""
        return [(self._row(), None)]

    def _row(self) -> list[float]:
        raise NotImplementedError

    @property
    def initial_lr(self) -> float:
        return float(self(0))

    def _evaluate(self, step):
        if isinstance(step, torch.Tensor):
            if step.dtype.is_floating_point or step.dtype.is_complex or step.dtype == torch.bool:
                raise TypeError(f"step must be an integer tensor, got dtype {step.dtype}")
            # float64 math, rounded once to the float32 value the kernels apply
            lr, mom = sm.evaluate_rows(self.rows(), step.to(torch.int64), sm.TORCH_OPS)
            return lr.to(torch.float32), None if mom is None else mom.to(torch.float32)
        if not _is_int(step):
            raise TypeError(f"step must be an int or an integer tensor, got {type(step).__name__}")
        if not 0 <= int(step) <= sm.MAX_INT:
            raise ValueError(f"step must be in [0, 2**53], got {step}")
        return sm.evaluate_rows(self.rows(), int(step), sm.PY_OPS)

    # torch.optim's optimizers compare and convert their lr (``0.0 <= lr``,
    # ``float(lr)``): a spec handed to one gets an error that says where it goes.
    def _not_for_torch(self, *_):
        raise TypeError(
            f"{type(self).__name__} is a clr_fused schedule spec: pass it as the lr of clr_fused.SGD, "
            "clr_fused.Adam or clr_fused.AdamW (e.g. clr_fused.SGD(params, lr=spec, momentum=0.9)), "
            "not to a torch.optim optimizer, which takes a number"
        )

    __lt__ = __le__ = __gt__ = __ge__ = __float__ = _not_for_torch

    def __call__(self, step):
        """The LR that the ``step``-th update (0-based) applies."""
        return self._evaluate(step)[0]

    def momentum(self, step):
        """The cycled momentum / beta1 at ``step``, or ``None`` if not cycled."""
        if not self.cycles_momentum:
            return None
        return self._evaluate(step)[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (safe for ``torch.load(weights_only=True)``)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, tuple) and v and isinstance(v[0], Schedule):
                v = [s.to_dict() for s in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def _row(kind: int, *params: float, start: int = 0) -> list[float]:
    if len(params) > sm.NUM_PARAMS:
        raise ValueError(f"too many schedule parameters ({len(params)} > {sm.NUM_PARAMS})")
    return [float(start), float(kind), *map(float, params)] + [0.0] * (sm.NUM_PARAMS - len(params))


@dataclass(frozen=True)
class Constant(Schedule):
    """A fixed LR; what a plain float ``lr`` becomes inside the optimizers."""

    lr: float

    def __post_init__(self):
        _norm(self, "lr", _check_lr)

    def _row(self):
        return _row(sm.KIND_CONSTANT, self.lr)


# ---------------------------------------------------------------- cyclical
_CYCLIC_MODES = {
    "triangular": sm.CYCLIC_TRIANGULAR,
    "triangular2": sm.CYCLIC_TRIANGULAR2,
    "exp_range": sm.CYCLIC_EXP_RANGE,
}


@dataclass(frozen=True)
class CyclicLR(Schedule):
    r"""Cyclical learning rate (Smith, 2017), as ``torch.optim.lr_scheduler.CyclicLR``.

    With ``total = step_size_up + step_size_down``, ``cycle = k // total + 1``
    and ``pos = k % total``::

        scale = pos / up                 if pos <= up
              = (total - pos) / down     otherwise
        amp   = 1 (triangular) | 0.5**(cycle - 1) (triangular2) | gamma**k (exp_range)
        lr    = base_lr + (max_lr - base_lr) * scale * amp
        mom   = max_momentum - (max_momentum - base_momentum) * scale * amp

    ``cycle_momentum=True`` overrides SGD's ``momentum`` / Adam's ``beta1`` with
    ``mom``, exactly as torch does; an SGD built with ``momentum=0`` then
    runs with momentum (torch turns it on too).  ``scale_mode`` is accepted
    for signature compatibility; as in torch, the built-in modes fix it
    (``"cycle"`` for triangular/triangular2, ``"iterations"`` for exp_range).
    A custom ``scale_fn`` cannot run on the device and is not supported.
    """

    base_lr: float
    max_lr: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Any = None  # torch's argument (in its position): refused, see __post_init__
    scale_mode: str | None = None
    cycle_momentum: bool = True
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "max_lr", _check_lr)
        if self.max_lr < self.base_lr:
            raise ValueError(f"max_lr must be >= base_lr ({self.base_lr}), got {self.max_lr}")
        _norm(self, "step_size_up", _check_length)
        if self.step_size_down is not None:
            _norm(self, "step_size_down", _check_length)
        if self.scale_fn is not None or callable(self.mode):
            raise ValueError(
                "a custom scale_fn is not supported (it cannot run on the device); "
                "mode must be one of ['triangular', 'triangular2', 'exp_range']"
            )
        _norm(self, "mode", _check_choice, list(_CYCLIC_MODES))
        _norm(self, "gamma", _check_positive)
        if self.scale_mode is not None:
            _norm(self, "scale_mode", _check_choice, ["cycle", "iterations"])
        if self.cycle_momentum:
            _norm(self, "base_momentum", _check_unit, low_open=False)
            _norm(self, "max_momentum", _check_unit, low_open=False)
            if self.max_momentum < self.base_momentum:
                raise ValueError(
                    f"max_momentum must be >= base_momentum ({self.base_momentum}), got {self.max_momentum}"
                )

    @property
    def cycles_momentum(self) -> bool:  # type: ignore[override]
        return bool(self.cycle_momentum)

    @property
    def step_size_down_(self) -> int:
        return self.step_size_up if self.step_size_down is None else self.step_size_down

    def _row(self):
        return _row(
            sm.KIND_CYCLIC,
            self.base_lr,
            self.max_lr,
            self.step_size_up,
            self.step_size_down_,
            _CYCLIC_MODES[self.mode],
            self.gamma,
            self.base_momentum,
            self.max_momentum,
        )

    @classmethod
    def from_range_test(cls, result, step_size_up: int | None = None, *, iters_per_epoch: int | None = None, **kwargs):
        """A CyclicLR with the bounds suggested by an LR range test.

        ``step_size_up`` defaults to 4 epochs' worth of iterations (the paper
        advises 2-10), which needs ``iters_per_epoch``.
        """
        suggestion = result.suggest()
        if step_size_up is None:
            if iters_per_epoch is None:
                raise ValueError("pass step_size_up, or iters_per_epoch to default it to 4 epochs of iterations")
            step_size_up = 4 * _check_length("iters_per_epoch", iters_per_epoch)
        return cls(base_lr=suggestion.base_lr, max_lr=suggestion.max_lr, step_size_up=step_size_up, **kwargs)


@dataclass(frozen=True)
class OneCycleLR(Schedule):
    """1-cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR``.

    Starts at ``max_lr / div_factor``, anneals up to ``max_lr`` over the first
    ``pct_start`` of ``total_steps``, then down to ``initial / final_div_factor``
    (with ``three_phase``: back to the initial LR, then down).  Past
    ``total_steps`` it holds the final LR instead of raising.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self):
        _norm(self, "max_lr", _check_lr)
        _norm(self, "total_steps", _check_length)
        _norm(self, "pct_start", _check_unit)
        _norm(self, "anneal_strategy", _check_choice, ["cos", "linear"])
        _norm(self, "div_factor", _check_positive)
        _norm(self, "final_div_factor", _check_positive)
        if self.cycle_momentum:
            _norm(self, "base_momentum", _check_unit, low_open=False)
            _norm(self, "max_momentum", _check_unit, low_open=False)
        end1, end2 = self._ends()
        last = self.total_steps - 1
        if not 0 < end1 < last or (self.three_phase and not end1 < end2 < last):
            raise ValueError(
                f"pct_start={self.pct_start} with total_steps={self.total_steps} leaves a phase with no steps; "
                "need pct_start * total_steps > 1 and every phase at least one step long"
            )

    @property
    def cycles_momentum(self) -> bool:  # type: ignore[override]
        return bool(self.cycle_momentum)

    def _ends(self) -> tuple[float, float]:
        # Phase ends exactly as torch computes them (floats).
        end1 = float(self.pct_start * self.total_steps) - 1
        end2 = float(2 * self.pct_start * self.total_steps) - 2 if self.three_phase else float(self.total_steps - 1)
        return end1, end2

    def _row(self):
        initial = self.max_lr / self.div_factor
        end1, end2 = self._ends()
        return _row(
            sm.KIND_ONE_CYCLE,
            initial,
            self.max_lr,
            initial / self.final_div_factor,
            end1,
            end2,
            float(self.three_phase),
            float(self.anneal_strategy == "linear"),
            self.base_momentum,
            self.max_momentum,
            self.total_steps,
        )


# ---------------------------------------------------------------- annealing
@dataclass(frozen=True)
class CosineAnnealingLR(Schedule):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * k / T_max)) / 2``.

    Past ``T_max`` the cosine goes on (period ``2 * T_max``), as torch's does.
    """

    base_lr: float
    T_max: int
    eta_min: float = 0.0

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "T_max", _check_length)
        _norm(self, "eta_min", _check_lr)

    def _row(self):
        return _row(sm.KIND_COSINE, self.base_lr, self.T_max, self.eta_min)


@dataclass(frozen=True)
class CosineAnnealingWarmRestarts(Schedule):
    """SGDR: cosine from ``base_lr`` to ``eta_min`` over ``T_0 * T_mult**n`` steps, restarting."""

    base_lr: float
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "T_0", _check_length)
        _norm(self, "T_mult", _check_int, 1, "an integer >= 1")
        _norm(self, "eta_min", _check_lr)

    def _row(self):
        return _row(sm.KIND_WARM_RESTARTS, self.base_lr, self.T_0, self.T_mult, self.eta_min)


@dataclass(frozen=True)
class ExponentialLR(Schedule):
    """``base_lr * gamma**k``."""

    base_lr: float
    gamma: float

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "gamma", _check_positive)

    def _row(self):
        return _row(sm.KIND_EXPONENTIAL, self.base_lr, self.gamma)


@dataclass(frozen=True)
class StepLR(Schedule):
    """``base_lr * gamma**(k // step_size)``."""

    base_lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "step_size", _check_length)
        _norm(self, "gamma", _check_positive)

    def _row(self):
        return _row(sm.KIND_STEP, self.base_lr, self.step_size, self.gamma)


@dataclass(frozen=True)
class MultiStepLR(Schedule):
    """``base_lr * gamma**(number of milestones <= k)``."""

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "milestones", _check_int_list, 0)
        ms = self.milestones
        if list(ms) != sorted(ms):
            raise ValueError(f"milestones must be sorted in increasing order, got {list(ms)}")
        if len(ms) > sm.MAX_MILESTONES:
            raise ValueError(f"milestones may hold at most {sm.MAX_MILESTONES} entries, got {len(ms)}")
        _norm(self, "gamma", _check_positive)

    def _row(self):
        return _row(sm.KIND_MULTI_STEP, self.base_lr, self.gamma, len(self.milestones), *self.milestones)


@dataclass(frozen=True)
class PolynomialLR(Schedule):
    """``base_lr * (1 - min(k, total_iters) / total_iters)**power``."""

    base_lr: float
    total_iters: int = 5
    power: float = 1.0

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "total_iters", _check_length)
        _norm(self, "power", _check_lr)

    def _row(self):
        return _row(sm.KIND_POLYNOMIAL, self.base_lr, self.total_iters, self.power)


@dataclass(frozen=True)
class LinearLR(Schedule):
    """Warm-up ramp: ``base_lr * (start + (end - start) * min(k, total_iters) / total_iters)``."""

    base_lr: float
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "start_factor", _check_unit, high_open=False)
        _norm(self, "end_factor", _check_unit, low_open=False, high_open=False)
        _norm(self, "total_iters", _check_length)

    def _row(self):
        return _row(sm.KIND_LINEAR, self.base_lr, self.start_factor, self.end_factor, self.total_iters)


@dataclass(frozen=True)
class ConstantLR(Schedule):
    """``base_lr * factor`` for ``k < total_iters``, then ``base_lr``."""

    base_lr: float
    factor: float = 1.0 / 3
    total_iters: int = 5

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "factor", _check_unit, low_open=False, high_open=False)
        _norm(self, "total_iters", _check_length)

    def _row(self):
        return _row(sm.KIND_CONSTANT_FACTOR, self.base_lr, self.factor, self.total_iters)


# ---------------------------------------------------------------- composition
@dataclass(frozen=True)
class SequentialLR(Schedule):
    """Schedule ``i`` runs from ``milestones[i-1]`` on and sees ``k - milestones[i-1]``."""

    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def __post_init__(self):
        scheds = tuple(self.schedules)
        object.__setattr__(self, "schedules", scheds)
        _norm(self, "milestones", _check_int_list, 1)
        ms = self.milestones
        if not scheds or not all(isinstance(s, Schedule) for s in scheds):
            raise ValueError("schedules must be a non-empty sequence of clr_fused schedule specs")
        if len(ms) != len(scheds) - 1:
            raise ValueError(f"milestones must have len(schedules) - 1 = {len(scheds) - 1} entries, got {len(ms)}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {list(ms)}")
        for s in scheds:
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError("schedules may not contain ReduceLROnPlateau (it is not a function of the step)")
            if s.cycles_momentum:
                raise ValueError(
                    f"schedules may not cycle momentum inside SequentialLR ({type(s).__name__}); "
                    "build it with cycle_momentum=False"
                )
        if len(self.segments()) > sm.MAX_SEGMENTS:
            raise ValueError(f"schedules flatten to more than {sm.MAX_SEGMENTS} pieces")

    def segments(self):
        starts = (0, *self.milestones)
        ends = (*self.milestones, None)
        out = []
        for sched, start, end in zip(self.schedules, starts, ends):
            for row, table in sched.segments():
                seg_start = start + int(row[0])
                if end is not None and seg_start >= end:
                    continue  # a nested piece that the next milestone cuts off
                out.append(([float(seg_start), *row[1:]], table))
        return out


# ---------------------------------------------------------------- performance based
@dataclass(frozen=True)
class ReduceLROnPlateau(Schedule):
    """Reduce the LR by ``factor`` once the reported metric stops improving.

    The live LR, the best metric and the counters are device tensors inside
    the optimizer; ``optimizer.report(metric_tensor)`` updates them without a
    host sync.  Evaluated on its own, the spec gives ``base_lr``.
    """

    base_lr: float
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "mode", _check_choice, ["min", "max"])
        _norm(self, "factor", _check_unit, low_open=False)
        for name in ("patience", "cooldown"):
            _norm(self, name, _check_int, 0, "an integer >= 0")
        _norm(self, "threshold", _check_lr)
        _norm(self, "threshold_mode", _check_choice, ["rel", "abs"])
        _norm(self, "min_lr", _check_lr)
        _norm(self, "eps", _check_lr)

    def _row(self):
        return _row(sm.KIND_PLATEAU, self.base_lr)


# ---------------------------------------------------------------- sampled
def _sample(name: str, fn, n: int) -> tuple[float, ...]:
    out = []
    for k in range(n):
        try:
            v = fn(k)
        except Exception as exc:  # the user's function: named, with what it raised
            raise ValueError(f"{name}({k}) raised {type(exc).__name__}: {exc}") from exc
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}({k}) must be a finite number >= 0, got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True, repr=False)
class LambdaLR(Schedule):
    """``torch.optim.lr_scheduler.LambdaLR``: ``base_lr * lr_lambda(k)``.

    ``lr_lambda`` (any deterministic function of the step, or the sequence of
    its values) is sampled once, here, in float64 for ``k = 0 .. total_steps-1``
    into a table the kernels read one entry of per step; past ``total_steps``
    the LR holds the last value.  The spec keeps the sampled values (so it
    round-trips through state dicts and copies, and equal tables compare equal).
    """

    base_lr: float
    lr_lambda: Any
    total_steps: int

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        n = _check_int("total_steps", self.total_steps, 1, f"an integer number of steps <= {sm.MAX_TABLE}")
        if n > sm.MAX_TABLE:
            raise ValueError(f"total_steps must be at most 2**24 (the table's size), got {n}")
        object.__setattr__(self, "total_steps", n)
        f = self.lr_lambda
        if callable(f):
            values = _sample("lr_lambda", f, n)
        elif isinstance(f, (str, bytes)) or not hasattr(f, "__len__"):
            raise ValueError(f"lr_lambda must be a function of the step or a sequence of factors, got {f!r}")
        elif len(f) != n:
            raise ValueError(f"lr_lambda: a sequence of factors must hold total_steps = {n} values, got {len(f)}")
        else:
            values = _sample("lr_lambda", lambda k: f[k], n)
        object.__setattr__(self, "lr_lambda", values)

    def __repr__(self):
        v = self.lr_lambda
        return f"LambdaLR(base_lr={self.base_lr}, lr_lambda=<{len(v)} factors {v[0]:.6g} .. {v[-1]:.6g}>, total_steps={self.total_steps})"

    def segments(self):
        return [(_row(sm.KIND_TABLE, self.base_lr, self.total_steps, 0), self.lr_lambda)]


_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def _wsd_factor(
    k: int, w: int, s: int, d: int, warmup_type: str, decay_type: str, min_lr_ratio: float, num_cycles: float
) -> float:
    """transformers' WSD factor at step k (its float64 operations, in its order)."""
    if k < w:
        progress = float(k) / float(max(1, w))
        if warmup_type == "linear":
            factor = progress
        elif warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:
            factor = 1.0 - math.sqrt(1.0 - progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if k < w + s:
        return 1.0
    if k < w + s + d:
        progress = float(k - w - s) / float(max(1, d))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        else:
            factor = 1.0 - math.sqrt(progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


@dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    """Warm-up, stable, decay (``transformers.get_wsd_schedule``, same argument
    names and values); holds ``min_lr_ratio * base_lr`` after the decay.

    Evaluated as transformers' own float64 operations, sampled into a table
    (the ``LambdaLR`` kind) over the ``num_warmup_steps + num_stable_steps +
    num_decay_steps`` steps; past them the table's last value is exactly what
    transformers returns there.
    """

    base_lr: float
    num_warmup_steps: int
    num_stable_steps: int
    num_decay_steps: int
    warmup_type: str = "linear"
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        for name in ("num_warmup_steps", "num_decay_steps"):
            _norm(self, name, _check_int, 0, "an integer number of steps >= 0")
        # negative as transformers computes it for a decay longer than the steps after
        # warm-up (num_training_steps - warm-up - decay): the decay starts part-way
        _norm(self, "num_stable_steps", _check_int, -sm.MAX_TABLE, "an integer number of steps > -2**24")
        _norm(self, "warmup_type", _check_choice, _WSD_SHAPES)
        _norm(self, "decay_type", _check_choice, _WSD_SHAPES)
        _norm(self, "min_lr_ratio", _check_unit, low_open=False, high_open=False)
        _norm(self, "num_cycles", _check_positive)
        if self._total() > sm.MAX_TABLE - 1:
            raise ValueError(
                f"num_warmup_steps + num_stable_steps + num_decay_steps must be below 2**24, got {self._total()}"
            )

    def _total(self) -> int:
        """The first step from which the factor is constant (min_lr_ratio)."""
        return max(self.num_warmup_steps, self.num_warmup_steps + self.num_stable_steps + self.num_decay_steps)

    def _table(self) -> LambdaLR:
        cached = self.__dict__.get("_lambda")
        if cached is None:
            args = (self.num_warmup_steps, self.num_stable_steps, self.num_decay_steps, self.warmup_type,
                    self.decay_type, self.min_lr_ratio, self.num_cycles)  # fmt: skip
            cached = LambdaLR(self.base_lr, lambda k: _wsd_factor(k, *args), self._total() + 1)
            object.__setattr__(self, "_lambda", cached)
        return cached

    def segments(self):
        return self._table().segments()


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """transformers' cosine schedules with linear warm-up, as a closed form:
    ``cosine`` and ``cosine_with_min_lr`` (``shifted=False``) and
    ``cosine_warmup_with_min_lr`` (``shifted=True``: its warm-up counts from
    step + 1, or from ``warmup_lr_rate``); past ``num_training_steps`` the
    cosine continues, as transformers' does.  Built by ``get_schedule``."""

    base_lr: float
    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float = 0.5
    min_lr_rate: float = 0.0
    shifted: bool = False
    warmup_lr_rate: float | None = None

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "num_warmup_steps", _check_int, 0, "an integer number of steps >= 0")
        _norm(self, "num_training_steps", _check_length)
        _norm(self, "num_cycles", _check_lr)
        _norm(self, "min_lr_rate", _check_unit, low_open=False, high_open=False)
        if not isinstance(self.shifted, (bool, np.bool_)):
            raise ValueError(f"shifted must be a bool, got {self.shifted!r}")
        object.__setattr__(self, "shifted", bool(self.shifted))
        if self.warmup_lr_rate is not None:
            _norm(self, "warmup_lr_rate", _check_unit, low_open=False, high_open=False)

    def _row(self):
        warm = -1.0 if self.warmup_lr_rate is None else self.warmup_lr_rate
        return _row(sm.KIND_WARMUP_COSINE, self.base_lr, self.num_warmup_steps, self.num_training_steps, self.num_cycles,
                    self.min_lr_rate, float(self.shifted), warm)  # fmt: skip


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """transformers' ``inverse_sqrt``: linear warm-up over ``num_warmup_steps``,
    then ``1 / sqrt((step + timescale - num_warmup_steps) / timescale)``
    (``timescale`` defaults to ``num_warmup_steps or 10_000``, as there)."""

    base_lr: float
    num_warmup_steps: int
    timescale: int | None = None

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "num_warmup_steps", _check_int, 0, "an integer number of steps >= 0")
        if self.timescale is None:
            object.__setattr__(self, "timescale", self.num_warmup_steps or 10_000)
        _norm(self, "timescale", _check_length)

    def _row(self):
        return _row(sm.KIND_INVERSE_SQRT, self.base_lr, self.num_warmup_steps, self.timescale)


@dataclass(frozen=True)
class WarmupLinear(Schedule):
    """transformers' ``linear``: ``step / num_warmup_steps`` during warm-up,
    then down in a straight line to 0 at ``num_training_steps`` (0 after it;
    a warm-up longer than training keeps warming up, then drops to 0, as
    there).  Built by ``get_schedule("linear", ...)``."""

    base_lr: float
    num_warmup_steps: int
    num_training_steps: int

    def __post_init__(self):
        _norm(self, "base_lr", _check_lr)
        _norm(self, "num_warmup_steps", _check_int, 0, "an integer number of steps >= 0")
        _norm(self, "num_training_steps", _check_length)

    def _row(self):
        return _row(sm.KIND_WARMUP_LINEAR, self.base_lr, self.num_warmup_steps, self.num_training_steps)


_SPECS = {
    cls.__name__: cls
    for cls in (
        Constant,
        CyclicLR,
        OneCycleLR,
        CosineAnnealingLR,
        CosineAnnealingWarmRestarts,
        ExponentialLR,
        StepLR,
        MultiStepLR,
        PolynomialLR,
        LinearLR,
        ConstantLR,
        SequentialLR,
        ReduceLROnPlateau,
        LambdaLR,
        WarmupStableDecay,
        WarmupCosine,
        InverseSqrt,
        WarmupLinear,
    )
}


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_dict`."""
    d = dict(d)
    cls = _SPECS.get(d.pop("type", None))
    if cls is None:
        raise ValueError(f"unknown schedule type in {d!r}; known: {sorted(_SPECS)}")
    if cls is SequentialLR:
        d["schedules"] = [schedule_from_dict(s) for s in d["schedules"]]
    for key in ("milestones", "schedules", "lr_lambda"):
        if key in d:
            d[key] = tuple(d[key])
    return cls(**d)
