"""Adam and AdamW (decoupled weight decay), with amsgrad and maximize."""

from __future__ import annotations

import torch

from ..kernels.registry import kernels_for
from .base import FusedOptimizer
from .hyper import _check_lr_value, _is_real, backend_from_torch_flags


class Adam(FusedOptimizer):
    """Drop-in ``torch.optim.Adam`` whose LR schedule runs on the device.

    ``lr`` is a float or a schedule spec, per param group too.  A spec with
    ``cycle_momentum=True`` overrides ``beta1`` with its cycled value, as
    torch's CyclicLR / OneCycleLR do.  Once built, ``param_groups[g]["lr"]``
    (and a cycled ``betas[0]``) holds the value the next update uses, a
    float64 device scalar; the spec is ``param_groups[g]["schedule"]``.
    State keys are torch's (``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``); ``step`` is a float32
    device scalar, as in torch's fused/capturable Adam.

    torch's keywords are accepted: ``fused=True`` selects the fused kernels,
    ``foreach=True`` the foreach reference path (``backend="torch"``),
    ``capturable`` changes nothing (every step is capturable),
    ``differentiable=True`` raises NotImplementedError, and
    ``decoupled_weight_decay=True`` makes it AdamW.  A tensor ``lr`` and
    tensor betas are read on the device at every step (their values are
    checked once, at construction).

    Keyword-only, as for :class:`clr_fused.SGD`: ``backend``,
    ``max_grad_norm``, ``state_dtype``, ``stochastic_rounding``, and
    ``kahan_sum`` (bfloat16 / float16 parameters carry a compensation buffer
    of their dtype, state key ``kahan_comp``, that keeps what rounding
    dropped: they train close to fp32 without a master copy; exclusive with
    ``stochastic_rounding``; float32 parameters take none).
    """

    _momentum_key = "betas"
    SLOTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    SIGNED_SLOTS = ("exp_avg",)
    _decoupled = False
    # what torch.optim.Adam.__setstate__ fills in for checkpoints that predate a key
    _LEGACY_GROUP_DEFAULTS = dict(
        amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
        decoupled_weight_decay=False,
    )  # fmt: skip

    def __init__(
        self,
        params,
        lr=1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
        kahan_sum: bool = False,
    ) -> None:
        _check_lr_value(lr)  # torch's order: hyperparameters before the parameters are read
        backend = backend_from_torch_flags(
            backend, type(self).__name__, foreach=foreach, fused=fused, differentiable=differentiable
        )
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            foreach=foreach, capturable=bool(capturable), differentiable=differentiable, fused=fused,
            decoupled_weight_decay=bool(decoupled_weight_decay) or self._decoupled,
        )  # fmt: skip
        self._validate_group(defaults)
        super().__init__(params, defaults, backend=backend, max_grad_norm=max_grad_norm, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, kahan_sum=kahan_sum)  # fmt: skip

    _HYPER_KEYS = ("betas", "eps", "weight_decay")

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        """torch.optim.Adam's checks and messages (numpy scalars accepted, as there)."""
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, b in enumerate(betas):
            if isinstance(b, torch.Tensor):
                # a tensor beta is read on the device every step; its value is checked once, here, as torch does
                if b.numel() != 1 or not b.is_floating_point():
                    raise ValueError(
                        f"Tensor betas[{i}] must be 1-element"
                        if b.numel() != 1
                        else f"Invalid beta parameter at index {i}: a tensor beta must be a floating tensor"
                    )
                if not read_tensors and b.device.type != "cpu":
                    continue  # its value is read on the device (no sync)
                b = float(b)
            if not _is_real(b) or not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b!r}")
        for name, what in (("eps", "epsilon value"), ("weight_decay", "weight_decay value")):
            v = group[name]
            if not _is_real(v) or not v >= 0.0:
                raise ValueError(f"Invalid {what}: {v!r}")

    def _plan_key(self, group_index: int, group) -> bool:
        return bool(group["amsgrad"])

    def _make_states(self, group_index: int, group, params):
        amsgrad = bool(group["amsgrad"])
        states = []
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                self._new_state(p, st, "exp_avg")
                self._new_state(p, st, "exp_avg_sq")
            if amsgrad and "max_exp_avg_sq" not in st:
                self._new_state(p, st, "max_exp_avg_sq")
            for key in self.SLOTS:
                if key in st:
                    self._kernel_state(p, st, key)
            states.append(st)
        slots = self.SLOTS if amsgrad else self.SLOTS[:2]
        return slots, self._bucket_lists(params, slots), [st["step"] for st in states], None

    def _launch(self, bucket, *, sched, grad_mul, skip, advance) -> bool:
        group = self.param_groups[bucket.group_index]
        beta1, beta2 = group["betas"]
        if sched.mom is not None:
            beta1 = 0.0  # cycled: the kernels read sched.mom (live[1], which betas[0] holds)
        return kernels_for(bucket.backend).adam_(
            bucket,
            sched=sched,
            beta1=float(beta1) if not isinstance(beta1, torch.Tensor) else 0.0,
            beta2=float(beta2) if not isinstance(beta2, torch.Tensor) else 0.0,
            betas=_device_betas(beta1, beta2, bucket.device),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self._decoupled or bool(group.get("decoupled_weight_decay", False)),
            amsgrad="max_exp_avg_sq" in bucket.slots,
            maximize=group["maximize"],
            grad_mul=grad_mul,
            skip=skip,
            advance=advance,
            stochastic=self.stochastic_rounding,
        )

    def _after_load(self) -> None:
        super()._after_load()
        for p, st in self.state.items():
            if isinstance(p, torch.Tensor) and isinstance(st, dict) and "step" in st:
                st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device)


def _device_betas(beta1, beta2, device) -> torch.Tensor | None:
    """float32 [beta1, 1 - beta1, beta2, 1 - beta2] on the device when a beta
    is a tensor (complements in float64 there, no host read), else None."""
    if not isinstance(beta1, torch.Tensor) and not isinstance(beta2, torch.Tensor):
        return None
    # a number beside the tensor: a device fill (no host-to-device copy, no sync)
    b = torch.stack([
        x.detach().reshape(()).to(device, torch.float64, non_blocking=True) if isinstance(x, torch.Tensor)
        else torch.full((), float(x), dtype=torch.float64, device=device)
        for x in (beta1, beta2)
    ])  # fmt: skip
    return torch.stack([b[0], 1.0 - b[0], b[1], 1.0 - b[1]]).to(torch.float32)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay``), like ``torch.optim.AdamW``."""

    _decoupled = True

    def __init__(
        self,
        params,
        lr=1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize, **kwargs)
