"""What users and trainers change between steps: the fast path checks
everything the kernels rely on, so each change gives torch.optim's result or
a clear error, never a crash; refused calls leave the optimizer as it was.

Random mutation sequences (hypothesis) run against torch.optim side by side
on the ``torch`` and ``cpu`` backends and, under TRITON_INTERPRET=1, Triton.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clr_fused as cf

from .cases import backends

BACKENDS = backends("torch", "cpu")
TRITON = importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1"
ALL = BACKENDS + (["triton"] if TRITON else [])


def _snapshot(opt):
    """Every bit of an optimizer's state that a refused call must leave alone."""
    groups = [
        {k: (v.clone() if isinstance(v, torch.Tensor) else copy.copy(v)) for k, v in g.items() if k != "params"}
        for g in opt.param_groups
    ]
    state = {
        id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for p, s in opt.state.items()
    }
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return groups, state, params, int(opt.schedule_step), opt.get_last_lr()


def _same(a, b):
    ga, sa, pa, ka, la = a
    gb, sb, pb, kb, lb = b
    assert len(ga) == len(gb) and ka == kb and la == lb
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)
    assert sa.keys() == sb.keys()
    for key in sa:
        for name, v in sa[key].items():
            w = sb[key][name]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w


def _oracle(cls):
    """The optimizer ours is a drop-in for: torch.optim's, lion_pytorch's or schedulefree's."""
    if cls == "Lion":
        return pytest.importorskip("lion_pytorch").Lion
    if cls.endswith("ScheduleFree"):
        return getattr(pytest.importorskip("schedulefree"), cls)
    return getattr(torch.optim, cls)


def _pair(cls, backend, shapes=((5, 3), (7,)), **kw):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = getattr(cf, cls)(ps, backend=backend, **kw)
    theirs = _oracle(cls)(qs, **kw)
    if cls.endswith("ScheduleFree"):  # they step in train mode
        ours.train()
        theirs.train()
    return ps, qs, ours, theirs


def _grads(ps, qs, seed):
    gen = torch.Generator().manual_seed(seed)
    for p, q in zip(ps, qs):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
        p.grad, q.grad = g.clone(), g.clone().to(q.dtype)


def _step_both(ours, theirs):
    """Both step, or both raise; True when both stepped."""
    err_ours = err_theirs = None
    # schedulefree's step divides the gradients in place (ours leaves them): theirs are put back,
    # so that both sides see the same gradients at the next step
    grads = [(q, q.grad.clone()) for g in theirs.param_groups for q in g["params"] if q.grad is not None]
    try:
        theirs.step()
    except Exception as exc:  # noqa: BLE001 - compared below
        err_theirs = exc
    for q, g in grads:
        if q.grad is not None and q.grad.shape == g.shape:
            q.grad.copy_(g)
    before = _snapshot(ours)
    try:
        ours.step()
    except (RuntimeError, ValueError) as exc:
        err_ours = exc
        _same(before, _snapshot(ours))  # a refused step changed nothing
        assert str(exc), "an error must say what is wrong"
    documented = "backend='torch'" in str(err_ours)  # float64 on a fused backend asked for by name
    if err_ours is not None and err_theirs is None and not documented:
        raise AssertionError(f"we refused a step torch takes: {err_ours}")
    return err_ours is None and err_theirs is None


def _close(ps, qs, theirs=None):
    for p, q in zip(ps, qs):
        assert p.shape == q.shape and p.dtype == q.dtype
        # bf16 (the parameter, or a state a retype and a load left in bf16): torch
        # rounds every intermediate (and updates from the rounded buffer), the
        # kernels once (a few bf16 ulps over a sequence)
        states = theirs.state.get(q, {}).values() if theirs is not None else ()
        low = p.dtype == torch.bfloat16 or any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in states
        )
        tol = dict(rtol=3e-2, atol=3e-2) if low else dict(rtol=2e-6, atol=2e-7)
        torch.testing.assert_close(p.detach().float(), q.detach().float(), **tol)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "cls,kw", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01))]
)
@pytest.mark.parametrize("change", ["shrink_data", "grow_data", "set_bigger", "resize_smaller", "resize_bigger"])
def test_size_changes_between_steps(backend, cls, kw, change):
    ps, qs, ours, theirs = _pair(cls, backend, **kw)
    for seed in range(2):
        _grads(ps, qs, seed)
        _step_both(ours, theirs)
    with torch.no_grad():
        for x in (ps[0], qs[0]):
            if change == "shrink_data":
                x.data = x.data.reshape(-1)[:10].clone()
            elif change == "grow_data":
                x.data = torch.cat([x.data.reshape(-1), torch.ones(40)])
            elif change == "set_bigger":
                x.set_(torch.ones(64))
            elif change == "resize_smaller":
                x.data.resize_(4)
            else:
                x.data.resize_(300)
                x.data[15:] = 0.5
    for seed in range(2, 4):
        _grads(ps, qs, seed)
        if not _step_both(ours, theirs):
            break
        _close(ps, qs)


@pytest.mark.parametrize("backend", ALL)
def test_dtype_changes_between_steps(backend):
    # bf16 parameter turned fp32 through .data while its grad stays bf16, and the reverse
    for to, grad in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)):
        p = torch.nn.Parameter(torch.randn(33).to(torch.bfloat16 if to == torch.float32 else torch.float32))
        opt = cf.SGD([p], lr=0.1, momentum=0.9, backend=backend)
        p.grad = torch.ones_like(p)
        opt.step()
        p.grad = torch.ones_like(p)  # the gradient stays in the old dtype ...
        p.data = p.data.to(to)  # ... while .data changes it behind torch's back
        assert p.grad.dtype == grad
        before = p.detach().clone()
        if backend == "torch":
            opt.step()  # the reference path takes mixed dtypes
            continue
        with pytest.raises(RuntimeError, match="dtype|state"):
            opt.step()
        assert torch.equal(p.detach().float(), before.float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,key", [("SGD", "momentum_buffer"), ("Adam", "exp_avg"), ("Adam", "exp_avg_sq")])
def test_zero_dim_state_in_a_checkpoint_is_refused(backend, cls, key):
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.01)
    ps, qs, ours, theirs = _pair(cls, backend, **kw)
    _grads(ps, qs, 0)
    ours.step()
    sd = copy.deepcopy(ours.state_dict())
    sd["state"][0][key] = torch.tensor(1.0)
    before = _snapshot(ours)
    with pytest.raises(ValueError, match=key):
        ours.load_state_dict(sd)
    _same(before, _snapshot(ours))
    _grads(ps, qs, 1)
    ours.step()  # still usable


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda g: g.update(clr_fused_step=-3), "clr_fused_step"),
        (lambda g: g.update(clr_fused_step=3.7), "clr_fused_step"),
        (lambda g: g.update(clr_fused_step="abc"), "clr_fused_step"),
        (lambda g: g.update(clr_fused_step=2**70), "clr_fused_step"),
        (lambda g: g.update(clr_fused_schedule={"type": "Nope"}), "schedule"),
        (lambda g: g.update(clr_fused_schedule={"type": "StepLR", "base_lr": 0.1, "step_size": -1}), "step_size"),
        (lambda g: g.update(clr_fused_plateau={"lr": "x"}), "plateau"),
        (lambda g: g.update(lr=-1.0), "lr"),
        (lambda g: g.update(betas=(2.0, 0.999)), "beta"),
    ],
)
def test_bad_checkpoints_change_nothing(backend, mutate, match):
    ps, qs, ours, theirs = _pair("Adam", backend, lr=0.01)
    ours.param_groups[0]["lr"] = cf.OneCycleLR(0.01, total_steps=100)
    for seed in range(3):
        _grads(ps, qs, seed)
        ours.step()
    sd = copy.deepcopy(ours.state_dict())
    mutate(sd["param_groups"][0])
    before = _snapshot(ours)
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(sd)
    _same(before, _snapshot(ours))
    _grads(ps, qs, 9)
    ours.step()
    ours.state_dict()
    ours.get_last_lr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_param_group_changes_nothing(backend):
    ps, qs, ours, _ = _pair("SGD", backend, lr=0.1, momentum=0.9)
    _grads(ps, qs, 0)
    ours.step()
    before = _snapshot(ours)
    extra = torch.nn.Parameter(torch.randn(4))
    for bad in (
        {"params": [extra], "schedule": "cosine"},
        {"params": [extra], "lr": -1.0},
        {"params": [extra], "momentum": -1},
    ):
        with pytest.raises(ValueError):
            ours.add_param_group(bad)
        _same(before, _snapshot(ours))
    _grads(ps, qs, 1)
    ours.step()


def test_float64_beside_float32_under_auto():
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, theirs = cf.Adam(ps, lr=0.01), torch.optim.Adam(qs, lr=0.01)
    for seed in range(4):
        _grads(ps, qs, seed)
        ours.step()
        theirs.step()
    _close(ps, qs)
    if BACKENDS[-1] == "cpu":
        p32 = torch.nn.Parameter(torch.randn(5))
        p64 = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
        opt = cf.SGD([p32, p64], lr=0.1, backend="cpu")
        p32.grad, p64.grad = torch.ones_like(p32), torch.ones_like(p64)
        before = p32.detach().clone()
        with pytest.raises(ValueError, match="backend='torch'"):
            opt.step()
        assert torch.equal(before, p32.detach())  # refused before anything moved


def test_integers_past_int64_arithmetic_are_refused():
    with pytest.raises(ValueError, match="milestones"):
        cf.MultiStepLR(0.1, [2**63])
    with pytest.raises(ValueError, match="step_size"):
        cf.StepLR(0.1, 2**63)
    with pytest.raises(ValueError, match="T_mult"):
        cf.CosineAnnealingWarmRestarts(0.1, T_0=1, T_mult=2**64)


# ----------------------------------------------------------------- random sequences
MUTATIONS = ["step", "zero_grad", "drop_grad", "shrink", "grow", "set_", "retype", "noncontig_grad", "view_param",
             "add_group", "load_ours", "load_torch", "module_double"]  # fmt: skip


def _apply(kind, ps, qs, ours, theirs, seed):
    """Apply one mutation to both sides; False when a step was refused (by both)."""
    gen = torch.Generator().manual_seed(seed)
    i = int(torch.randint(len(ps), (1,), generator=gen))
    with torch.no_grad():
        if kind == "zero_grad":
            ours.zero_grad()
            theirs.zero_grad()
        elif kind == "drop_grad":
            ps[i].grad = qs[i].grad = None
        elif kind == "shrink":
            n = max(1, ps[i].numel() // 2)
            for x in (ps[i], qs[i]):
                x.data = x.data.reshape(-1)[:n].clone()
        elif kind == "grow":
            for x in (ps[i], qs[i]):
                x.data = torch.cat([x.data.reshape(-1), torch.full((3,), 0.25, dtype=x.dtype)])
        elif kind == "set_":
            src = torch.randn(6, generator=gen)
            ps[i].set_(src.clone().to(ps[i].dtype))
            qs[i].set_(src.clone().to(qs[i].dtype))
        elif kind == "retype":
            for x in (ps[i], qs[i]):
                x.data = x.data.to(torch.bfloat16 if x.dtype == torch.float32 else torch.float32)
        elif kind == "noncontig_grad":
            for x in (ps[i], qs[i]):
                g = torch.ones(x.shape + (2,), dtype=x.dtype)[..., 0] * 0.5
                x.grad = g
        elif kind == "view_param":
            for x in (ps[i], qs[i]):
                x.data = torch.ones(2 * x.numel(), dtype=x.dtype)[::2].reshape(x.shape) * 0.3
        elif kind == "add_group":
            if len(ours.param_groups) < 3:
                a = torch.nn.Parameter(torch.randn(4, generator=gen))
                b = torch.nn.Parameter(a.detach().clone())
                ours.add_param_group({"params": [a]})
                theirs.add_param_group({"params": [b]})
                ps.append(a)
                qs.append(b)
        elif kind in ("load_ours", "load_torch"):
            # each side reloads (torch's load casts states to the parameter's
            # dtype, as ours does): ours from its own dict or from torch's
            sd_theirs = copy.deepcopy(theirs.state_dict())
            sd_ours = copy.deepcopy(ours.state_dict() if kind == "load_ours" else sd_theirs)
            try:
                ours.load_state_dict(sd_ours)
            except ValueError:
                return True  # a state that no longer fits its parameter: refused, and torch keeps its own
            theirs.load_state_dict(sd_theirs)
        elif kind == "module_double":
            for x in (ps[i], qs[i]):
                x.data = x.data.double()
    if kind == "step":
        _grads_missing(ps, qs, seed)
        if not _step_both(ours, theirs):
            return False
        _close(ps, qs, theirs)
    return True


def _grads_missing(ps, qs, seed):
    gen = torch.Generator().manual_seed(seed)
    for p, q in zip(ps, qs):
        if p.grad is None or p.grad.shape != p.shape or p.grad.dtype != p.dtype:
            g = torch.randn(p.shape, generator=gen).to(p.dtype)
            p.grad, q.grad = g.clone(), g.clone()


# the generic step's algorithms, against their packages (ours starts a group added later at the
# optimizer's step, schedulefree at 0: add_group is left out for those)
GENERIC_KW = {"Lion": dict(lr=1e-3, weight_decay=0.1), "SGDScheduleFree": dict(lr=0.05, warmup_steps=2, weight_decay=0.01),
              "AdamWScheduleFree": dict(lr=0.01, warmup_steps=2, weight_decay=0.01)}  # fmt: skip


def _run_sequence(backend, cls, kinds, seed):
    kw = GENERIC_KW.get(cls) or (dict(lr=0.05, momentum=0.9) if cls == "SGD" else dict(lr=0.01))
    ps, qs, ours, theirs = _pair(cls, backend, **kw)
    for j, kind in enumerate(kinds):
        # A step both refuse ends the comparison: ours refuses before anything
        # moves, torch's for-loop may already have updated earlier parameters.
        if not _apply(kind, ps, qs, ours, theirs, seed * 100 + j):
            return
    _apply("step", ps, qs, ours, theirs, seed * 100 + 99)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend=st.sampled_from(BACKENDS),
    cls=st.sampled_from(["SGD", "Adam"]),
    kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=8),
    seed=st.integers(0, 1000),
)
def test_random_mutation_sequences_against_torch(backend, cls, kinds, seed):
    _run_sequence(backend, cls, kinds, seed)


@pytest.mark.skipif(not TRITON, reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it)")
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cls=st.sampled_from(["SGD", "Adam"]),
    kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_random_mutation_sequences_on_triton(cls, kinds, seed):
    _run_sequence("triton", cls, kinds, seed)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend=st.sampled_from(BACKENDS),
    cls=st.sampled_from(sorted(GENERIC_KW)),
    kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=8),
    seed=st.integers(0, 1000),
)
def test_random_mutation_sequences_generic_step(backend, cls, kinds, seed):
    """Lion and schedule-free SGD / AdamW (the generic fused step) against lion_pytorch / schedulefree."""
    if cls.endswith("ScheduleFree"):
        kinds = [k for k in kinds if k != "add_group"]
    _run_sequence(backend, cls, kinds, seed)
