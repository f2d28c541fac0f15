"""param_groups[g]["lr"] (and a cycled momentum / beta1) read as the live
values, on every backend: what torch's optimizer + scheduler hold, and code
that writes them (in place, by assignment, a torch scheduler) acts as it
does on torch's optimizers."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf


def _param(n=37, dtype=torch.float32):
    return torch.nn.Parameter(torch.randn(n, dtype=dtype))


def _step(opt, params, grad=None):
    for p in params:
        p.grad = torch.randn_like(p) if grad is None else torch.full_like(p, grad)
    opt.step()


@pytest.mark.parametrize("algo", ["sgd", "adam"])
def test_group_values_follow_torch_scheduler(backend, algo):
    """Before each update the group holds what torch's group holds with torch's CyclicLR."""
    p = _param()
    tp = torch.nn.Parameter(p.detach().clone())
    if algo == "sgd":
        ours = cf.SGD([p], lr=cf.CyclicLR(0.001, 0.01, 3, mode="triangular2"), momentum=0.9, backend=backend)
        theirs = torch.optim.SGD([tp], lr=0.001, momentum=0.9)
        sched = L.CyclicLR(theirs, 0.001, 0.01, 3, mode="triangular2")
        mom = lambda g: g["momentum"]  # noqa: E731
    else:
        ours = cf.Adam([p], lr=cf.OneCycleLR(0.01, total_steps=10), backend=backend)
        theirs = torch.optim.Adam([tp], lr=0.01)
        sched = L.OneCycleLR(theirs, 0.01, total_steps=10)
        mom = lambda g: g["betas"][0]  # noqa: E731
    g, tg = ours.param_groups[0], theirs.param_groups[0]
    assert isinstance(g["schedule"], (cf.CyclicLR, cf.OneCycleLR))
    for _ in range(10):
        assert isinstance(g["lr"], torch.Tensor) and g["lr"].dim() == 0
        assert float(g["lr"]) == pytest.approx(tg["lr"], rel=1e-5)  # float32 on the device, float64 in torch
        assert float(mom(g)) == pytest.approx(mom(tg), rel=1e-6)
        assert f"{g['lr']:.4g}" == f"{torch.tensor(tg['lr'], dtype=torch.float32).item():.4g}"
        grad = torch.randn_like(p)
        p.grad, tp.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        sched.step()
    torch.testing.assert_close(p, tp, rtol=1e-5, atol=1e-6)
    assert ours.get_last_lr() == [float(g["lr"])]


def test_in_place_edit_changes_one_update_then_the_schedule_resumes(backend):
    """g["lr"] *= 0.5, as torch + a scheduler: the next update uses it, the scheduler's value follows."""
    spec = cf.CyclicLR(0.01, 0.05, 4, cycle_momentum=False)
    p = _param(dtype=torch.float32)
    opt = cf.SGD([p], lr=spec, backend=backend)
    g = opt.param_groups[0]
    _step(opt, [p], 1.0)
    before = p.detach().clone()
    g["lr"] *= 0.5
    assert float(g["lr"]) == pytest.approx(spec(1) * 0.5, rel=1e-6)
    _step(opt, [p], 1.0)  # SGD without momentum, grad 1: p -= lr
    torch.testing.assert_close(before - p.detach(), torch.full_like(p, spec(1) * 0.5), rtol=1e-5, atol=1e-7)
    assert float(g["lr"]) == pytest.approx(spec(2), rel=1e-6) and g["schedule"] is spec


def test_assigning_a_number_replaces_the_schedule_and_a_spec_installs_one(backend):
    p = _param()
    opt = cf.SGD([p], lr=cf.CyclicLR(0.01, 0.05, 4), momentum=0.9, backend=backend)
    g = opt.param_groups[0]
    _step(opt, [p])
    g["lr"] = 0.003
    g["momentum"] = 0.5
    _step(opt, [p])
    _step(opt, [p])
    assert g["lr"] == 0.003 and g["momentum"] == 0.5 and "schedule" not in g
    assert opt.get_last_lr() == [0.003] and opt.get_last_momentum() == [0.5]
    saved = opt.state_dict()["param_groups"][0]
    assert saved["lr"] == 0.003 and saved["clr_fused_schedule"] is None
    # a spec assigned to "lr" installs it, counted from the optimizer's step counter (3 updates so far)
    spec = cf.ExponentialLR(0.02, 0.5)
    g["lr"] = spec
    _step(opt, [p])
    assert g["schedule"] is spec and float(g["lr"]) == pytest.approx(spec(4), rel=1e-6)


def test_a_torch_scheduler_on_our_optimizer_drives_it_as_torch(backend):
    """A torch LRScheduler fills a tensor lr in place; the next update uses its value (torch's semantics)."""
    p = _param()
    tp = torch.nn.Parameter(p.detach().clone())
    ours = cf.SGD([p], lr=cf.CyclicLR(0.01, 0.05, 4), momentum=0.9, backend=backend)
    theirs = torch.optim.SGD([tp], lr=0.01, momentum=0.9)
    lam = lambda k: 1.0 / (1 + k)  # noqa: E731
    s1, s2 = L.LambdaLR(ours, lam), L.LambdaLR(theirs, lam)
    for _ in range(6):
        # torch's CyclicLR would cycle momentum; ours does, while LambdaLR drives the LR
        theirs.param_groups[0]["momentum"] = float(ours.param_groups[0]["momentum"])
        assert float(ours.param_groups[0]["lr"]) == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-6)
        grad = torch.randn_like(p)
        p.grad, tp.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        s1.step()
        s2.step()
    torch.testing.assert_close(p, tp, rtol=1e-5, atol=1e-6)


def test_skipped_step_keeps_the_live_values(backend):
    p = _param()
    opt = cf.Adam([p], lr=cf.CyclicLR(0.001, 0.01, 3), backend=backend)
    _step(opt, [p])
    lr, b1 = float(opt.param_groups[0]["lr"]), float(opt.param_groups[0]["betas"][0])
    opt.found_inf = torch.ones(())  # as GradScaler hands it over
    _step(opt, [p])
    del opt.found_inf
    assert (float(opt.param_groups[0]["lr"]), float(opt.param_groups[0]["betas"][0])) == (lr, b1)
    assert int(opt.schedule_step) == 1


def test_several_dtypes_and_a_group_without_grads(backend):
    """The group's last launch writes the next LR (after every bucket read it);
    a group with no gradient this step still moves with the counter."""
    spec_a, spec_b = cf.CyclicLR(0.01, 0.05, 3), cf.StepLR(0.02, 2, 0.5)
    a32, b = _param(), _param()
    a16 = torch.nn.Parameter(torch.full((37,), 0.25, dtype=torch.bfloat16))  # where bf16 resolves a 0.01 step
    opt = cf.SGD([{"params": [a32, a16], "lr": spec_a}, {"params": [b], "lr": spec_b}], momentum=0.9, backend=backend)
    for k in range(5):
        assert opt.get_last_lr() == pytest.approx([spec_a(k), spec_b(k)], rel=1e-6)
        a32.grad, a16.grad = torch.ones_like(a32), torch.ones_like(a16)
        b.grad = torch.ones_like(b) if k % 2 else None
        before = a16.detach().float().clone()
        opt.step()
        if k == 0:  # first step, fresh buffers: the bf16 params moved by this step's LR, not the next one's
            torch.testing.assert_close(
                before - a16.detach().float(), torch.full_like(before, spec_a(0)), rtol=0.1, atol=0
            )
    assert opt.get_last_lr() == pytest.approx([spec_a(5), spec_b(5)], rel=1e-6)


def test_old_format_checkpoint_and_deepcopy():
    """A state dict written before the 'schedule' key (lr a float, the spec as clr_fused_* data) and a copy."""
    import copy

    p = _param()
    spec = cf.CyclicLR(0.001, 0.01, 3)
    opt = cf.SGD([p], lr=spec, momentum=0.9, backend="torch")
    for _ in range(4):
        _step(opt, [p])
    sd = opt.state_dict()
    g0 = sd["param_groups"][0]
    # plain data: lr a float, the spec under "schedule" as the clr_fused_* data (no objects)
    assert isinstance(g0["lr"], float) and g0["schedule"] == {
        k: g0[k] for k in ("clr_fused_schedule", "clr_fused_step", "clr_fused_plateau")
    }
    old = copy.deepcopy(sd)
    old["param_groups"][0].pop("schedule")  # as written before the key existed
    only_schedule = copy.deepcopy(sd)  # as a tool that keeps the live group's keys only hands it back (torchtitan)
    for key in ("clr_fused_schedule", "clr_fused_step", "clr_fused_plateau"):
        only_schedule["param_groups"][0].pop(key)
    for variant in (only_schedule, old):
        q = torch.nn.Parameter(p.detach().clone())
        fresh = cf.SGD([q], lr=0.1, momentum=0.9, backend="torch")
        fresh.load_state_dict(variant)
        assert int(fresh.schedule_step) == 4 and fresh.param_groups[0]["schedule"] == spec
    assert isinstance(fresh.param_groups[0]["schedule"], cf.CyclicLR)
    assert fresh.get_last_lr() == opt.get_last_lr() == [pytest.approx(spec(4), rel=1e-6)]
    assert fresh.get_last_momentum() == pytest.approx([spec.momentum(4)], rel=1e-6)
    dup = copy.deepcopy(opt)
    _step(dup, list(dup.param_groups[0]["params"]))
    assert dup.get_last_lr() == [pytest.approx(spec(5), rel=1e-6)] and opt.get_last_lr() == [
        pytest.approx(spec(4), rel=1e-6)
    ]


def test_plateau_group_lr_is_the_plateau_state():
    p = _param()
    opt = cf.SGD([p], lr=cf.ReduceLROnPlateau(0.1, patience=0, factor=0.5), backend="torch")
    g = opt.param_groups[0]
    for metric in (1.0, 2.0, 3.0):
        _step(opt, [p])
        opt.report(metric)
    assert float(g["lr"]) == pytest.approx(0.025)  # two reports without improvement


@pytest.mark.parametrize("factor", [0.1, 0.5, 0.3, 0.9])
def test_plateau_lr_is_torchs_after_50_reductions(backend, factor):
    """ReduceLROnPlateau's state is float64 on the device, as torch's Python
    floats: the LR after each of 50 reductions is torch's, bit for bit (a
    float32 state was 2 ulps off after 6-10)."""
    base = 0.7
    p = torch.nn.Parameter(torch.randn(5))
    spec = cf.ReduceLROnPlateau(base, factor=factor, patience=0, eps=0.0, min_lr=0.0)
    opt = cf.SGD([p], lr=spec, backend=backend)
    tp = torch.nn.Parameter(torch.randn(5))
    topt = torch.optim.SGD([tp], lr=base)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=factor, patience=0, eps=0.0, min_lr=0.0)
    reductions = 0
    metric = torch.tensor(1.0)
    for i in range(51):
        opt.report(metric if i % 2 else float(metric))  # never better: one reduction per report after the first
        tsched.step(float(metric))
        ours, theirs = float(opt.param_groups[0]["lr"]), topt.param_groups[0]["lr"]
        assert ours == theirs, (i, ours, theirs)
        reductions += ours != base
    assert reductions == 50 and theirs < base * factor**49
