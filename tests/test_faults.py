"""Fault injection, round 2 (issue 28): what a user or a trainer changes
between steps, each checked against torch.optim.  A refused step leaves
parameters, states and the schedule untouched; semantics are torch's."""

from __future__ import annotations

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext

BACKENDS = ["torch", "triton"] + (["cpu"] if _ext.load() is not None else [])


def _params(n_groups=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.nn.Parameter(torch.randn(n, generator=g)) for n in (3, 17)] for _ in range(n_groups)]


def _grads(groups, seed):
    g = torch.Generator().manual_seed(seed)
    for ps in groups:
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)


def _snapshot(opt):
    params = [p.detach().clone() for grp in opt.param_groups for p in grp["params"]]
    states = {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for p, s in opt.state.items()}
    return params, states, int(opt.schedule_step)


def _assert_same(opt, snap):
    params, states, step = snap
    assert int(opt.schedule_step) == step
    now = [p.detach() for grp in opt.param_groups for p in grp["params"]]
    assert all(torch.equal(a, b) for a, b in zip(params, now))
    assert set(states) == {id(p) for p in opt.state}
    for p, s in opt.state.items():
        old = states[id(p)]
        assert set(old) == set(s)
        for k, v in s.items():
            assert torch.equal(v, old[k]) if isinstance(v, torch.Tensor) else v == old[k], k


# ------------------------------------------------------------ half-applied steps
BAD_LATER_GROUP = [
    ("SGD", "momentum", None),
    ("SGD", "momentum", -0.5),
    ("SGD", "dampening", float("nan")),
    ("SGD", "momentum", torch.tensor([0.9, 0.8])),
    ("Adam", "betas", (0.9, None)),
    ("Adam", "betas", (torch.tensor([0.9, 0.8]), 0.999)),
    ("Adam", "eps", -1.0),
    ("AdamW", "weight_decay", "0.1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,key,value", BAD_LATER_GROUP, ids=[f"{c}-{k}-{i}" for i, (c, k, _) in enumerate(BAD_LATER_GROUP)])
def test_a_bad_value_in_a_later_group_refuses_the_whole_step(backend, cls, key, value):
    """Every group is checked before any is updated: the step raises a
    ValueError naming the group, and nothing moved (a retry after the fix
    steps once, at the next schedule step)."""
    groups = _params()
    extra = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(cf, cls)([{"params": ps} for ps in groups], lr=cf.CyclicLR(1e-3, 1e-2, 4), backend=backend, **extra)
    _grads(groups, 1)
    opt.step()
    good = opt.param_groups[1][key]
    opt.param_groups[1][key] = value
    _grads(groups, 2)
    snap = _snapshot(opt)
    lr_before = opt.get_last_lr()
    with pytest.raises(ValueError, match="param group 1"):
        opt.step()
    _assert_same(opt, snap)
    assert opt.get_last_lr() == lr_before
    opt.param_groups[1][key] = good
    opt.step()  # the retry: one schedule step further, once
    assert int(opt.schedule_step) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_lr_before_the_first_step_creates_no_state(backend):
    groups = _params(1)
    opt = cf.Adam(groups[0], lr=1e-3, backend=backend, max_grad_norm=1.0)
    opt.param_groups[0]["lr"] = float("nan")
    _grads(groups, 1)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert len(opt.state) == 0
    opt.param_groups[0]["lr"] = 1e-3
    opt.step()
    assert len(opt.state) == 2


# ------------------------------------------------------------ torch's semantics
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tensor_momentum_with_dampening_is_torchs(backend, momentum):
    """torch tests `momentum != 0` on the value: a tensor(0.0) with dampening is plain SGD."""
    groups = _params(1)
    kw = dict(lr=0.1, momentum=torch.tensor(momentum), dampening=0.5, weight_decay=0.01)
    opt = cf.SGD(groups[0], backend=backend, **kw)
    ref_ps = [p.detach().clone().requires_grad_() for p in groups[0]]
    ref = torch.optim.SGD(ref_ps, foreach=False, **kw)
    for it in range(6):
        _grads(groups, it)
        for p, q in zip(groups[0], ref_ps):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(groups[0], ref_ps):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert ("momentum_buffer" in opt.state[groups[0][0]]) == (momentum != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_inference_mode_parameter_is_refused_as_torch_does(backend):
    with torch.inference_mode():
        p = torch.nn.Parameter(torch.randn(9))
    q = p.detach()
    ref = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.randn(9)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        ref.step()
    before = q.clone()  # (torch's for-loop step has written it by the time it raises)
    opt = cf.SGD([p], lr=0.1, backend=backend)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        opt.step()
    assert torch.equal(q, before)
    assert len(opt.state) == 0


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_a_loaded_group_without_lr_is_refused_and_nothing_changes(cls):
    groups = _params(1)
    opt = getattr(cf, cls)(groups[0], lr=0.01)
    _grads(groups, 1)
    opt.step()
    sd = opt.state_dict()
    del sd["param_groups"][0]["lr"]
    before = opt.state_dict()
    with pytest.raises(ValueError, match="no 'lr'"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert opt.param_groups[0]["lr"] == 0.01


# ------------------------------------------------------------ messages
def test_cyclic_scale_fn_names_the_builtin_modes():
    with pytest.raises(ValueError, match=r"\['triangular', 'triangular2', 'exp_range'\]"):
        cf.CyclicLR(1e-3, 1e-2, 4, scale_fn=lambda x: 1.0)
    # torch's positional order: (base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn)
    with pytest.raises(ValueError, match="scale_fn"):
        cf.CyclicLR(1e-3, 1e-2, 4, None, "triangular", 1.0, lambda x: 1.0)


def test_a_raising_lr_lambda_is_a_value_error_naming_it():
    def fn(k):
        if k == 3:
            raise ZeroDivisionError("boom")
        return 1.0

    with pytest.raises(ValueError, match=r"lr_lambda\(3\) raised ZeroDivisionError: boom"):
        cf.LambdaLR(0.1, fn, total_steps=10)
