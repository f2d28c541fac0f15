"""Drop-in to the last detail: torch's own optimizer inputs (optim_db), the
protocol edges (deepcopy / pickle, old checkpoints, the six hooks), complex
parameters, torch's keyword arguments and a tensor lr."""

from __future__ import annotations

import copy
import io
import os
import pickle

import pytest
import torch

import clr_fused as cf

from .cases import backends

BACKENDS = backends("torch", "cpu")
if os.environ.get("TRITON_INTERPRET") == "1":
    BACKENDS.append("triton")
TORCH_CLS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


def _optim_db_cases():
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except Exception:  # noqa: BLE001 - absent or not importable in this torch build
        return []
    cases = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if info.optim_cls in TORCH_CLS.values():
            for inp in info.optim_inputs_func(device="cpu", dtype=torch.float32):
                if inp.params is None:
                    cases.append(pytest.param(name, inp.kwargs, id=f"{name}-{inp.desc}"))
    return cases


OPTIM_DB = _optim_db_cases()


def _steps(ours, theirs, a, b, n=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p, q in zip(a, b):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()


def _params(dtype=torch.float32, sizes=((5, 3), (129,), (1,)), complex_=False):
    gen = torch.Generator().manual_seed(1)
    out = []
    for s in sizes:
        t = torch.randn(s, generator=gen, dtype=torch.float64)
        if complex_:
            t = torch.complex(t, torch.randn(s, generator=gen, dtype=torch.float64))
        out.append(torch.nn.Parameter(t.to(dtype)))
    return out


def _clone(ps):
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


@pytest.mark.skipif(not OPTIM_DB, reason="torch's optim_db is not importable here (needs expecttest)")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,kwargs", OPTIM_DB)
def test_optim_db_inputs_match_torch(name, kwargs, dtype, backend):
    if dtype == torch.float64 and backend != "torch":
        pytest.skip("the fused kernels take float32, bfloat16 and float16")
    kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    a = _params(dtype)
    b = _clone(a)
    ours = getattr(cf, name)(a, backend=backend, **kwargs)
    theirs_kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if isinstance(theirs_kwargs.get("lr"), torch.Tensor):
        theirs_kwargs["foreach"] = False  # torch: a tensor lr needs capturable or the for-loop path
    theirs = TORCH_CLS[name](b, **theirs_kwargs)
    _steps(ours, theirs, a, b)
    # the schedule (a constant LR included) is evaluated in float32 on the
    # device, so float64 runs agree to float32's LR rounding, not to 1e-15
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-9)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, **tol)
        for key, v in theirs.state[q].items():
            torch.testing.assert_close(ours.state[p][key].to(v.dtype).reshape(v.shape), v, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,kwargs",
    [("SGD", dict(momentum=0.9, weight_decay=0.1)), ("Adam", dict(amsgrad=True, weight_decay=0.1)), ("AdamW", {})],
)
def test_complex_parameters_match_torch(name, kwargs, backend):
    a = _params(torch.complex64, complex_=True)
    b = _clone(a)
    ours = getattr(cf, name)(a, lr=0.01, backend=backend, **kwargs)
    theirs = TORCH_CLS[name](b, lr=0.01, **kwargs)
    _steps(ours, theirs, a, b)
    for p, q in zip(a, b):
        assert p.dtype == torch.complex64 and p.imag.abs().sum() > 0  # the imaginary part is alive
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        key = "momentum_buffer" if name == "SGD" else "exp_avg"
        assert ours.state[p][key].dtype == torch.complex64
        torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name,kwargs", [("SGD", dict(momentum=0.9)), ("AdamW", dict(amsgrad=True))])
def test_copies_continue_bit_identically(name, kwargs, how, backend):
    ps = _params()
    model = torch.nn.ParameterList(ps)
    spec = cf.CyclicLR(0.001, 0.01, 3, 2, cycle_momentum=False)
    opt = getattr(cf, name)(model.parameters(), lr=spec, backend=backend, max_grad_norm=5.0, **kwargs)
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) for p in ps] for _ in range(10)]
    for g in grads[:4]:
        for p, gi in zip(ps, g):
            p.grad = gi.clone()
        opt.step()  # mid-cycle
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    else:
        buf = io.BytesIO()
        torch.save((model, opt), buf)
        buf.seek(0)
        model2, opt2 = torch.load(buf, weights_only=False)
    assert opt2.backend == backend and opt2.max_grad_norm == 5.0
    assert opt2.schedule_step.item() == 4 and opt2.schedule_step is not opt.schedule_step
    ps2 = list(model2.parameters())
    for g in grads[4:]:
        for p, p2, gi in zip(ps, ps2, g):
            p.grad, p2.grad = gi.clone(), gi.clone()
        opt.step()
        opt2.step()
    for p, p2 in zip(ps, ps2):
        assert torch.equal(p, p2)
        for key, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[p2][key]), key
    assert opt2.schedule_step.item() == opt.schedule_step.item() == 10
    assert opt2.get_last_lr() == opt.get_last_lr()


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_old_checkpoint_without_newer_group_keys(name):
    """torch fills keys that older versions did not write; so do we."""
    a = _params()
    b = _clone(a)
    theirs = TORCH_CLS[name](b, lr=0.01, **({"momentum": 0.9} if name == "SGD" else {}))
    for q in b:
        q.grad = torch.randn_like(q)
    theirs.step()
    sd = copy.deepcopy(theirs.state_dict())
    for group in sd["param_groups"]:
        for key in (
            "maximize",
            "nesterov",
            "amsgrad",
            "foreach",
            "fused",
            "capturable",
            "differentiable",
            "decoupled_weight_decay",
        ):
            group.pop(key, None)
    ours = getattr(cf, name)(a, lr=0.01, backend="torch")
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    with torch.no_grad():
        for p, q in zip(a, b):
            p.copy_(q)
    _steps(ours, theirs, a, b, n=3)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert ours.param_groups[0]["maximize"] is False


def test_the_six_hooks():
    ps = _params()
    spec = cf.OneCycleLR(0.01, 20)
    opt = cf.SGD(ps, lr=spec, momentum=0.9, backend="torch")
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("step_pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("step_post"))
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd_pre"))

    def sd_post(o, sd):
        # the finished dict: our keys and the current LR are in it
        assert "clr_fused_step" in sd["param_groups"][0]
        assert sd["param_groups"][0]["lr"] == pytest.approx(o.get_last_lr()[0])
        seen.append("sd_post")
        sd["from_hook"] = True
        return sd

    opt.register_state_dict_post_hook(sd_post)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    assert sd["from_hook"] and seen == ["step_pre", "step_post", "sd_pre", "sd_post"]

    # a saved dict with two groups, merged into one by a pre hook before any check
    other = cf.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=spec, momentum=0.9, backend="torch")
    other.step()
    two_groups = copy.deepcopy(other.state_dict())
    assert len(two_groups["param_groups"]) == 2

    def merge(o, sd):
        g0, g1 = sd["param_groups"]
        sd["param_groups"] = [{**g0, "params": g0["params"] + g1["params"]}]
        seen.append("load_pre")
        return sd

    def load_post(o):
        # the load is complete: the schedule is back, no clr_fused_* keys remain
        assert isinstance(o.param_groups[0]["schedule"], cf.OneCycleLR)
        assert not any(k.startswith("clr_fused") for k in o.param_groups[0])
        assert o.schedule_step.item() == 1
        seen.append("load_post")

    opt.register_load_state_dict_pre_hook(merge)
    opt.register_load_state_dict_post_hook(load_post)
    opt.load_state_dict(two_groups)
    assert seen[-2:] == ["load_pre", "load_post"]


def test_load_tolerates_state_entries_that_are_not_per_parameter():
    ps = _params()
    opt = cf.Adam(ps, lr=0.01, backend="torch")
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())

    def add_extra(o, sd):
        sd["state"]["note"] = "kept by a hook"
        return sd

    opt.register_load_state_dict_pre_hook(add_extra)
    opt.load_state_dict(sd)
    opt.step()


def test_torch_keyword_arguments():
    p = [torch.nn.Parameter(torch.randn(4))]
    assert cf.AdamW(p, lr=1e-3, fused=True).backend == "auto"
    assert cf.Adam(p, lr=1e-3, foreach=True).backend == "torch"
    assert cf.SGD(p, lr=1e-3, foreach=False, fused=None).backend == "auto"
    assert cf.Adam(p, lr=1e-3, capturable=True).param_groups[0]["capturable"] is True
    for cls in (cf.SGD, cf.Adam, cf.AdamW):
        with pytest.raises(NotImplementedError, match="differentiable"):
            cls(p, lr=1e-3, differentiable=True)
    with pytest.raises(ValueError, match="fused"):
        cf.Adam(p, lr=1e-3, fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused"):
        cf.Adam(p, lr=1e-3, fused=True, backend="torch")
    # Adam(decoupled_weight_decay=True) is AdamW
    a, b = _params(), None
    b = _clone(a)
    ours = cf.Adam(a, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, backend="torch")
    theirs = torch.optim.AdamW(b, lr=0.01, weight_decay=0.1)
    _steps(ours, theirs, a, b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr_is_read_on_the_device_every_step(backend):
    lr = torch.tensor(0.01)
    a = _params()
    b = _clone(a)
    ours = cf.Adam(a, lr=lr, backend=backend)
    theirs = torch.optim.Adam(b, lr=torch.tensor(0.01), foreach=False)
    _steps(ours, theirs, a, b, n=2)
    lr.fill_(0.05)  # written in place, as between CUDA-graph replays
    theirs.param_groups[0]["lr"].fill_(0.05)
    _steps(ours, theirs, a, b, n=2, seed=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert ours.get_last_lr() == pytest.approx([0.05])
    saved = ours.state_dict()["param_groups"][0]["lr"]
    assert isinstance(saved, torch.Tensor) and saved.item() == pytest.approx(0.05)


def test_float_lr_saved_exactly():
    p = [torch.nn.Parameter(torch.randn(3))]
    for lr in (1e-3, 0.005, 0.1):
        assert cf.Adam(p, lr=lr).state_dict()["param_groups"][0]["lr"] == lr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_betas_are_read_on_the_device_every_step(name, backend):
    b1, b2 = torch.tensor(0.9), torch.tensor(0.999)
    a = _params()
    b = _clone(a)
    ours = getattr(cf, name)(a, lr=0.01, betas=(b1, b2), weight_decay=0.1, backend=backend)
    theirs = TORCH_CLS[name](
        b, lr=0.01, betas=(torch.tensor(0.9), torch.tensor(0.999)), weight_decay=0.1, foreach=False
    )
    _steps(ours, theirs, a, b, n=2)
    b1.fill_(0.5)  # written in place between steps
    b2.fill_(0.99)
    tb1, tb2 = theirs.param_groups[0]["betas"]
    tb1.fill_(0.5)
    tb2.fill_(0.99)
    _steps(ours, theirs, a, b, n=3, seed=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(a, b):
        torch.testing.assert_close(ours.state[x]["exp_avg_sq"], theirs.state[y]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_step_enters_torch_profiler_range_and_global_hooks_only_when_needed():
    """step() skips torch's profiler range when nothing watches (host cost), and
    takes torch's own wrapper when a profiler runs or a (global) hook exists."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    ps = _params()
    opt = cf.AdamW(ps, lr=cf.CyclicLR(1e-3, 1e-2, 4), backend="torch")
    for p in ps:
        p.grad = torch.randn_like(p)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert "Optimizer.step#AdamW.step" in names  # the range torch's optimizers show, also for ours
    ref = torch.optim.AdamW(_params(), lr=1e-3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ref.step()
    assert "Optimizer.step#AdamW.step" in {e.name for e in prof.events()}
    seen = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("pre", type(o).__name__))),
               register_optimizer_step_post_hook(lambda o, a, k: seen.append(("post", type(o).__name__)))]  # fmt: skip
    try:
        opt.step()
    finally:
        for h in handles:
            h.remove()
    opt.step()  # no hook left: not called again
    assert seen == [("pre", "AdamW"), ("post", "AdamW")]
    assert int(opt.schedule_step) == 3 and type(opt).step is cf.FusedOptimizer.step  # torch did not wrap it again
