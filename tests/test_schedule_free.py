"""cf.SGDScheduleFree / cf.AdamWScheduleFree against the ``schedulefree``
package (``pip install schedulefree``), step for step.

The torch backend is bit-identical to schedulefree's foreach step (y, z,
exp_avg_sq and the float64 running scalars) over 1,000 steps; so is the
``cpu`` backend's SGD.  The ``cpu`` AdamW differs only where torch's CPU
``sqrt`` (not correctly rounded: in 0.7% to 20% of elements, by CPU) differs
from the kernels' correctly rounded one: against float64, its error is at
most twice schedulefree's own.  Triton under the interpreter rounds
each multiply and add, as the CPU build's baseline copy does: bit for bit
against that.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import clr_fused as cf

from .cases import backends

schedulefree = pytest.importorskip("schedulefree")

SIZES = [1, 7, 33, 128, 1000, 4099]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {
    "sgd": (cf.SGDScheduleFree, "SGDScheduleFree", dict(lr=0.1, momentum=0.9, weight_decay=1e-3, warmup_steps=10)),
    "adamw": (
        cf.AdamWScheduleFree,
        "AdamWScheduleFree",
        dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2, warmup_steps=10, r=0.5),
    ),
}


def _ulp(x):
    x = x.abs()
    return torch.nextafter(x, torch.full_like(x, float("inf"))) - x


def _pair(kind, backend, steps, sizes=SIZES, **over):
    ours_cls, name, kw = KINDS[kind]
    kw = {**kw, **over}
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = ours_cls(a, backend=backend, **kw)
    theirs = getattr(schedulefree, name)(b, **kw)
    ours.train()
    theirs.train()
    _steps(a, b, ours, theirs, steps, seed=1)
    return a, b, ours, theirs


def _steps(a, b, ours, theirs, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for ps, opt in ((a, ours), (b, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()


def _states(opt, ps, key):
    return [opt.state[p][key] for p in ps]


def _differing(xs, ys) -> int:
    return sum(int((x != y).sum()) for x, y in zip(xs, ys))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_torch_backend_bit_identical_to_schedulefree_over_1000_steps(kind):
    a, b, ours, theirs = _pair(kind, "torch", 1000)
    assert _differing(a, b) == 0  # y
    assert _differing(_states(ours, a, "z"), _states(theirs, b, "z")) == 0
    if kind == "adamw":
        assert _differing(_states(ours, a, "exp_avg_sq"), _states(theirs, b, "exp_avg_sq")) == 0
    g0, t0 = ours.param_groups[0], theirs.param_groups[0]
    assert float(g0["weight_sum"]) == t0["weight_sum"] and float(g0["lr_max"]) == t0["lr_max"]
    assert int(ours.schedule_step) == t0["k"] == 1000
    ours.eval()
    theirs.eval()
    assert _differing(a, b) == 0  # x


@pytest.mark.skipif("cpu" not in backends("cpu"), reason="needs the compiled cpu backend")
def test_cpu_sgd_bit_identical_and_adamw_within_torchs_sqrt():
    a, b, ours, theirs = _pair("sgd", "cpu", 1000)
    assert _differing(a, b) == 0
    assert _differing(_states(ours, a, "z"), _states(theirs, b, "z")) == 0
    ours.eval()
    theirs.eval()
    assert _differing(a, b) == 0
    # AdamW: exp_avg_sq to the bit; y / z differ only through torch's CPU sqrt, which is not
    # correctly rounded (how often depends on the CPU: 0.7% to 20% of elements on ours), where
    # the kernels' is.  Judged against float64 (schedulefree's own step on float64 copies), over
    # all elements: the largest and the root-mean-square error at most twice schedulefree's float32
    # error (they are within 1% of each other: float32's own rounding dominates both)
    a, b, ours, theirs = _pair("adamw", "cpu", 1000)
    assert _differing(_states(ours, a, "exp_avg_sq"), _states(theirs, b, "exp_avg_sq")) == 0
    assert _differing(a, b) > 0  # else the comparison below proves nothing new
    for key, err_ours, err_theirs in _error_vs_float64("adamw", ours, a, theirs, b, 1000):
        assert 0 < err_ours <= 2 * err_theirs, (key, err_ours, err_theirs)
    assert float(ours.param_groups[0]["weight_sum"]) == theirs.param_groups[0]["weight_sum"]


def _error_vs_float64(kind, ours, a, theirs, b, steps):
    """(ours, theirs) largest and root-mean-square error against float64, over y and z."""
    exact, exact_opt = _float64_oracle(kind, steps)
    out = []
    for key in (None, "z"):
        flat = [torch.cat([t.detach().double().flatten() for t in (ps if key is None else _states(o, ps, key))]) for o, ps in
                ((ours, a), (theirs, b), (exact_opt, exact))]  # fmt: skip
        err_ours, err_theirs = (flat[0] - flat[2]).abs(), (flat[1] - flat[2]).abs()
        for stat in (torch.max, lambda d: d.pow(2).mean().sqrt()):
            out.append((key, float(stat(err_ours)), float(stat(err_theirs))))
    return out


@pytest.mark.skipif("triton" not in backends("triton"), reason="needs Triton (TRITON_INTERPRET=1 on a CPU)")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_triton_against_float64_as_schedulefree(kind):
    """Triton rounds each multiply and add (no fused multiply-add, where torch's CPU kernels fuse):
    after 300 steps most elements differ from schedulefree's in the last bits, and its error against
    float64 (largest, root-mean-square) is within 2x of schedulefree's own (measured over 1,000
    steps: within 1%)."""
    a, b, ours, theirs = _pair(kind, "triton", 300)
    assert _differing(a, b) > 0
    for key, err_ours, err_theirs in _error_vs_float64(kind, ours, a, theirs, b, 300):
        assert 0 < err_ours <= 2 * err_theirs, (key, err_ours, err_theirs)


def _float64_oracle(kind, steps, sizes=SIZES):
    """schedulefree's step on float64 copies of _pair's parameters and gradients."""
    _, name, kw = KINDS[kind]
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n).double()) for n in sizes]
    opt = getattr(schedulefree, name)(ps, **kw)
    opt.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).double()
        opt.step()
    return ps, opt


def test_triton_matches_the_cpu_baseline_copy_bit_for_bit():
    """Triton under the interpreter against the CPU build's baseline copy (each
    multiply and add rounded): a CyclicLR peak LR, warm-up, r and weight decay.
    Run apart: the CPU copy is chosen once per process."""
    pytest.importorskip("triton")
    if "triton" not in backends("triton") or "cpu" not in backends("cpu"):
        pytest.skip("needs the Triton and cpu backends")
    script = r"""
import torch, clr_fused as cf
sizes = [1, 3, 127, 128, 129, 1000, 4097, 16385]
def make(backend, kind):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    if kind == "sgd":
        spec = cf.CyclicLR(0.05, 0.2, 5, cycle_momentum=False)
        o = cf.SGDScheduleFree(ps, lr=spec, weight_decay=1e-3, warmup_steps=7, r=0.5, backend=backend)
    else:
        o = cf.AdamWScheduleFree(ps, lr=1e-2, weight_decay=1e-2, warmup_steps=7, r=0.5, backend=backend)
    o.train()
    return ps, o
for kind in ("sgd", "adamw"):
    (a, oa), (b, ob) = make("triton", kind), make("cpu", kind)
    gen = torch.Generator().manual_seed(1)
    for i in range(40):
        gs = [torch.randn(n, generator=gen) for n in sizes]
        for ps, o in ((a, oa), (b, ob)):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            o.step()
    keys = ["z"] + (["exp_avg_sq"] if kind == "adamw" else [])
    dp = sum(int((x != y).sum()) for x, y in zip(a, b))
    ds = sum(int((oa.state[x][k] != ob.state[y][k]).sum()) for x, y in zip(a, b) for k in keys)
    print("differing", dp, ds, int(oa.schedule_step), int(ob.schedule_step))
"""
    env = {**os.environ, "CLR_FUSED_CPU_ISA": "baseline", "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("differing")]
    assert lines == [["differing", "0", "0", "40", "40"]] * 2, out.stdout


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_schedule_as_peak_lr_and_scalars_on_the_device(backend):
    """A schedule spec as the LR (what a range test sweeps): schedulefree fed the
    same LR each step by hand; the running scalars advance on the device."""
    spec = cf.CyclicLR(0.01, 0.1, 4, cycle_momentum=False)
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in (5, 300)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = cf.SGDScheduleFree(a, lr=spec, warmup_steps=3, backend=backend)
    theirs = schedulefree.SGDScheduleFree(b, lr=0.01, warmup_steps=3)
    ours.train()
    theirs.train()
    gen = torch.Generator().manual_seed(3)
    for k in range(25):
        theirs.param_groups[0]["lr"] = float(spec(k))
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for ps, opt in ((a, ours), (b, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-7)
    assert float(ours.param_groups[0]["lr_max"]) == theirs.param_groups[0]["lr_max"]


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_state_dicts_both_ways_and_resume(backend):
    """Ours resumes bit for bit; schedulefree's checkpoint loads into ours (its
    k becomes our step) and ours into schedulefree; both continue as one run."""
    a, b, ours, theirs = _pair("adamw", backend, 12, sizes=[33, 200])
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    mine = cf.AdamWScheduleFree(c, backend=backend, **KINDS["adamw"][2])
    mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert int(mine.schedule_step) == 12 and mine.param_groups[0]["train_mode"]
    d = [torch.nn.Parameter(p.detach().clone()) for p in a]
    again = cf.AdamWScheduleFree(d, backend=backend, **KINDS["adamw"][2])
    again.load_state_dict(copy.deepcopy(ours.state_dict()))
    e = [torch.nn.Parameter(p.detach().clone()) for p in a]
    back = schedulefree.AdamWScheduleFree(e, **KINDS["adamw"][2])
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    _steps(a, b, ours, theirs, 8, seed=2)
    _steps(c, d, mine, again, 8, seed=2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(8):
        grads = [torch.randn(p.shape, generator=gen) for p in e]
        for p, g in zip(e, grads):
            p.grad = g.clone()
        back.step()
    tol = dict(rtol=0, atol=1e-6)
    for x, y in zip(c, b):  # schedulefree's checkpoint, continued by us
        torch.testing.assert_close(x, y, **tol)
    for x, y in zip(d, a):  # ours, resumed
        assert torch.equal(x, y)
    for x, y in zip(e, a):  # ours, continued by schedulefree
        torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_train_eval_switch_and_refusals(backend):
    p = torch.nn.Parameter(torch.randn(10))
    opt = cf.AdamWScheduleFree([p], backend=backend)
    p.grad = torch.randn(10)
    with pytest.raises(RuntimeError, match="train mode"):
        opt.step()
    assert int(opt.schedule_step) == 0 and not opt.state  # refused before anything
    opt.train()
    opt.step()
    y = p.detach().clone()
    opt.eval()
    opt.eval()  # twice: a no-op, as schedulefree
    z = opt.state[p]["z"]
    torch.testing.assert_close(p.detach(), torch.lerp(y, z, 1 - 1 / 0.9))
    opt.train()
    torch.testing.assert_close(p.detach(), y, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="state_dtype"):
        cf.SGDScheduleFree([p], state_dtype="int8")
    with pytest.raises(ValueError, match="Momentum"):
        cf.SGDScheduleFree([p], momentum=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cf.AdamWScheduleFree([p], warmup_steps=-1)
    with pytest.raises(ValueError, match="cycle_momentum"):
        cf.SGDScheduleFree([p], lr=cf.OneCycleLR(0.1, 10))


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_grad_scaler_skip_keeps_everything(backend):
    a, b, ours, _ = _pair("sgd", backend, 5, sizes=[9, 70])
    before = [p.detach().clone() for p in a]
    zs = [z.clone() for z in _states(ours, a, "z")]
    scal = [float(ours.param_groups[0][k]) for k in ("lr_max", "weight_sum")]
    ours.found_inf = torch.ones(())
    ours.grad_scale = torch.full((), 1024.0)
    ours.step()
    del ours.found_inf, ours.grad_scale
    assert all(torch.equal(p, q) for p, q in zip(a, before))
    assert all(torch.equal(z, w) for z, w in zip(_states(ours, a, "z"), zs))
    assert [float(ours.param_groups[0][k]) for k in ("lr_max", "weight_sum")] == scal
    assert int(ours.schedule_step) == 5


def test_bfloat16_params_with_stochastic_rounding_track_fp32():
    """bf16 parameters (z bf16 too) with stochastic rounding: their movement
    follows the fp32 run's, where round-to-nearest loses the small updates."""
    torch.manual_seed(0)
    w = torch.randn(8192)
    moves = {}
    for name, dtype, sr in (
        ("fp32", torch.float32, False),
        ("sr", torch.bfloat16, True),
        ("nearest", torch.bfloat16, False),
    ):
        p = torch.nn.Parameter(w.to(dtype, copy=True))
        opt = cf.AdamWScheduleFree([p], lr=2e-3, backend="torch", stochastic_rounding=sr)
        opt.train()
        gen = torch.Generator().manual_seed(1)
        for _ in range(100):
            p.grad = (torch.randn(8192, generator=gen) + 0.5).to(dtype)  # a drift the updates follow
            opt.step()
        assert opt.state[p]["z"].dtype == dtype
        moves[name] = p.detach().float() - w.to(dtype).float()
    err_sr = (moves["sr"] - moves["fp32"]).abs().mean()
    err_nearest = (moves["nearest"] - moves["fp32"]).abs().mean()
    assert err_sr < 0.25 * moves["fp32"].abs().mean(), (err_sr, moves["fp32"].abs().mean())
    assert err_sr < err_nearest, (err_sr, err_nearest)


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_step_in_backward_bit_identical_to_step(backend):
    """register_step_in_backward: every parameter's launch reads the group's
    scalars as they were, the last one advances them, as step() does."""

    def run(in_backward):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = cf.AdamWScheduleFree(model.parameters(), lr=5e-3, warmup_steps=4, weight_decay=0.01, backend=backend)
        opt.train()
        if in_backward:
            opt.register_step_in_backward(model)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
            torch.nn.functional.mse_loss(model(x), y).backward()
            if not in_backward:
                opt.step()
                opt.zero_grad()
        return model, opt

    (ma, oa), (mb, ob) = run(False), run(True)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(oa.state[p]["z"], ob.state[q]["z"])
    for k in ("lr_max", "weight_sum"):
        assert float(oa.param_groups[0][k]) == float(ob.param_groups[0][k])
    assert int(oa.schedule_step) == int(ob.schedule_step) == 20


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_mixed_dtype_group_advances_its_scalars_once_per_step(backend):
    """fp32 and bf16 parameters in one group are two launches: both read the
    same scalars, one advances them; the fp32 parameters stay schedulefree's."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(50)), torch.nn.Parameter(torch.randn(20).bfloat16())]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    ours = cf.SGDScheduleFree(a, lr=0.1, warmup_steps=3, backend=backend)
    theirs = schedulefree.SGDScheduleFree(b, lr=0.1, warmup_steps=3)
    ours.train()
    theirs.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        g = torch.randn(50, generator=gen)
        a[0].grad, a[1].grad, b[0].grad = g.clone(), torch.randn(20, generator=gen).bfloat16(), g.clone()
        ours.step()
        theirs.step()
    assert torch.equal(a[0], b[0])
    assert float(ours.param_groups[0]["weight_sum"]) == theirs.param_groups[0]["weight_sum"]


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_deepcopy_and_pickle_continue_bit_for_bit(backend):
    import pickle

    a, b, ours, theirs = _pair("sgd", backend, 7, sizes=[5, 40])
    copied = copy.deepcopy({"p": a, "o": ours})
    pickled = pickle.loads(pickle.dumps({"p": a, "o": ours}))
    gen_grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(s)) for s in range(4) for p in a]
    for run in ({"p": a, "o": ours}, copied, pickled):
        for s in range(4):
            for i, p in enumerate(run["p"]):
                p.grad = gen_grads[s * len(a) + i].clone()
            run["o"].step()
    for x, y, z in zip(a, copied["p"], pickled["p"]):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert float(copied["o"].param_groups[0]["weight_sum"]) == float(ours.param_groups[0]["weight_sum"])


def test_range_test_sweeps_the_peak_lr():
    """cf.range_test on a schedule-free optimizer ramps its LR (the peak the
    warm-up reaches) and restores the optimizer and model afterwards."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)] * 4
    opt = cf.SGDScheduleFree(model.parameters(), lr=0.1, backend="torch")
    opt.train()
    before = [p.detach().clone() for p in model.parameters()]
    res = cf.range_test(
        model, torch.nn.functional.mse_loss, data, opt, start_lr=1e-4, end_lr=1.0, num_steps=30, progress=False
    )
    assert len(res.lrs) >= 10 and res.lrs[0] < res.lrs[-1]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert int(opt.schedule_step) == 0 and float(opt.param_groups[0]["lr"]) == 0.1


@pytest.mark.skipif("cpu" not in backends("cpu"), reason="needs the compiled cpu backend")
@pytest.mark.parametrize("name,hyper,lists", [("SGDScheduleFree", 5, 1), ("AdamWScheduleFree", 7, 2)])
def test_the_op_refuses_int8_states_for_schedule_free(name, hyper, lists):
    """The classes refuse state_dtype="int8"; the op itself too (there is no int8 kernel for
    them, csrc/algorithms/*.cuh kInt8States), before it reads a table or writes anything."""
    from clr_fused import _ext
    from clr_fused.kernels import compiled

    ops, ids = compiled._ops(), _ext.load().ALGORITHMS
    p, g = torch.randn(300), torch.randn(300)
    before = p.clone()
    states = [torch.zeros(300, dtype=torch.int8)] * lists
    scales = [torch.ones(3)] * len(states)
    tables = [torch.zeros(1, dtype=torch.int64)] * (2 + 2 * len(states) + 3)
    with pytest.raises(RuntimeError, match=f"step \\({name}\\): its states cannot be int8 codes"):
        ops.step(
            ids[name], [p], [g], states, scales, tables, torch.zeros(1, 8, dtype=torch.float64),
            torch.zeros((), dtype=torch.int64), torch.tensor(0.01, dtype=torch.float64), None, None, None, None,
            torch.zeros(1, dtype=torch.int32), [0.5] * hyper, False, True, torch.zeros(2, dtype=torch.float64), True, [],
        )  # fmt: skip
    assert torch.equal(p, before)
