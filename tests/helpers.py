"""Shared oracles: torch schedulers driven through real updates."""

from __future__ import annotations

import copy

import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf


def torch_lr_trace(make_sched, n, *, base_lr=0.1, opt_cls=torch.optim.SGD, **opt_kw):
    """LRs (and momentum/beta1) torch holds before each of ``n`` updates."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = opt_cls([p], lr=base_lr, **opt_kw)
    sched = make_sched(opt)
    lrs, moms = [], []
    for _ in range(n):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        moms.append(g["betas"][0] if "betas" in g else g.get("momentum"))
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return lrs, moms


def transformers_lr_trace(name, base_lr, warmup, total, kw, n):
    """LRs transformers.get_scheduler(name, ...) holds before each of ``n`` updates."""
    import warnings

    import transformers

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # WSD's "both given" warning
        sched = transformers.get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                                           scheduler_specific_kwargs=dict(kw))  # fmt: skip
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def updates_with_ones(opt_factory, n, *, dtype=torch.float64):
    """Per-step parameter deltas when every gradient is one (SGD: -lr each)."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    opt = opt_factory([p])
    deltas = []
    for _ in range(n):
        before = p.detach().clone()
        p.grad = torch.ones_like(p)
        opt.step()
        deltas.append((before - p.detach())[0].item())
    return deltas


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3)).to(dtype)


def train_pair(ours, theirs, steps, *, dtype=torch.float32, seed=0, data_seed=1, maximize=False):
    """Train two copies of ``small_model`` with ``ours(params)`` and
    ``theirs(params) -> (opt, sched|None)``; return both models.  With
    ``maximize`` the objective is ``-mse`` so maximizing it stays bounded."""
    m1 = small_model(seed, dtype)
    m2 = copy.deepcopy(m1)
    o1 = ours(m1.parameters())
    o2, s2 = theirs(m2.parameters())
    gen = torch.Generator().manual_seed(data_seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen, dtype=dtype)
        y = torch.randn(16, 3, generator=gen, dtype=dtype)
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            (-loss if maximize else loss).backward()
            o.step()
        if s2 is not None:
            s2.step()
    return m1, m2, o1, o2


def max_rel_diff(m1, m2):
    """Largest |a - b| of any parameter, relative to that tensor's largest |b|."""
    worst = 0.0
    for a, b in zip(m1.parameters(), m2.parameters()):
        diff = (a.double() - b.double()).abs().max().item()
        worst = max(worst, diff / max(b.double().abs().max().item(), 1e-12))
    return worst


# (clr_fused spec, torch scheduler factory) pairs, base LR 0.1 unless said.
def schedule_pairs():
    return [
        ("cyclic-triangular", cf.CyclicLR(0.01, 0.1, 7), lambda o: L.CyclicLR(o, 0.01, 0.1, 7)),
        (
            "cyclic-asym",
            cf.CyclicLR(0.01, 0.1, 5, 11, "triangular2"),
            lambda o: L.CyclicLR(o, 0.01, 0.1, 5, 11, "triangular2"),
        ),
        (
            "cyclic-exp",
            cf.CyclicLR(0.01, 0.1, 9, 4, "exp_range", gamma=0.995),
            lambda o: L.CyclicLR(o, 0.01, 0.1, 9, 4, "exp_range", gamma=0.995),
        ),
        ("onecycle-cos", cf.OneCycleLR(0.1, 300), lambda o: L.OneCycleLR(o, 0.1, 300)),
        (
            "onecycle-3-linear",
            cf.OneCycleLR(0.1, 300, pct_start=0.25, anneal_strategy="linear", three_phase=True),
            lambda o: L.OneCycleLR(o, 0.1, 300, pct_start=0.25, anneal_strategy="linear", three_phase=True),
        ),
        ("cosine", cf.CosineAnnealingLR(0.1, 37, 0.001), lambda o: L.CosineAnnealingLR(o, 37, 0.001)),
        (
            "sgdr-mult2",
            cf.CosineAnnealingWarmRestarts(0.1, 7, 2, 0.001),
            lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2, 0.001),
        ),
        ("sgdr-mult3", cf.CosineAnnealingWarmRestarts(0.1, 3, 3), lambda o: L.CosineAnnealingWarmRestarts(o, 3, 3)),
        ("sgdr-mult1", cf.CosineAnnealingWarmRestarts(0.1, 11), lambda o: L.CosineAnnealingWarmRestarts(o, 11)),
        ("exponential", cf.ExponentialLR(0.1, 0.99), lambda o: L.ExponentialLR(o, 0.99)),
        ("step", cf.StepLR(0.1, 13, 0.5), lambda o: L.StepLR(o, 13, 0.5)),
        ("multistep", cf.MultiStepLR(0.1, [10, 50, 50, 120], 0.5), lambda o: L.MultiStepLR(o, [10, 50, 50, 120], 0.5)),
        ("polynomial", cf.PolynomialLR(0.1, 100, 2.0), lambda o: L.PolynomialLR(o, 100, 2.0)),
        ("linear", cf.LinearLR(0.1, 0.1, 1.0, 20), lambda o: L.LinearLR(o, 0.1, 1.0, 20)),
        ("constant", cf.ConstantLR(0.1, 0.5, 20), lambda o: L.ConstantLR(o, 0.5, 20)),
        (
            "sequential-warmup-cosine",
            cf.SequentialLR([cf.LinearLR(0.1, 0.1, 1.0, 20), cf.CosineAnnealingLR(0.1, 100)], [30]),
            lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 20), L.CosineAnnealingLR(o, 100)], [30]),
        ),
        (
            "sequential-3",
            cf.SequentialLR([cf.ConstantLR(0.1, 0.5, 20), cf.ExponentialLR(0.1, 0.98), cf.StepLR(0.1, 10)], [30, 100]),
            lambda o: L.SequentialLR(
                o, [L.ConstantLR(o, 0.5, 20), L.ExponentialLR(o, 0.98), L.StepLR(o, 10)], [30, 100]
            ),
        ),
        # a table: sampled for 250 steps, held after (this lambda is constant from step 227 on)
        ("lambda-table", cf.LambdaLR(0.1, _warmup_linear, 250), lambda o: L.LambdaLR(o, _warmup_linear)),
        (
            "sequential-warmup-table",
            cf.SequentialLR([cf.LinearLR(0.1, 0.1, 1.0, 20), cf.LambdaLR(0.1, _warmup_linear, 250)], [25]),
            lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 20), L.LambdaLR(o, _warmup_linear)], [25]),
        ),
        (
            "wsd-cosine",
            cf.WarmupStableDecay(0.1, 17, 100, 123, min_lr_ratio=0.1),
            lambda o: _transformers().get_wsd_schedule(o, 17, 123, num_stable_steps=100, min_lr_ratio=0.1),
        ),
        (
            "wsd-1sqrt",
            cf.WarmupStableDecay(0.1, 9, 31, 77, warmup_type="cosine", decay_type="1-sqrt"),
            lambda o: _transformers().get_wsd_schedule(
                o, 9, 77, num_stable_steps=31, warmup_type="cosine", decay_type="1-sqrt"
            ),
        ),
    ]


def _warmup_linear(k: int) -> float:
    """torchtitan's shape: linear warm-up, then linear decay to a floor."""
    return (k + 1) / 10 if k < 10 else max(0.1, 1.0 - (k - 10) / 240)


def _transformers():
    import transformers

    return transformers
