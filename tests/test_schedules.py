"""Every schedule spec against torch.optim.lr_scheduler and float64 closed forms."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf
from clr_fused.schedules import schedule_from_dict

from .helpers import schedule_pairs, torch_lr_trace, updates_with_ones

N = 300
PAIRS = schedule_pairs()
IDS = [name for name, _, _ in PAIRS]


@pytest.mark.parametrize("name,spec,make", PAIRS, ids=IDS)
def test_float_path_equals_torch(name, spec, make):
    ref, _ = torch_lr_trace(make, N)
    ours = [spec(k) for k in range(N)]
    assert all(isinstance(v, float) for v in ours)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), f"{name} step {k}"


@pytest.mark.parametrize("name,spec,make", PAIRS, ids=IDS)
def test_tensor_path_equals_torch(name, spec, make):
    ref = torch.tensor(torch_lr_trace(make, N)[0], dtype=torch.float64)
    ours = spec(torch.arange(N))
    assert ours.dtype == torch.float32 and ours.shape == (N,)
    # float32 math: relative 1e-5 of the schedule's peak
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name,spec,make", PAIRS, ids=IDS)
def test_updates_through_sgd_equal_torch(name, spec, make):
    """A gradient of ones makes each SGD update -lr (plus cycled momentum)."""
    ours = updates_with_ones(lambda ps: cf.SGD(ps, lr=spec, backend="torch"), N)

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    ref = []
    for _ in range(N):
        before = p.detach().clone()
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
        ref.append((before - p.detach())[0].item())
    peak = max(abs(r) for r in ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        # the LR is a float32 device scalar: relative 1e-6 of the peak
        assert a == pytest.approx(b, rel=1e-5, abs=2e-6 * peak), f"{name} step {k}"
    if not spec.cycles_momentum:
        lrs, _ = torch_lr_trace(make, N)
        assert ours == pytest.approx(lrs, rel=1e-5, abs=2e-6 * peak)


def _random_cyclic(rng: random.Random):
    base = 10 ** rng.uniform(-5, -2)
    top = base * rng.uniform(1.0, 100.0)
    up = rng.randint(1, 40)
    down = rng.choice([None, rng.randint(1, 40)])
    mode = rng.choice(["triangular", "triangular2", "exp_range"])
    gamma = rng.uniform(0.97, 1.0)
    bm = rng.uniform(0.5, 0.85)
    mm = rng.uniform(bm, 0.99)
    kw = dict(step_size_up=up, step_size_down=down, mode=mode, gamma=gamma, base_momentum=bm, max_momentum=mm)
    return cf.CyclicLR(base, top, **kw), (lambda o: L.CyclicLR(o, base, top, **kw))


@pytest.mark.parametrize("seed", range(12))
def test_random_cyclic_configs(seed):
    spec, make = _random_cyclic(random.Random(seed))
    lrs, moms = torch_lr_trace(make, N, momentum=0.9)
    assert [spec(k) for k in range(N)] == pytest.approx(lrs, rel=1e-12)
    assert [spec.momentum(k) for k in range(N)] == pytest.approx(moms, rel=1e-12)
    t = spec(torch.arange(N)).double()
    torch.testing.assert_close(t, torch.tensor(lrs, dtype=torch.float64), rtol=1e-5, atol=1e-5 * max(lrs))
    tm = spec.momentum(torch.arange(N)).double()
    torch.testing.assert_close(tm, torch.tensor(moms, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_cycled_beta1_matches_torch_adam():
    spec = cf.OneCycleLR(0.1, 300, base_momentum=0.8, max_momentum=0.95)
    _, moms = torch_lr_trace(
        lambda o: L.OneCycleLR(o, 0.1, 300, base_momentum=0.8, max_momentum=0.95), N, opt_cls=torch.optim.Adam
    )
    assert [spec.momentum(k) for k in range(N)] == pytest.approx(moms, rel=1e-12)


def _triangular_closed_form(base, top, up, down, k, mode="triangular", gamma=1.0):
    # Independent float64 form with exact integer cycle arithmetic.
    total = up + down
    cycle, pos = divmod(k, total)
    scale = pos / up if pos <= up else (total - pos) / down
    amp = {"triangular": 1.0, "triangular2": 0.5**cycle, "exp_range": gamma**k}[mode]
    return base + (top - base) * scale * amp


@pytest.mark.parametrize("k", [2**24 + 1, 3 * 10**7, 3 * 10**7 + 1500, 3 * 10**7 + 2999, 10**9 + 7, 10**12 + 333])
def test_cycle_position_exact_far_past_2_24(k):
    spec = cf.CyclicLR(0.001, 0.1, step_size_up=2000, step_size_down=1000)
    want = _triangular_closed_form(0.001, 0.1, 2000, 1000, k)
    assert spec(k) == pytest.approx(want, rel=1e-12)
    assert spec(torch.tensor(k)).item() == pytest.approx(want, rel=1e-6)
    # a float32 step would land elsewhere in the cycle for most of these k
    sgdr = cf.CosineAnnealingWarmRestarts(0.1, 10, 2)
    n = int(math.floor(math.log2(k // 10 + 1)))
    while 10 * (2 ** (n + 1) - 1) <= k:
        n += 1
    t_cur = k - 10 * (2**n - 1)
    want_sgdr = 0.05 * (1 + math.cos(math.pi * t_cur / (10 * 2**n)))
    assert sgdr(k) == pytest.approx(want_sgdr, rel=1e-9, abs=1e-15)
    assert sgdr(torch.tensor(k)).item() == pytest.approx(want_sgdr, rel=1e-5, abs=1e-7)
    cos = cf.CosineAnnealingLR(0.1, 777)
    want_cos = 0.05 * (1 + math.cos(math.pi * (k % 1554) / 777))
    assert cos(k) == pytest.approx(want_cos, rel=1e-9, abs=1e-15)
    assert cos(torch.tensor(k)).item() == pytest.approx(want_cos, rel=1e-5, abs=1e-7)
    step = cf.StepLR(0.1, 10**6, 0.999)
    assert step(torch.tensor(k)).item() == pytest.approx(0.1 * 0.999 ** (k // 10**6), rel=1e-5)


def test_tensor_path_keeps_device_and_dtype():
    spec = cf.CyclicLR(0.01, 0.1, 5)
    out = spec(torch.tensor([0, 5, 10], dtype=torch.int32))
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.tolist() == pytest.approx([0.01, 0.1, 0.01], rel=1e-6)
    with pytest.raises(TypeError, match="integer"):
        spec(torch.tensor(1.0))
    with pytest.raises(ValueError, match="step"):
        spec(-1)


def test_one_cycle_holds_final_lr_past_total():
    spec = cf.OneCycleLR(0.1, 100, anneal_strategy="linear")
    final = spec(99)
    assert final == pytest.approx(0.1 / 25 / 1e4)
    for k in (100, 101, 10**9):
        assert spec(k) == final
        assert spec(torch.tensor(k)).item() == pytest.approx(final, rel=1e-4)


def test_nested_sequential_flattens():
    inner = cf.SequentialLR([cf.ConstantLR(0.1, 0.5, 5), cf.ExponentialLR(0.1, 0.9)], [10])
    outer = cf.SequentialLR([inner, cf.StepLR(0.2, 3)], [25])
    for k in range(60):
        want = (
            (0.05 if k < 5 else 0.1) if k < 10 else (0.1 * 0.9 ** (k - 10) if k < 25 else 0.2 * 0.1 ** ((k - 25) // 3))
        )
        assert outer(k) == pytest.approx(want, rel=1e-12)
        assert outer(torch.tensor(k)).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name,spec,make", PAIRS, ids=IDS)
def test_dict_round_trip(name, spec, make):
    back = schedule_from_dict(spec.to_dict())
    assert back == spec
    assert [back(k) for k in range(0, N, 7)] == [spec(k) for k in range(0, N, 7)]


BAD = [
    (lambda: cf.CyclicLR(-0.1, 0.1), "base_lr"),
    (lambda: cf.CyclicLR(0.1, float("nan")), "max_lr"),
    (lambda: cf.CyclicLR(0.1, 0.01), "max_lr"),
    (lambda: cf.CyclicLR(0.01, 0.1, 0), "step_size_up"),
    (lambda: cf.CyclicLR(0.01, 0.1, 5, -2), "step_size_down"),
    (lambda: cf.CyclicLR(0.01, 0.1, mode="cosine"), "mode"),
    (lambda: cf.CyclicLR(0.01, 0.1, mode=lambda x: 1.0), "triangular"),
    (lambda: cf.CyclicLR(0.01, 0.1, mode="exp_range", gamma=0.0), "gamma"),
    (lambda: cf.CyclicLR(0.01, 0.1, base_momentum=0.95, max_momentum=0.9), "max_momentum"),
    (lambda: cf.CyclicLR(0.01, 0.1, scale_mode="epoch"), "scale_mode"),
    (lambda: cf.OneCycleLR(0.1, 100, pct_start=1.0), "pct_start"),
    (lambda: cf.OneCycleLR(0.1, 100, pct_start=0.0), "pct_start"),
    (lambda: cf.OneCycleLR(0.1, 0), "total_steps"),
    (lambda: cf.OneCycleLR(0.1, 3, pct_start=0.2), "pct_start"),
    (lambda: cf.OneCycleLR(0.1, 100, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: cf.OneCycleLR(0.1, 100, div_factor=0), "div_factor"),
    (lambda: cf.CosineAnnealingLR(0.1, 0), "T_max"),
    (lambda: cf.CosineAnnealingLR(0.1, 10, eta_min=-1.0), "eta_min"),
    (lambda: cf.CosineAnnealingWarmRestarts(0.1, 10, 0), "T_mult"),
    (lambda: cf.CosineAnnealingWarmRestarts(0.1, 2.5), "T_0"),
    (lambda: cf.ExponentialLR(0.1, -0.5), "gamma"),
    (lambda: cf.ExponentialLR(float("inf"), 0.5), "base_lr"),
    (lambda: cf.StepLR(0.1, 0), "step_size"),
    (lambda: cf.MultiStepLR(0.1, [30, 10]), "milestones"),
    (lambda: cf.MultiStepLR(0.1, [-1, 10]), "milestones"),
    (lambda: cf.PolynomialLR(0.1, 0), "total_iters"),
    (lambda: cf.LinearLR(0.1, start_factor=0.0), "start_factor"),
    (lambda: cf.LinearLR(0.1, end_factor=1.5), "end_factor"),
    (lambda: cf.ConstantLR(0.1, factor=2.0), "factor"),
    (lambda: cf.SequentialLR([cf.StepLR(0.1, 3)], [5]), "milestones"),
    (lambda: cf.SequentialLR([cf.StepLR(0.1, 3), cf.StepLR(0.1, 3)], [0]), "milestones"),
    (lambda: cf.SequentialLR([cf.StepLR(0.1, 3), cf.ReduceLROnPlateau(0.1)], [5]), "ReduceLROnPlateau"),
    (lambda: cf.SequentialLR([cf.CyclicLR(0.01, 0.1), cf.StepLR(0.1, 3)], [5]), "cycle_momentum"),
    (lambda: cf.ReduceLROnPlateau(0.1, mode="up"), "mode"),
    (lambda: cf.ReduceLROnPlateau(0.1, factor=1.0), "factor"),
    (lambda: cf.ReduceLROnPlateau(0.1, patience=-1), "patience"),
    (lambda: cf.ReduceLROnPlateau(0.1, threshold_mode="pct"), "threshold_mode"),
]


@pytest.mark.parametrize("make,arg", BAD, ids=[a + str(i) for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()
