"""The ``torch`` backend: SGD, Adam and the generic step from ``torch._foreach_*`` ops.

This is the reference the Triton and CUDA kernels are tested against, so it
follows the kernel rules: math in float32 (float64 for float64 params), one
rounding to the storage dtype at the end, and the hyperparameters that the
schedule moves (``lr``, cycled momentum / beta1) arrive as device tensors
(the group's live values); a launch that owns them writes the next update's
values after its own (``sched.write_next``), as the kernels' last block does.

Every function takes ONE (device, dtype) bucket of the launch plan
(``optim/plan.py``) and updates its tensors in place.  ``grad_mul`` (device scalar or ``None``) folds GradScaler's
1/scale, the clip factor and maximize's sign into one multiply.  ``skip``
(device bool scalar or ``None``) is True on a non-finite step: then nothing
is written, which needs no host sync because every new value is computed out
of place and committed with ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import low_precision as lp

_FLOAT32_MAX = torch.finfo(torch.float32).max


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(tensors: Sequence[Tensor], dtype: torch.dtype) -> list[Tensor]:
    return [t.to(dtype) for t in tensors]


def _commit(dst: Sequence[Tensor], new: Sequence[Tensor], skip: Tensor | None) -> None:
    """``dst[i] <- new[i]`` (one rounding to dst's dtype) unless ``skip``."""
    if not dst:
        return
    if skip is None:
        torch._foreach_copy_(list(dst), list(new))
        return
    for d, n in zip(dst, new):
        d.copy_(torch.where(skip, d, n.to(d.dtype)))


class _Storage:
    """How a bucket's tensors are read and written: plain dtypes (one
    rounding to nearest), bfloat16 rounded stochastically, int8 codes with
    per-block scales -- the kernels' low_precision.cuh in torch ops.

    States are read and written by slot name (``bucket.slots``; for int8
    states the code lists, with the codec's scale lists after them);
    ``bases[i]`` tensor i's random-bit stream bases and multipliers."""

    def __init__(self, bucket, stochastic: bool, counter: Tensor | None) -> None:
        self.slots = bucket.slots
        self.codes, self.scales = bucket.shaped, bucket.aux
        self.q8 = bool(self.scales)
        if self.q8:
            lp.check_state_lists(self.codes, self.scales)  # before anything is written
        self.stochastic = stochastic
        self.bases = [lp.stream_bases(counter, p.numel()) for p in bucket.params] if stochastic else None
        self.comp = bucket.compensation  # kahan_sum's buffers, or None

    def load_params(self, params: Sequence[Tensor], dt: torch.dtype) -> list[Tensor]:
        """The parameters as ``dt`` values: with compensation buffers, p + c
        (exact in float32: c is below half an ulp of p)."""
        p = _upcast(params, dt)
        return torch._foreach_add(p, _upcast(self.comp, dt)) if self.comp else p

    def load(self, name: str, dt: torch.dtype) -> list[Tensor]:
        """A slot's states as ``dt`` values."""
        j = self.slots.index(name)
        if self.q8:
            return [lp.dequantize(c, s).to(dt) for c, s in zip(self.codes[j], self.scales[j])]
        return _upcast(self.codes[j], dt)

    def commit_state(self, name: str, new: list[Tensor], skip: Tensor | None) -> None:
        j = self.slots.index(name)
        if self.q8:
            for c, s, n in zip(self.codes[j], self.scales[j], new):
                order = lp.memory_order(c)
                codes, scales = lp.encode(lp.flat(n.to(torch.float32), order), c.dtype == torch.int8)
                codes = lp.unflat(codes, c, order)
                c.copy_(codes if skip is None else torch.where(skip, c, codes))
                s.copy_(scales if skip is None else torch.where(skip, s, scales))
            return
        self._commit(self.codes[j], new, skip, 1 + j)

    def commit_params(self, params: Sequence[Tensor], new: list[Tensor], skip: Tensor | None) -> None:
        if not self.comp:
            self._commit(params, new, skip, 0)
            return
        # kahan_sum (multi_tensor.cuh's load_param / compensation): p = round(x), c = round(x - p); no
        # compensation where x - p is not finite (x NaN or inf, or rounded to inf)
        for d, c, n in zip(params, self.comp, new):
            x = n.to(torch.float32)
            hi = x.to(d.dtype)
            r = x - hi.to(torch.float32)
            lo = torch.where(r.abs() <= _FLOAT32_MAX, r, 0.0).to(d.dtype)
            if skip is not None:
                hi, lo = torch.where(skip, d, hi), torch.where(skip, c, lo)
            d.copy_(hi)
            c.copy_(lo)

    def _commit(self, dst: Sequence[Tensor], new: list[Tensor], skip: Tensor | None, stream: int) -> None:
        if not self.stochastic or not dst or dst[0].dtype != torch.bfloat16:
            _commit(dst, new, skip)
            return
        for i, (d, n) in enumerate(zip(dst, new)):
            order = lp.memory_order(d)
            x = lp.flat(n.to(torch.float32), order)
            v = lp.unflat(lp.bf16_stochastic(x, lp.element_bits(self.bases[i], x.numel(), stream)), d, order)
            d.copy_(v if skip is None else torch.where(skip, d, v))


def _scaled_grads(grads, dtype, grad_mul: Tensor | None, maximize: bool) -> list[Tensor]:
    g = _upcast(grads, dtype)
    if grad_mul is not None:
        g = torch._foreach_mul(g, grad_mul.to(dtype))
    if maximize:
        g = torch._foreach_neg(g)
    return g


def sgd_(
    bucket,
    *,
    sched,
    momentum: float,
    use_momentum: bool,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_mul: Tensor | None,
    skip: Tensor | None,
    advance: bool = False,
    stochastic: bool = False,
) -> bool:
    """torch.optim.SGD's update of one plan bucket (``optim/plan.py``);
    ``bucket.fresh[i]`` marks a buffer created for this step.  Leaves the step
    counter to the caller (returns False)."""
    params, grads = bucket.params, bucket.grads()
    store = _Storage(bucket, stochastic, sched.counter)
    new_buffer = bucket.fresh or [False] * len(params)
    dt = math_dtype(params[0].dtype)
    lr, cycled = sched.lr, sched.mom  # float64 device scalars, as torch's Python floats
    if cycled is not None:
        momentum = cycled.to(dt)  # torch's buf.mul_(momentum) rounds the double to the math dtype
    p = store.load_params(params, dt)
    d_p = _scaled_grads(grads, dt, grad_mul, maximize)
    if weight_decay != 0:
        d_p = torch._foreach_add(d_p, p, alpha=weight_decay)
    if use_momentum:
        bufs = store.load("momentum_buffer", dt)
        new_bufs = torch._foreach_mul(bufs, momentum)
        torch._foreach_add_(new_bufs, d_p, alpha=1.0 - dampening)
        # torch starts the buffer at the first gradient, undamped.
        new_bufs = [d.clone() if fresh else b for d, b, fresh in zip(d_p, new_bufs, new_buffer)]
        if nesterov:
            d_p = torch._foreach_add(d_p, torch._foreach_mul(new_bufs, momentum))
        else:
            d_p = new_bufs
        store.commit_state("momentum_buffer", new_bufs, skip)
    store.commit_params(
        params, torch._foreach_sub(p, torch._foreach_mul(d_p, lr.to(dt) if isinstance(lr, Tensor) else lr)), skip
    )
    sched.write_next(skip)
    return False


def adam_(
    bucket,
    *,
    sched,
    beta1: float,
    beta2: float,
    betas: Tensor | None = None,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    grad_mul: Tensor | None,
    skip: Tensor | None,
    advance: bool = False,
    stochastic: bool = False,
) -> bool:
    """torch.optim.Adam / AdamW's update of one plan bucket; its ``steps`` are
    float32 device scalars.  Leaves the schedule's step counter to the caller
    (returns False)."""
    params, grads, steps = bucket.params, bucket.grads(), bucket.steps
    store = _Storage(bucket, stochastic, sched.counter)
    dt = math_dtype(params[0].dtype)
    lr, cycled = sched.lr, sched.mom  # float64 device scalars, as torch's Python floats
    one_minus_beta1, one_minus_beta2 = None, 1.0 - beta2
    if betas is not None:  # tensor betas, read on the device: [b1, 1 - b1, b2, 1 - b2]
        beta1, one_minus_beta1, beta2, one_minus_beta2 = betas[0], betas[1], betas[2], betas[3]
    if cycled is not None:
        beta1, one_minus_beta1 = cycled, None
    lr = lr.to(torch.float64)  # the step size and decay factor come from torch's double, then one rounding each
    p = store.load_params(params, dt)
    g = _scaled_grads(grads, dt, grad_mul, maximize)
    if weight_decay != 0:
        if decoupled:
            p = torch._foreach_mul(p, (1.0 - lr * weight_decay).to(dt))
        else:
            g = torch._foreach_add(g, p, alpha=weight_decay)

    # exp_avg.lerp_(grad, 1 - beta1), in the kernels' form (fused_kernels.cuh)
    if one_minus_beta1 is None:
        one_minus_beta1 = (1.0 - beta1.double()).to(dt) if isinstance(beta1, Tensor) else 1.0 - beta1
    m = _lerp(
        store.load("exp_avg", dt), g, one_minus_beta1.to(dt) if isinstance(one_minus_beta1, Tensor) else one_minus_beta1
    )
    if isinstance(beta2, Tensor):
        beta2 = beta2.to(dt)
        v = torch._foreach_mul(store.load("exp_avg_sq", dt), beta2)
        torch._foreach_add_(v, torch._foreach_mul(torch._foreach_mul(g, g), one_minus_beta2.to(dt)))
    else:
        v = torch._foreach_mul(store.load("exp_avg_sq", dt), beta2)
        torch._foreach_addcmul_(v, g, g, value=one_minus_beta2)
    if amsgrad:
        v_max = torch._foreach_maximum(store.load("max_exp_avg_sq", dt), v)

    new_steps = torch._foreach_add(steps, 1.0)
    # Bias corrections per tensor, as one small vector (steps differ per tensor),
    # in float64 as torch's Python scalars, then one rounding each.
    step_vec = torch.stack(new_steps).to(torch.float64)
    b1_64 = beta1.double() if isinstance(beta1, Tensor) else beta1
    b2_64 = beta2.double() if isinstance(beta2, Tensor) else beta2
    bc1 = 1.0 - torch.pow(b1_64, step_vec)
    bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2_64, step_vec)).to(dt)
    neg_step_size = (-(lr / bc1)).to(dt).unbind()

    # param.addcdiv_(exp_avg, denom, value=-step_size): p + (-step_size * m) / denom
    denom = torch._foreach_sqrt(v_max if amsgrad else v)
    torch._foreach_div_(denom, list(bc2_sqrt.unbind()))
    torch._foreach_add_(denom, eps)
    upd = torch._foreach_mul(m, list(neg_step_size))
    torch._foreach_div_(upd, denom)

    store.commit_params(params, torch._foreach_add(p, upd), skip)
    store.commit_state("exp_avg", m, skip)
    store.commit_state("exp_avg_sq", v, skip)
    if amsgrad:
        store.commit_state("max_exp_avg_sq", v_max, skip)
    _commit(steps, new_steps, skip)
    sched.write_next(skip)
    return False


def step_(
    bucket,
    algorithm,
    *,
    sched,
    hyper,
    grad_mul,
    skip,
    advance=False,
    stochastic=False,
    scalars=None,
    write_scalars=False,
) -> bool:
    """One bucket of an algorithm on the generic fused step (``optim/algorithm.py``):
    its ``reference`` update on the bucket's states as float32 (int8 codes decoded,
    re-encoded after), committed unless ``skip``.  Leaves the step counter to the
    caller (returns False)."""
    params, grads = bucket.params, bucket.grads()
    store = _Storage(bucket, stochastic, sched.counter)
    dt = math_dtype(params[0].dtype)
    p = store.load_params(params, dt)
    g = _scaled_grads(grads, dt, grad_mul, False)
    states = [store.load(name, dt) for name in bucket.slots]
    ctx = {"k": sched.counter, "scalars": scalars} if scalars is not None else {}
    new_p, new_states = algorithm.reference(p, g, states, sched.lr, sched.mom, tuple(hyper), **ctx)
    store.commit_params(params, new_p, skip)
    for name, s in zip(bucket.slots, new_states, strict=True):
        store.commit_state(name, s, skip)
    if write_scalars:  # the group's last launch: its running scalars for the next step
        new = algorithm.next_scalars(sched.counter, sched.lr, scalars, tuple(hyper))
        scalars.copy_(new if skip is None else torch.where(skip, scalars, new))
    sched.write_next(skip)
    return False


def _lerp(start: list[Tensor], end: list[Tensor], weight) -> list[Tensor]:
    """torch's lerp (two roundings): ``start + w * (end - start)`` for |w| < 0.5,
    else ``end - (end - start) * (1 - w)``, as one form: ``base + coeff * diff``."""
    diff = torch._foreach_sub(end, start)
    if isinstance(weight, Tensor):  # read on the device: both forms, selected there
        small = weight.abs() < 0.5
        coeff = torch.where(small, weight, weight - 1.0)
        base = [torch.where(small, s, e) for s, e in zip(start, end)]
    else:
        small = abs(weight) < 0.5
        coeff, base = (weight, start) if small else (weight - 1.0, end)
    return torch._foreach_add(base, torch._foreach_mul(diff, coeff))


def global_grad_norm(grads: list[Tensor], device: torch.device) -> Tensor:
    """L2 norm over every gradient on ``device`` (float32, float64 if any
    gradient is float64); no host sync.  DTensor (FSDP2) gradients are reduced
    across ranks by DTensor itself, as ``clip_grad_norm_`` does."""
    if grads and hasattr(grads[0], "full_tensor"):
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2)))
        return total.full_tensor().to(device, torch.float32)
    by_key: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        by_key.setdefault((g.device, g.dtype), []).append(g)
    out_dtype = torch.float64 if any(dt == torch.float64 for _, dt in by_key) else torch.float32
    parts = []
    for (_, dt), gs in by_key.items():
        norms = torch._foreach_norm(gs, 2, dtype=math_dtype(dt))
        parts.append(torch.linalg.vector_norm(torch.stack(norms)).to(device, out_dtype, non_blocking=True))
    if not parts:
        return torch.zeros((), dtype=torch.float32, device=device)
    return torch.linalg.vector_norm(torch.stack(parts))
