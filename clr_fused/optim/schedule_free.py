"""Schedule-free SGD and AdamW (Defazio et al. 2024, "The Road Less
Scheduled"), drop-ins for ``schedulefree.SGDScheduleFree`` and
``schedulefree.AdamWScheduleFree``, on the generic fused step (their C++
functors: ``csrc/algorithms/sgd_schedule_free.cuh``,
``csrc/algorithms/adamw_schedule_free.cuh``).

The parameters hold ``y`` while training (the point the gradient is taken
at) and ``x`` (the average) after ``eval()``; the state holds ``z``.  Each
step's scalars -- the warm-up factor, ``lr_max``, the averaging weight
``ckp1 = weight / weight_sum`` -- are computed on the device from the step
counter, the live LR and the group's running ``lr_max`` / ``weight_sum``
(float64, as ``schedulefree``'s Python floats): no host sync, capturable, and
the LR may itself be a schedule (a range test sweeps the peak LR).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import codecs
from ..kernels.triton_available import why_not as _triton_missing
from ..schedules import Schedule
from .algorithm import AlgorithmOptimizer
from .hyper import _check_lr_value, _is_real

_F64 = torch.float64


def schedule_free_step(k: Tensor, lr: Tensor, scalars: Tensor, warmup: float, r: float, power: float):
    """schedulefree's per-step scalars as float64 device ops (the torch
    backend; the kernels compute the same in C++ / Triton): (the warmed-up
    lr, the new [lr_max, weight_sum], ckp1)."""
    kf = k.to(_F64)
    k1 = kf + 1.0
    sched = torch.where(kf < warmup, k1 / warmup, torch.ones_like(kf)) if warmup > 0 else torch.ones_like(kf)
    lr_t = lr.to(_F64) * sched
    old_max, old_sum = scalars[0], scalars[1]
    lr_max = torch.where(old_max > lr_t, old_max, lr_t)  # Python's max(lr, lr_max)
    weight = torch.pow(k1, r) * torch.pow(lr_max, power)
    weight_sum = old_sum + weight
    ckp1 = torch.where(weight_sum != 0, weight / torch.where(weight_sum != 0, weight_sum, 1.0), 0.0)
    return lr_t, torch.stack([lr_max, weight_sum]), ckp1


def _interpolate(y, z, g, lr_t, ckp1, beta):
    """y.lerp_(z, ckp1); y.add_(g, alpha=lr * (beta * (1 - ckp1) - 1)); z.sub_(g, alpha=lr),
    with the scalars float32 device tensors: lerp with a tensor weight and
    addcmul by a 0-dim tensor round as lerp_ / add_(alpha=) do (one fused
    multiply-add where torch's kernels fuse), with no host sync."""
    dt = y[0].dtype
    w, y_lr, neg_lr = ckp1.to(dt), (lr_t * (beta * (1.0 - ckp1) - 1.0)).to(dt), (-lr_t).to(dt)
    y = [torch.addcmul(torch.lerp(yi, zi, w), gi, y_lr) for yi, zi, gi in zip(y, z, g)]
    return y, [[torch.addcmul(zi, gi, neg_lr) for zi, gi in zip(z, g)]]


class _ScheduleFree(AlgorithmOptimizer):
    """What both schedule-free optimizers share: ``train()`` / ``eval()``, the
    running scalars in the param groups, the checks (see the module)."""

    GROUP_SCALARS: ClassVar[tuple[tuple[str, float], ...]] = (("lr_max", -1.0), ("weight_sum", 0.0))
    INIT_FROM_PARAM = ("z",)  # z starts as a copy of the parameter, as schedulefree's
    _SF_KEYS = ("weight_decay", "warmup_steps", "r", "weight_lr_power")

    def _sf_init(self, params, lr, defaults, backend, max_grad_norm, state_dtype, stochastic_rounding) -> None:
        _check_lr_value(lr)
        codecs.check_state_dtype(state_dtype)
        if codecs.quantizes(state_dtype):
            raise ValueError(
                f"state_dtype={state_dtype!r}: a schedule-free optimizer keeps z, an iterate, in its state, "
                "which a quantized codec would round away; use None or a floating dtype (torch.float32, torch.bfloat16)"
            )
        defaults.update(k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        self._validate_group(defaults)
        super().__init__(params, defaults, backend=backend, max_grad_norm=max_grad_norm, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding)  # fmt: skip

    _WEIGHTS_AT: ClassVar[int] = 0  # where warmup_steps, r, weight_lr_power sit in hyper()

    def _beta(self, group) -> float:
        raise NotImplementedError

    @classmethod
    def next_scalars(cls, k: Tensor, lr: Tensor, scalars: Tensor, hyper: tuple[float, ...]) -> Tensor:
        """The group's [lr_max, weight_sum] after this step (the torch backend)."""
        warmup, r, power = hyper[cls._WEIGHTS_AT : cls._WEIGHTS_AT + 3]
        return schedule_free_step(k, lr, scalars, warmup, r, power)[1]

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        for name in self._SF_KEYS:
            v = group[name]
            if not _is_real(v) or isinstance(v, bool) or not v >= 0.0:
                raise ValueError(f"Invalid {name} value: {v!r}")
        for name, _ in self.GROUP_SCALARS:
            v = group.get(name, 0.0)
            if not (_is_real(v) or (isinstance(v, Tensor) and v.numel() == 1 and v.is_floating_point())):
                raise ValueError(f"param group {name} must be a float (schedulefree's running value), got {v!r}")

    def _build_group_lr(self, gi: int, group: dict[str, Any], old):
        lr, spec = group["lr"], group.get("schedule")
        spec = lr if isinstance(lr, Schedule) else spec
        if isinstance(spec, Schedule) and spec.cycles_momentum:
            raise ValueError(
                f"param group {gi}: a schedule-free optimizer does not cycle its momentum; "
                "build the schedule with cycle_momentum=False"
            )
        return super()._build_group_lr(gi, group, old)

    # ------------------------------------------------------------ y <-> x
    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x, the average (evaluate and checkpoint in this mode)."""
        self._switch(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to y, where the gradients are taken (call before training)."""
        self._switch(to_train=True)

    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if bool(group["train_mode"]) == to_train:
                continue
            beta = float(self._beta(group))
            w = 1.0 - beta if to_train else 1.0 - 1.0 / beta
            for p in group["params"]:
                z = self.state[p].get("z") if p in self.state else None
                if isinstance(z, Tensor):
                    p.lerp_(z.to(p.device, p.dtype), w)
            group["train_mode"] = to_train

    def step(self, closure=None):
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(
                "the optimizer is not in train mode: call optimizer.train() before training and "
                "optimizer.eval() before evaluating (schedule-free optimizers switch the parameters)"
            )
        return super().step(closure)

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """Ours, with schedulefree's group keys as plain floats (``k``,
        ``lr_max``, ``weight_sum``): schedulefree loads it, and we load its."""
        sd = super().state_dict()
        k = int(self._step_counter) if self._counter_device.type != "meta" else 0
        for packed in sd["param_groups"]:
            for name, _ in self.GROUP_SCALARS:
                if isinstance(packed.get(name), Tensor):
                    packed[name] = float(packed[name])
            packed["k"] = k
        return sd

    def _load(self, state_dict, saved_groups, specs) -> None:
        ours = any("clr_fused_step" in g for g in saved_groups)
        super()._load(state_dict, saved_groups, specs)
        if not ours and saved_groups and "k" in saved_groups[0]:
            self._step_counter.fill_(int(saved_groups[0]["k"]))  # a schedulefree checkpoint: its step
        self._group_scalar_recs().clear()


class SGDScheduleFree(_ScheduleFree):
    """Drop-in ``schedulefree.SGDScheduleFree`` whose step runs fused, with its
    per-step scalars on the device (see the module).  ``lr`` is a float or a
    schedule spec (the warm-up of ``warmup_steps`` multiplies it, as there);
    ``foreach`` is accepted and ignored.  The state key is ``z``."""

    SLOTS = SIGNED_SLOTS = ("z",)
    _WEIGHTS_AT = 2
    _momentum_key = "momentum"
    _HYPER_KEYS = ("momentum", *_ScheduleFree._SF_KEYS, "lr_max", "weight_sum")

    def __init__(
        self,
        params,
        lr=1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2,
        foreach: bool | None = None,
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach)  # fmt: skip
        self._sf_init(params, lr, defaults, backend, max_grad_norm, state_dtype, stochastic_rounding)

    def _beta(self, group) -> float:
        return group["momentum"]

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        m = group["momentum"]
        if not _is_real(m) or isinstance(m, bool) or not 0.0 < m < 1.0:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {m!r}")
        super()._validate_group(group, read_tensors)

    def hyper(self, group, cycled: bool) -> tuple[float, ...]:
        return tuple(float(group[k]) for k in ("momentum", "weight_decay", "warmup_steps", "r", "weight_lr_power"))

    @staticmethod
    def reference(p, g, states, lr, mom, hyper, *, k, scalars):
        """schedulefree's foreach step in torch ops (float32 lists; lr, k and
        the scalars device tensors): the new y and [z]."""
        momentum, wd, warmup, r, power = hyper
        (z,) = states
        lr_t, _, ckp1 = schedule_free_step(k, lr, scalars, warmup, r, power)
        if wd != 0:
            g = torch._foreach_add(g, p, alpha=wd)
        return _interpolate(p, z, g, lr_t, ckp1, momentum)


class AdamWScheduleFree(_ScheduleFree):
    """Drop-in ``schedulefree.AdamWScheduleFree`` whose step runs fused, with its
    per-step scalars on the device (see the module).  ``lr`` is a float or a
    schedule spec; ``foreach`` is accepted and ignored.  The state keys are
    ``z`` and ``exp_avg_sq``, as there."""

    SLOTS = ("z", "exp_avg_sq")
    SIGNED_SLOTS = ("z",)
    _WEIGHTS_AT = 4
    _HYPER_KEYS = ("betas", "eps", *_ScheduleFree._SF_KEYS, "lr_max", "weight_sum")

    def __init__(
        self,
        params,
        lr=0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach)  # fmt: skip
        self._sf_init(params, lr, defaults, backend, max_grad_norm, state_dtype, stochastic_rounding)

    def _beta(self, group) -> float:
        return group["betas"][0]

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not _is_real(b) or isinstance(b, bool) or not 0.0 <= b < 1.0 or (i == 0 and b == 0.0):
                raise ValueError(f"Invalid beta parameter at index {i}: {b!r}")
        eps = group["eps"]
        if not _is_real(eps) or not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps!r}")
        super()._validate_group(group, read_tensors)

    def hyper(self, group, cycled: bool) -> tuple[float, ...]:
        beta1, beta2 = group["betas"]
        rest = (group[k] for k in ("eps", "weight_decay", "warmup_steps", "r", "weight_lr_power"))
        return (float(beta1), float(beta2), *(float(v) for v in rest))

    @staticmethod
    def reference(p, g, states, lr, mom, hyper, *, k, scalars):
        """schedulefree's foreach step in torch ops: the new y and [z, exp_avg_sq]."""
        beta1, beta2, eps, wd, warmup, r, power = hyper
        z, v = states
        dt = p[0].dtype  # (the bias correction is rounded to it, as torch's div by the Python float)
        lr_t, _, ckp1 = schedule_free_step(k, lr, scalars, warmup, r, power)
        bc2 = (1.0 - torch.pow(torch.tensor(beta2, dtype=_F64, device=k.device), k.to(_F64) + 1.0)).to(dt)
        v = torch._foreach_mul(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - beta2)
        denom = torch._foreach_sqrt(torch._foreach_div(v, bc2))
        torch._foreach_add_(denom, eps)
        g = torch._foreach_div(g, denom)
        if wd != 0:
            torch._foreach_add_(g, p, alpha=wd)
        y, (z,) = _interpolate(p, z, g, lr_t, ckp1, beta1)
        return y, [z, v]


if _triton_missing() is None:
    import triton
    import triton.language as tl

    from ..kernels.triton_schedule import _pow

    @triton.jit
    def _sf_scalars(lr, k, hyper, scalars, H: tl.constexpr):
        """schedulefree's per-step scalars in float64 (hyper[H:H+3]: warmup_steps,
        r, weight_lr_power): (warmed-up lr, new lr_max, new weight_sum, ckp1)."""
        warmup = tl.load(hyper + H)
        r = tl.load(hyper + H + 1)
        power = tl.load(hyper + H + 2)
        kf = k.to(tl.float64)
        k1 = kf + 1.0
        sched = tl.where(kf < warmup, k1 / tl.maximum(warmup, 1.0), 1.0)
        lr = lr * sched
        old_max = tl.load(scalars)
        lr_max = tl.where(old_max > lr, old_max, lr)
        weight = _pow_any(k1, r) * _pow_any(lr_max, power)
        weight_sum = tl.load(scalars + 1) + weight
        ckp1 = tl.where(weight_sum != 0.0, weight / tl.where(weight_sum != 0.0, weight_sum, 1.0), 0.0)
        return lr, lr_max, weight_sum, ckp1

    @triton.jit
    def _pow_any(base, exponent):
        # x ** 0 is 1 (also 0 ** 0, as Python); else base ** exponent for base > 0
        return tl.where(exponent == 0.0, 1.0, _pow(base, exponent))

    @triton.jit
    def _sf_factors(lr, ckp1, beta):
        """The float32 lerp weight form and the y / z factors."""
        w = ckp1.to(tl.float32)
        small = tl.abs(w) < 0.5
        coeff = tl.where(small, w, w - 1.0)
        y_lr = (lr * (beta * (1.0 - ckp1) - 1.0)).to(tl.float32)
        return coeff, small.to(tl.float32), y_lr, (-lr).to(tl.float32)

    @triton.jit
    def _sf_finish(lr, k, hyper, scalars, H: tl.constexpr):
        _, lr_max, weight_sum, _ = _sf_scalars(lr, k, hyper, scalars, H)
        tl.store(scalars, lr_max)
        tl.store(scalars + 1, weight_sum)

    @triton.jit
    def _sgd_sf_prep(lr, mom, k, hyper, scalars, CYCLED: tl.constexpr):
        lr, _, _, ckp1 = _sf_scalars(lr, k, hyper, scalars, 2)
        coeff, small, y_lr, neg_lr = _sf_factors(lr, ckp1, tl.load(hyper))
        return tl.load(hyper + 1).to(tl.float32), coeff, small, y_lr, neg_lr, 0.0, 0.0, 0.0, 0.0

    @triton.jit
    def _sgd_sf_update(y, g, z, s1, wd, coeff, small, y_lr, neg_lr, c5, c6, c7, c8):
        g = g + y * wd  # (wd 0: exact)
        y = tl.where(small != 0.0, y, z) + coeff * (z - y)
        y = y + g * y_lr
        z = z + g * neg_lr
        return y, z, s1

    @triton.jit
    def _sgd_sf_finish(lr, k, hyper, scalars):
        _sf_finish(lr, k, hyper, scalars, 2)

    @triton.jit
    def _adamw_sf_prep(lr, mom, k, hyper, scalars, CYCLED: tl.constexpr):
        lr, _, _, ckp1 = _sf_scalars(lr, k, hyper, scalars, 4)
        coeff, small, y_lr, neg_lr = _sf_factors(lr, ckp1, tl.load(hyper))
        beta2 = tl.load(hyper + 1)
        bc2 = (1.0 - _pow(beta2, k.to(tl.float64) + 1.0)).to(tl.float32)
        return (
            tl.load(hyper + 3).to(tl.float32), coeff, small, y_lr, neg_lr,
            beta2.to(tl.float32), (1.0 - beta2).to(tl.float32), bc2, tl.load(hyper + 2).to(tl.float32),
        )  # fmt: skip

    @triton.jit
    def _adamw_sf_update(y, g, z, v, wd, coeff, small, y_lr, neg_lr, b2, omb2, bc2, eps):
        v = v * b2 + (omb2 * g) * g
        g = g / (tl.sqrt_rn(v / bc2) + eps)
        g = g + y * wd
        y = tl.where(small != 0.0, y, z) + coeff * (z - y)
        y = y + g * y_lr
        z = z + g * neg_lr
        return y, z, v

    @triton.jit
    def _adamw_sf_finish(lr, k, hyper, scalars):
        _sf_finish(lr, k, hyper, scalars, 4)

    SGDScheduleFree.triton_prep = _sgd_sf_prep
    SGDScheduleFree.triton_update = _sgd_sf_update
    SGDScheduleFree.triton_finish = _sgd_sf_finish
    AdamWScheduleFree.triton_prep = _adamw_sf_prep
    AdamWScheduleFree.triton_update = _adamw_sf_update
    AdamWScheduleFree.triton_finish = _adamw_sf_finish
