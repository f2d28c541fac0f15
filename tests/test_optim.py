"""cf.SGD / cf.Adam / cf.AdamW (torch backend) against torch.optim."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf

from .cases import ADAM_FLAG_PRODUCT, SGD_FLAG_PRODUCT
from .helpers import max_rel_diff, train_pair

STEPS = 60

SGD_FLAGS = SGD_FLAG_PRODUCT


def _sgd_schedules():
    # (our lr, torch scheduler factory or None)
    return {
        "float": (0.05, None),
        "cyclic-momentum": (cf.CyclicLR(0.01, 0.1, 7, 4), lambda o: L.CyclicLR(o, 0.01, 0.1, 7, 4)),
        "cyclic-fixed-momentum": (
            cf.CyclicLR(0.01, 0.1, 7, mode="triangular2", cycle_momentum=False),
            lambda o: L.CyclicLR(o, 0.01, 0.1, 7, mode="triangular2", cycle_momentum=False),
        ),
    }


@pytest.mark.parametrize("sched_name", list(_sgd_schedules()))
@pytest.mark.parametrize("flags", SGD_FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_sgd_flags_match_torch(flags, sched_name):
    lr, make = _sgd_schedules()[sched_name]

    def theirs(ps):
        o = torch.optim.SGD(ps, lr=0.05, **flags)
        return o, None if make is None else make(o)

    m1, m2, _, _ = train_pair(
        lambda ps: cf.SGD(ps, lr=lr, backend="torch", **flags),
        theirs,
        STEPS,
        dtype=torch.float64,
        maximize=flags["maximize"],
    )
    # LR and momentum are float32 device scalars (torch's are float64): 1e-4
    # over 60 steps; a wrong flag is off by orders of magnitude more.
    assert max_rel_diff(m1, m2) < 1e-4


ADAM_FLAGS = ADAM_FLAG_PRODUCT


def _adam_schedules():
    return {
        "float": (0.01, None),
        "onecycle-beta1": (cf.OneCycleLR(0.02, STEPS), lambda o: L.OneCycleLR(o, 0.02, STEPS)),
        "cyclic-beta1": (
            cf.CyclicLR(0.001, 0.02, 5, 9, "exp_range", gamma=0.99),
            lambda o: L.CyclicLR(o, 0.001, 0.02, 5, 9, "exp_range", gamma=0.99),
        ),
        "cosine": (cf.CosineAnnealingLR(0.02, 17), lambda o: L.CosineAnnealingLR(o, 17)),
    }


@pytest.mark.parametrize("sched_name", list(_adam_schedules()))
@pytest.mark.parametrize("flags", ADAM_FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_flags_match_torch(cls, flags, sched_name):
    lr, make = _adam_schedules()[sched_name]
    ours_cls, torch_cls = getattr(cf, cls), getattr(torch.optim, cls)

    def theirs(ps):
        # torch schedulers without a base_lr argument read it from the optimizer
        o = torch_cls(ps, lr=lr if isinstance(lr, float) else 0.02, betas=(0.85, 0.99), **flags)
        return o, None if make is None else make(o)

    m1, m2, _, _ = train_pair(
        lambda ps: ours_cls(ps, lr=lr, betas=(0.85, 0.99), backend="torch", **flags),
        theirs,
        STEPS,
        dtype=torch.float64,
        maximize=flags["maximize"],
    )
    assert max_rel_diff(m1, m2) < 1e-4


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_float32_model_matches_torch(cls):
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    make = lambda o: L.CyclicLR(o, 0.005, 0.05, 6)  # noqa: E731
    m1, m2, _, _ = train_pair(
        lambda ps: getattr(cf, cls)(ps, lr=cf.CyclicLR(0.005, 0.05, 6), backend="torch", **kw),
        lambda ps: (lambda o: (o, make(o)))(getattr(torch.optim, cls)(ps, lr=0.05, **kw)),
        STEPS,
    )
    assert max_rel_diff(m1, m2) < 1e-4


def _fixed_grad_run(opt_factory, p0, grads):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_factory([p])
    for g in grads:
        p.grad = g.to(p.dtype)
        opt.step()
    return p.detach()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_low_precision_error_at_most_twice_torch(cls, dtype):
    """Against a float64 run on the same gradients, our low-precision error is
    no worse than twice torch.optim's own error in that dtype."""
    kw = dict(momentum=0.9, weight_decay=1e-3) if cls == "SGD" else dict(weight_decay=1e-2)
    if cls != "SGD" and dtype == torch.float16:
        kw["eps"] = 1e-4  # 1e-8 is 0 in float16: torch's own fp16 Adam divides by zero
    n = 1000 + 37
    p0 = torch.randn(n).to(dtype)
    # fp16 cannot hold Adam's g*g for small g (torch's own run turns to NaN)
    grads = [torch.randn(n) * (1.0 if dtype == torch.float16 else 0.1) for _ in range(30)]
    spec = cf.CyclicLR(1e-3, 1e-2, 5, cycle_momentum=False)
    make = lambda o: L.CyclicLR(o, 1e-3, 1e-2, 5, cycle_momentum=False)  # noqa: E731

    def torch_run(d):
        p = torch.nn.Parameter(p0.to(d, copy=True))
        o = getattr(torch.optim, cls)([p], lr=1e-2, foreach=False, **kw)
        s = make(o)
        for g in grads:
            p.grad = g.to(d)
            o.step()
            s.step()
        return p.detach().double()

    exact = torch_run(torch.float64)
    torch_err = (torch_run(dtype) - exact).abs().max().item()
    ours = _fixed_grad_run(lambda ps: getattr(cf, cls)(ps, lr=spec, backend="torch", **kw), p0, grads)
    assert ours.dtype == dtype
    our_err = (ours.double() - exact).abs().max().item()
    assert our_err <= 2 * torch_err, (our_err, torch_err)
    # float32 states for low-precision params: at least as close
    ours32 = _fixed_grad_run(
        lambda ps: getattr(cf, cls)(ps, lr=spec, backend="torch", state_dtype=torch.float32, **kw), p0, grads
    )
    assert (ours32.double() - exact).abs().max().item() <= 2 * torch_err


def test_state_dtype_float32_keeps_fp32_states():
    p = torch.nn.Parameter(torch.randn(7, dtype=torch.bfloat16))
    opt = cf.Adam([p], lr=1e-3, backend="torch", state_dtype=torch.float32, amsgrad=True)
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == st["max_exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_float64_matches_torch_tightly(cls):
    kw = dict(momentum=0.9, nesterov=True) if cls == "SGD" else dict(amsgrad=True)
    m1, m2, _, _ = train_pair(
        lambda ps: getattr(cf, cls)(ps, lr=0.01, backend="torch", **kw),
        lambda ps: (getattr(torch.optim, cls)(ps, lr=0.01, **kw), None),
        STEPS,
        dtype=torch.float64,
    )
    # a constant LR is exact in float32 only up to its rounding
    assert max_rel_diff(m1, m2) < 1e-6


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_non_contiguous_and_zero_size_params(cls):
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    shapes = [(6, 4), (0,), (3, 0, 2), (5,)]

    def make_params():
        torch.manual_seed(3)
        ps = [torch.nn.Parameter(torch.randn(6, 4).t())]  # non-contiguous
        ps.append(torch.nn.Parameter(torch.randn(8)[::2]))  # strided
        ps += [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        return ps

    a, b = make_params(), make_params()
    assert not a[0].is_contiguous() and not a[1].is_contiguous()
    oa = getattr(cf, cls)(a, lr=0.01, backend="torch", **kw)
    ob = getattr(torch.optim, cls)(b, lr=0.01, **kw)
    for _i in range(20):
        gs = [torch.randn(p.shape) for p in a]
        for ps, o in ((a, oa), (b, ob)):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            o.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        assert x.stride() == y.stride()


def test_per_group_schedules_match_torch():
    def groups(model):
        return [
            {"params": model[0].parameters()},
            {"params": model[2].parameters()},
        ]

    def ours(model):
        gs = groups(model)
        gs[0]["lr"] = cf.CyclicLR(0.01, 0.1, 5)
        gs[1]["lr"] = cf.CyclicLR(0.001, 0.05, 3, 8, "triangular2")
        return cf.SGD(gs, lr=0.02, momentum=0.5, backend="torch")

    def theirs(model):
        o = torch.optim.SGD(groups(model), lr=0.02, momentum=0.5)
        return o, L.CyclicLR(o, [0.01, 0.001], [0.1, 0.05], [5, 3][0], None)

    # torch's CyclicLR shares step sizes across groups: use a LambdaLR oracle for group 1.
    from .helpers import small_model

    m1, m2 = small_model(), small_model()
    o1 = ours(m1)
    o2 = torch.optim.SGD(groups(m2), lr=0.02, momentum=0.5)
    s_a = cf.CyclicLR(0.01, 0.1, 5)
    s_b = cf.CyclicLR(0.001, 0.05, 3, 8, "triangular2")
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for k in range(40):
        # torch oracle: set lr / momentum by hand from the float64 closed forms
        o2.param_groups[0]["lr"], o2.param_groups[0]["momentum"] = s_a(k), s_a.momentum(k)
        o2.param_groups[1]["lr"], o2.param_groups[1]["momentum"] = s_b(k), s_b.momentum(k)
        assert o1.get_last_lr() == pytest.approx([s_a(k), s_b(k)], rel=1e-6)
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert max_rel_diff(m1, m2) < 1e-4
    assert theirs  # the helper above documents why torch's CyclicLR is not the oracle here


def test_add_param_group_later_gets_its_schedule():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = cf.SGD([a], lr=0.1, backend="torch")
    opt.add_param_group({"params": [b], "lr": cf.StepLR(0.5, 2)})
    for _ in range(5):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        opt.step()
    # counter is global: b saw steps 0..4 -> 0.5, 0.5, 0.05, 0.05, 0.005
    assert a.tolist() == pytest.approx([-0.5, -0.5])
    assert b.tolist() == pytest.approx([-(0.5 + 0.5 + 0.05 + 0.05 + 0.005)] * 2, rel=1e-6)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": -1.0})


def test_sparse_grad_refused_before_anything_moves():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Parameter(torch.randn(4))
    opt = cf.Adam([dense, emb.weight], lr=cf.CyclicLR(0.01, 0.1, 3), backend="torch")
    before = dense.detach().clone(), emb.weight.detach().clone()
    dense.grad = torch.ones(4)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="SparseAdam"):
        opt.step()
    assert torch.equal(dense, before[0]) and torch.equal(emb.weight, before[1])
    assert len(opt.state) == 0 and opt.schedule_step.item() == 0


def test_empty_params_raise():
    with pytest.raises(ValueError, match="empty"):
        cf.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        cf.Adam([{"params": []}], lr=0.1)


P = [torch.nn.Parameter(torch.zeros(2))]
BAD = [
    (lambda: cf.SGD(P, lr=-0.1), "lr"),
    (lambda: cf.SGD(P, lr=float("nan")), "lr"),
    (lambda: cf.SGD(P, lr=torch.tensor([0.1, 0.2])), "lr"),  # a 1-element tensor lr is accepted (torch's idiom)
    (lambda: cf.SGD(P, lr=0.1, momentum=-0.5), "momentum"),
    (lambda: cf.SGD(P, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda: cf.SGD(P, lr=0.1, nesterov=True), "Nesterov"),
    (lambda: cf.SGD(P, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda: cf.Adam(P, lr=0.1, betas=(1.0, 0.9)), "beta"),
    (lambda: cf.Adam(P, lr=0.1, betas=(0.9, -0.1)), "beta"),
    (lambda: cf.Adam(P, lr=0.1, eps=-1e-8), "eps"),
    (lambda: cf.AdamW(P, lr=0.1, weight_decay=-0.1), "weight_decay"),
    (lambda: cf.Adam(P, lr=0.1, max_grad_norm=0.0), "max_grad_norm"),
    (lambda: cf.Adam(P, lr=0.1, backend="gpu"), "backend"),
    (lambda: cf.Adam(P, lr=0.1, state_dtype=torch.int32), "state_dtype"),
]


@pytest.mark.parametrize("make,arg", BAD, ids=[a + str(i) for i, (_, a) in enumerate(BAD)])
def test_bad_hyperparameters_raise(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_get_last_lr_is_the_next_updates_lr():
    spec = cf.CyclicLR(0.01, 0.1, 4, mode="exp_range", gamma=0.97)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = cf.SGD([p], lr=spec, backend="torch")
    for k in range(15):
        assert opt.get_last_lr() == pytest.approx([spec(k)], rel=1e-6)
        assert opt.get_last_momentum() == pytest.approx([spec.momentum(k)], rel=1e-6)
        p.grad = torch.ones(1)
        opt.step()
    assert opt.schedule_step.item() == 15


def test_max_grad_norm_equals_clip_grad_norm_then_step():
    def ours(ps):
        return cf.AdamW(ps, lr=cf.CosineAnnealingLR(0.01, 10), backend="torch", max_grad_norm=0.05)

    m1 = __import__("tests.helpers", fromlist=["small_model"]).small_model(dtype=torch.float64)
    m2 = __import__("copy").deepcopy(m1)
    o1 = ours(m1.parameters())
    o2 = torch.optim.AdamW(m2.parameters(), lr=0.01)
    s2 = L.CosineAnnealingLR(o2, 10)
    for _ in range(30):
        x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64) * 10
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.05)
        o1.step()
        o2.step()
        s2.step()
        assert o1.last_grad_norm.item() == pytest.approx(norm.item(), rel=1e-5)
        assert norm.item() > 0.05  # clipping was active
    assert max_rel_diff(m1, m2) < 1e-5


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_non_finite_step_changes_nothing(cls):
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2))]
    opt = getattr(cf, cls)(ps, lr=cf.CyclicLR(0.01, 0.1, 3), backend="torch", max_grad_norm=1.0, **kw)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    snapshot = [p.detach().clone() for p in ps], {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in ps}
    lr_before = opt.get_last_lr()
    for bad in (float("inf"), float("nan")):
        for p in ps:
            p.grad = torch.randn_like(p)
        ps[1].grad[1, 0] = bad
        opt.step()
        assert not torch.isfinite(opt.last_grad_norm)
        for p, before in zip(ps, snapshot[0]):
            assert torch.equal(p, before)
        for p in ps:
            for k, v in opt.state[p].items():
                assert torch.equal(v, snapshot[1][id(p)][k]), k
        assert opt.schedule_step.item() == 1 and opt.get_last_lr() == lr_before


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_found_inf_from_grad_scaler_skips(cls):
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    p = torch.nn.Parameter(torch.randn(6))
    opt = getattr(cf, cls)([p], lr=cf.ExponentialLR(0.1, 0.9), backend="torch", **kw)
    # a skipped FIRST step: torch's fused optimizers create zero state here too
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    before = p.detach().clone()
    p.grad = torch.randn(6)
    opt.step()
    assert torch.equal(p, before) and opt.schedule_step.item() == 0
    for v in opt.state[p].values():
        assert not v.any()
    # a finite step unscales by grad_scale
    opt.found_inf = torch.tensor(0.0)
    g = torch.randn(6)
    p.grad = g * 4.0
    ref = torch.nn.Parameter(before.clone())
    ref_opt = getattr(torch.optim, cls)([ref], lr=0.1, **kw)
    ref.grad = g
    ref_opt.step()
    opt.step()
    torch.testing.assert_close(p, ref)
    assert opt.schedule_step.item() == 1


def test_real_grad_scaler_matches_torch_composition():
    """torch.amp.GradScaler drives cf.Adam through grad_scale/found_inf; an
    overflow step is skipped and the schedule does not advance."""
    from .helpers import small_model

    m1 = small_model()
    m2 = __import__("copy").deepcopy(m1)
    o1 = cf.Adam(m1.parameters(), lr=cf.CyclicLR(0.001, 0.01, 4, cycle_momentum=False), backend="torch")
    o2 = torch.optim.Adam(m2.parameters(), lr=0.01)
    s2 = L.CyclicLR(o2, 0.001, 0.01, 4, cycle_momentum=False)
    sc1 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sc2 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    skipped = 0
    for k in range(25):
        x, y = torch.randn(16, 5), torch.randn(16, 3)
        for m, o, sc in ((m1, o1, sc1), (m2, o2, sc2)):
            o.zero_grad()
            sc.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
            if k in (3, 11):
                m[0].weight.grad[0, 0] = float("inf")
            scale = sc.get_scale()
            sc.step(o)
            sc.update()
        if sc2.get_scale() >= scale:  # torch's step was not skipped
            s2.step()
        else:
            skipped += 1
    assert skipped == 2 and o1.schedule_step.item() == 23
    assert max_rel_diff(m1, m2) < 1e-4


def test_plateau_report_matches_torch():
    metrics = [1.0, 0.9, 0.95, 0.91, 0.9, 0.92, 0.93, 0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3]
    for mode, tmode, sign in (("min", "rel", 1), ("min", "abs", 1), ("max", "rel", -1), ("max", "abs", -1)):
        kw = dict(mode=mode, factor=0.5, patience=2, threshold=0.01, threshold_mode=tmode, cooldown=1, min_lr=0.004)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = cf.SGD([p], lr=cf.ReduceLROnPlateau(0.1, **kw), backend="torch")
        q = torch.nn.Parameter(torch.zeros(1))
        topt = torch.optim.SGD([q], lr=0.1)
        tsched = L.ReduceLROnPlateau(topt, **kw)
        for m in metrics:
            m = sign * m
            opt.report(torch.tensor(m))
            tsched.step(m)
            assert opt.get_last_lr() == pytest.approx([topt.param_groups[0]["lr"]], rel=1e-6), (mode, tmode)
        assert topt.param_groups[0]["lr"] < 0.1  # the sequence did reduce the LR


def test_backend_by_name_raises_with_reason_and_auto_falls_back(monkeypatch):
    p = [torch.nn.Parameter(torch.zeros(2))]
    p[0].grad = torch.ones(2)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CLR_FUSED_BACKEND", raising=False)
    opt = cf.SGD(p, lr=0.1, backend="cuda")
    with pytest.raises(cf.BackendUnavailable, match="cuda"):
        opt.step()
    assert torch.equal(p[0], torch.zeros(2))
    opt = cf.SGD(p, lr=0.1, backend="triton")
    with pytest.raises(cf.BackendUnavailable, match="TRITON_INTERPRET|triton"):
        opt.step()
    opt = cf.SGD(p, lr=0.1)  # auto: the compiled CPU kernels where the extension is built
    opt.step()
    from clr_fused import _ext

    assert opt._backend_for(p[0].device) == ("cpu" if _ext.load() is not None else "torch")
    monkeypatch.setenv("CLR_FUSED_BACKEND", "cuda")
    with pytest.raises(cf.BackendUnavailable):
        cf.SGD(p, lr=0.1).step()
