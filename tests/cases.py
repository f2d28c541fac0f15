"""The case tables the backend tests share, and which backends run here.

One definition each: the schedules every backend is checked over, the SGD
and Adam flag sets, the sizes, and ``run_pair`` / ``assert_same`` (the same
parameters and gradients through a backend and through ``backend="torch"``,
the reference).  Test files pick their backends with :func:`backends`
(naming the ones the test is meant for; the ones that cannot run here are
left out) or take conftest's ``backend`` fixture (every backend that runs).
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest
import torch

import clr_fused as cf

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ALL_BACKENDS = ("torch", "cpu", "triton", "cuda")


@cache
def _runs_here(name: str) -> bool:
    from clr_fused import backends as B

    return B.why_unavailable(name, DEVICE if name in ("triton", "cuda") else torch.device("cpu")) is None


def backends(*names: str) -> list[str]:
    """``names`` (default: every backend) that can run here, in that order."""
    return [n for n in (names or ALL_BACKENDS) if _runs_here(n)]


SIZES = [1, 3, 127, 128, 129, 1000, 4097, 65537]
STEPS = 8

SCHEDULES = [
    0.01,
    cf.CyclicLR(0.001, 0.01, 2, 3),
    cf.CyclicLR(0.001, 0.01, 2, 1, "triangular2"),
    cf.CyclicLR(0.001, 0.01, 3, 2, "exp_range", gamma=0.9, cycle_momentum=False),
    cf.OneCycleLR(0.01, 12),
    cf.OneCycleLR(0.01, 12, pct_start=0.25, anneal_strategy="linear", three_phase=True),
    cf.CosineAnnealingLR(0.01, 3, 0.001),
    cf.CosineAnnealingWarmRestarts(0.01, 1, 2, 0.0005),
    cf.ExponentialLR(0.01, 0.8),
    cf.StepLR(0.01, 3, 0.5),
    cf.MultiStepLR(0.01, [1, 3, 3, 5], 0.5),
    cf.PolynomialLR(0.01, 5, 1.5),
    cf.LinearLR(0.01, 0.2, 0.9, 4),
    cf.ConstantLR(0.01, 0.25, 3),
    cf.SequentialLR([cf.LinearLR(0.01, 0.5, 1.0, 2), cf.CosineAnnealingLR(0.01, 4), cf.StepLR(0.005, 1)], [3, 6]),
    cf.ReduceLROnPlateau(0.01, patience=0, factor=0.5),
    cf.LambdaLR(0.01, [1.0, 0.5, 0.75, 0.25, 0.125], 5),
    cf.SequentialLR(
        [cf.LambdaLR(0.01, [0.5, 1.0], 2), cf.CosineAnnealingLR(0.01, 3), cf.LambdaLR(0.005, [1.0, 0.3, 0.1], 3)],
        [2, 4],
    ),
    cf.WarmupStableDecay(0.01, 2, 2, 3, decay_type="linear", min_lr_ratio=0.2),
    cf.get_schedule("cosine_with_min_lr", 0.01, 2, 6, {"min_lr_rate": 0.1}),
    cf.get_schedule("cosine_warmup_with_min_lr", 0.01, 3, 6, {"min_lr_rate": 0.1, "warmup_lr_rate": 0.2}),
    cf.get_schedule("inverse_sqrt", 0.01, 2),
    cf.get_schedule("linear", 0.01, 2, 6),  # a generated kind (schedule_math.closed_form)
    cf.WarmupLinear(0.01, 5, 3),  # warm-up longer than training: warms, then 0
]
SCHED_IDS = [type(s).__name__ if not isinstance(s, float) else "float" for s in SCHEDULES]


def params(sizes, dtype, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(device, dtype)) for n in sizes]


def run_pair(
    cls,
    kw,
    spec,
    *,
    sizes=SIZES,
    dtype=torch.float32,
    steps=STEPS,
    state_dtype=None,
    scale=1.0,
    backend="triton",
    device=DEVICE,
):
    """Same params and grads through ``backend`` and backend="torch"."""
    a, b = params(sizes, dtype, device=device), params(sizes, dtype, device=device)
    oa = getattr(cf, cls)(a, lr=spec, backend=backend, state_dtype=state_dtype, **kw)
    ob = getattr(cf, cls)(b, lr=spec, backend="torch", state_dtype=state_dtype, **kw)
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        grads = [(torch.randn(p.shape, generator=gen) * scale).to(device, dtype) for p in a]
        for ps, o in ((a, oa), (b, ob)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            o.step()
            if i % 2 == 1:
                o.report(torch.tensor(1.0, device=device))  # plateau: no improvement
    return a, b, oa, ob


def assert_same(a, b, oa, ob, *, rtol=2e-6, atol=2e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x.float(), y.float(), rtol=rtol, atol=atol)
    assert oa.schedule_step.item() == ob.schedule_step.item()
    assert oa.get_last_lr() == pytest.approx(ob.get_last_lr(), rel=1e-6)
    for pa, pb in zip(a, b):
        for key, va in oa.state[pa].items():
            torch.testing.assert_close(va.float(), ob.state[pb][key].float(), rtol=rtol, atol=atol)


# representative SGD / Adam flag combinations (the backend tests)
SGD_FLAGS = [
    dict(momentum=0.0),
    dict(momentum=0.0, weight_decay=0.1, maximize=True),
    dict(momentum=0.8, dampening=0.3),
    dict(momentum=0.8, dampening=0.3, weight_decay=0.05, maximize=True),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
]
ADAM_FLAGS = [
    dict(),
    dict(amsgrad=True),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, amsgrad=True, maximize=True),
    dict(maximize=True, betas=(0.8, 0.95), eps=1e-6),
]

# every valid combination (the torch backend against torch.optim: cheap)
SGD_FLAG_PRODUCT = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 1e-2], [False, True])
    if not (n and (m == 0 or d != 0))
]
ADAM_FLAG_PRODUCT = [
    dict(amsgrad=a, weight_decay=wd, maximize=mx)
    for a, wd, mx in itertools.product([False, True], [0.0, 0.05], [False, True])
]
