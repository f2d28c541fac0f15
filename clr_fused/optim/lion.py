"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"),
a drop-in for ``lion_pytorch.Lion``: the whole algorithm, on the generic
fused step (its C++ functor: ``csrc/algorithms/lion.cuh``).

    c = beta1 * m + (1 - beta1) * g
    p = p * (1 - lr * wd) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g

op for op as ``lion_pytorch``'s ``update_fn`` (``sign(0) = 0``).
"""

from __future__ import annotations

import torch

from ..kernels.triton_available import why_not as _triton_missing
from .algorithm import AlgorithmOptimizer
from .hyper import _check_lr_value, _is_real


class Lion(AlgorithmOptimizer):
    """Drop-in ``lion_pytorch.Lion`` whose LR schedule runs on the device.

    ``lr`` is a float or a schedule spec (as for :class:`clr_fused.AdamW`);
    ``betas[0]`` is cycled by a schedule with ``cycle_momentum=True``.
    ``decoupled_weight_decay=True`` divides ``weight_decay`` by the initial LR,
    as ``lion_pytorch`` does; ``use_triton`` is accepted (the backend is
    ``backend``). The state key is ``exp_avg``, as there; ``state_dtype``
    (``torch.bfloat16``, or a codec name of ``clr_fused.codecs.NAMED``: 8-bit
    blocks), ``stochastic_rounding``, ``kahan_sum``, ``max_grad_norm`` and
    GradScaler work as for the other optimizers.
    """

    SLOTS = SIGNED_SLOTS = ("exp_avg",)
    _HYPER_KEYS = ("betas", "weight_decay")

    def __init__(
        self,
        params,
        lr=1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        use_triton: bool = False,
        decoupled_weight_decay: bool = False,
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
        kahan_sum: bool = False,
    ) -> None:
        _check_lr_value(lr)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay)
        self._validate_group(defaults)
        if decoupled_weight_decay:
            # lion_pytorch: wd / init_lr, with the constructor's lr
            init = float(lr) if not hasattr(lr, "initial_lr") else float(lr.initial_lr)
            if not init > 0:
                raise ValueError(f"decoupled_weight_decay=True divides weight_decay by lr, which is {init!r}")
            defaults["weight_decay"] = float(weight_decay) / init
        super().__init__(params, defaults, backend=backend, max_grad_norm=max_grad_norm, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, kahan_sum=kahan_sum)  # fmt: skip

    def _validate_group(self, group, read_tensors: bool = True) -> None:
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if isinstance(b, torch.Tensor):
                raise ValueError(f"Invalid beta parameter at index {i}: Lion takes float betas")
            if not _is_real(b) or not 0.0 <= b <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b!r}")
        wd = group["weight_decay"]
        if not _is_real(wd) or not wd >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {wd!r}")

    def hyper(self, group, cycled: bool) -> tuple[float, ...]:
        beta1, beta2 = group["betas"]
        return (0.0 if cycled else float(beta1), float(beta2), float(group["weight_decay"]))

    @staticmethod
    def reference(p, g, states, lr, mom, hyper, **_):
        """lion_pytorch's update_fn in torch's foreach ops (float32 lists; ``lr``
        and a cycled ``mom`` float64 device scalars): the new p and [m]."""
        beta1, beta2, wd = hyper
        (m,) = states
        dt = p[0].dtype
        if wd != 0:
            p = torch._foreach_mul(p, (1.0 - lr * wd).to(dt))
        if mom is None:
            c = torch._foreach_mul(m, beta1)
            torch._foreach_add_(c, g, alpha=1.0 - beta1)
        else:  # a cycled beta1, read on the device
            c = torch._foreach_add(torch._foreach_mul(m, mom.to(dt)), torch._foreach_mul(g, (1.0 - mom).to(dt)))
        p = torch._foreach_sub(p, torch._foreach_mul(torch._foreach_sign(c), lr.to(dt)))
        m = torch._foreach_mul(m, beta2)
        torch._foreach_add_(m, g, alpha=1.0 - beta2)
        return p, [m]


if _triton_missing() is None:
    import triton
    import triton.language as tl

    @triton.jit
    def _lion_prep(lr, mom, k, hyper, scalars, CYCLED: tl.constexpr):
        """Once per program, float64 -> float32 (hyper: float64 [beta1, beta2, wd]):
        -lr, the decay factor, the betas and their complements, as the C++ functor."""
        beta1 = tl.load(hyper)
        beta2 = tl.load(hyper + 1)
        wd = tl.load(hyper + 2)
        if CYCLED:
            beta1 = mom
        neg_lr = (-lr).to(tl.float32)
        decay = (1.0 - lr * wd).to(tl.float32)
        return (
            neg_lr,
            decay,
            beta1.to(tl.float32),
            (1.0 - beta1).to(tl.float32),
            beta2.to(tl.float32),
            (1.0 - beta2).to(tl.float32),
            0.0,
            0.0,
            0.0,
        )

    @triton.jit
    def _lion_update(p, g, m, s1, neg_lr, decay, b1, omb1, b2, omb2, c6, c7, c8):
        p = p * decay  # (1.0 without weight decay: exact)
        c = g * omb1 + m * b1
        sgn = tl.where(c > 0.0, 1.0, tl.where(c < 0.0, -1.0, c))  # sign(0) = 0, NaN stays NaN
        p = sgn * neg_lr + p
        m = g * omb2 + m * b2
        return p, m, s1

    Lion.triton_prep = _lion_prep
    Lion.triton_update = _lion_update
