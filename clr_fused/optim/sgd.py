"""SGD with momentum, dampening, Nesterov, weight decay and maximize."""

from __future__ import annotations

import torch

from ..kernels.registry import kernels_for
from .base import FusedOptimizer
from .hyper import _check_lr_value, _is_real, backend_from_torch_flags


class SGD(FusedOptimizer):
    """Drop-in ``torch.optim.SGD`` whose LR schedule runs on the device.

    ``lr`` is a float or a schedule spec (``clr_fused.CyclicLR(...)`` etc.),
    per param group too.  A spec with ``cycle_momentum=True`` overrides
    ``momentum`` with its cycled value, exactly as torch's CyclicLR and
    OneCycleLR do, even when the optimizer was built with ``momentum=0``
    (torch turns momentum on in that case as well).

    Once built, ``param_groups[g]["lr"]`` (and a cycled ``"momentum"``)
    holds the value the next update uses, a float64 device scalar that the
    kernels read and rewrite; the spec is ``param_groups[g]["schedule"]``
    (see ``optim/live_lr.py`` for what writing them does).

    torch's ``foreach`` / ``fused`` / ``differentiable`` are accepted:
    ``fused=True`` selects the fused kernels, ``foreach=True`` the foreach
    reference path (``backend="torch"``), ``differentiable=True`` raises
    NotImplementedError.

    Keyword-only: ``backend`` ("auto", "torch", "triton", "cuda", "cpu"),
    ``max_grad_norm`` (fused global-norm clipping) and ``state_dtype``
    (``torch.float32`` momentum buffers for bf16 parameters, ``torch.bfloat16``,
    or a codec name of ``clr_fused.codecs.NAMED``: 8-bit blocks) and
    ``stochastic_rounding`` (bfloat16 writes rounded stochastically) or
    ``kahan_sum`` (a compensation buffer of the parameter's dtype per
    bfloat16 / float16 parameter, state key ``kahan_comp``, holding what
    rounding dropped; optimi's name); see docs/low-precision.md.
    """

    _momentum_key = "momentum"
    SLOTS = SIGNED_SLOTS = ("momentum_buffer",)
    # what torch.optim.SGD.__setstate__ fills in for checkpoints that predate a key
    _LEGACY_GROUP_DEFAULTS = dict(nesterov=False, maximize=False, foreach=None, differentiable=False, fused=None)

    def __init__(
        self,
        params,
        lr=1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
        kahan_sum: bool = False,
    ) -> None:
        _check_lr_value(lr)  # torch's order: hyperparameters before the parameters are read
        backend = backend_from_torch_flags(backend, "SGD", foreach=foreach, fused=fused, differentiable=differentiable)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )
        self._validate_group(defaults)
        super().__init__(params, defaults, backend=backend, max_grad_norm=max_grad_norm, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, kahan_sum=kahan_sum)  # fmt: skip

    _HYPER_KEYS = ("momentum", "weight_decay", "dampening", "nesterov")

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        for name in ("momentum", "weight_decay", "dampening"):
            v = group[name]
            if isinstance(v, torch.Tensor) and name == "momentum":
                if v.numel() != 1 or not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
                    raise ValueError(
                        f"Invalid momentum value: a tensor momentum must be a 1-element real tensor, got {tuple(v.shape)} {v.dtype}"
                    )
                if not read_tensors and v.device.type != "cpu":
                    continue  # its value is read on the device (no sync)
                v = float(v)
            if not _is_real(v) or not v >= 0.0:
                raise ValueError(f"Invalid {name} value: {v!r}")
        m = group["momentum"]
        if group["nesterov"] and isinstance(m, torch.Tensor) and not read_tensors and m.device.type != "cpu":
            m = 1.0  # (checked with its value when it was given)
        if group["nesterov"] and (m <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _uses_momentum(self, group_index: int, group) -> bool:
        m = group["momentum"]
        rec = self._group_lr(group_index)
        if rec.live is not None and rec.mom is not None:
            return True  # a cycled momentum
        if isinstance(m, torch.Tensor):
            # torch's test is `momentum != 0`, read every step.  Without dampening a
            # zero momentum gives the same update either way (the buffer is the
            # gradient), so a device tensor is not read then (no sync).
            if m.device.type != "cpu" and group["dampening"] == 0:
                return True
            return bool(m != 0)
        return m != 0

    def _plan_key(self, group_index: int, group) -> bool:
        return self._uses_momentum(group_index, group)

    def _make_states(self, group_index: int, group, params):
        if not self._uses_momentum(group_index, group):
            return (), [], [], None
        fresh = []
        for p in params:
            st = self.state[p]
            # A buffer created for a step that turns out non-finite stays
            # zero; the next step then treats it as warm (this differs from
            # torch only with dampening != 0).
            fresh.append(st.get("momentum_buffer") is None)
            if fresh[-1]:
                self._new_state(p, st, "momentum_buffer")
            else:
                self._kernel_state(p, st, "momentum_buffer")
        return self.SLOTS, self._bucket_lists(params, self.SLOTS), [], fresh if any(fresh) else None

    def _launch(self, bucket, *, sched, grad_mul, skip, advance) -> bool:
        group = self.param_groups[bucket.group_index]
        return kernels_for(bucket.backend).sgd_(
            bucket,
            sched=sched,
            momentum=0.0 if sched.mom is not None else group["momentum"],  # cycled / tensor: read on the device
            use_momentum="momentum_buffer" in bucket.slots,
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            grad_mul=grad_mul,
            skip=skip,
            advance=advance,
            stochastic=self.stochastic_rounding,
        )
