"""The launch plan: built once, re-checked in C++ each step, rebuilt on change.

Each change a training loop can make between steps (a gradient re-created at
a new address, add_param_group, load_state_dict, ``p.data = ...``, a dtype
change, a parameter that loses or gains its gradient, a sparse gradient)
must give the same parameters as the torch backend afterwards, and the
steady state must not rebuild anything.
"""

from __future__ import annotations

import copy

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext
from clr_fused.optim import plan as plan_mod

pytestmark = pytest.mark.skipif(_ext.load() is None, reason=f"the extension is not built here: {_ext.error()}")

SIZES = [7, 129, 16385, 3]


def _pair(cls="Adam", backend="cpu", **kw):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in SIZES]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    spec = cf.CyclicLR(1e-3, 1e-2, 3)
    oa = getattr(cf, cls)(a, lr=spec, backend=backend, **kw)
    ob = getattr(cf, cls)(b, lr=spec, backend="torch", **kw)
    return a, b, oa, ob


def _step(a, b, oa, ob, *, fresh_grads=True, skip=()):
    for i, (p, q) in enumerate(zip(a, b)):
        if i in skip:
            p.grad = q.grad = None
            continue
        g = torch.randn_like(p)
        if fresh_grads or p.grad is None:
            p.grad, q.grad = g.clone(), g.clone()  # new tensors at new addresses
        else:
            p.grad.copy_(g)
            q.grad.copy_(g)
    oa.step()
    ob.step()


def _same(a, b, oa, ob):
    for p, q in zip(a, b):
        torch.testing.assert_close(p.float(), q.float(), rtol=2e-6, atol=2e-6)
    assert oa.schedule_step.item() == ob.schedule_step.item()


@pytest.fixture
def builds(monkeypatch):
    count = []
    real = plan_mod.build
    monkeypatch.setattr(plan_mod, "build", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {}), ("AdamW", dict(amsgrad=True))])
def test_steady_state_builds_once_and_follows_moved_grads(builds, cls, kw):
    a, b, oa, ob = _pair(cls, **kw)
    for i in range(6):
        _step(a, b, oa, ob, fresh_grads=i % 2 == 0)  # new grad tensors every other step
        _same(a, b, oa, ob)
    assert len(builds) == 2  # ours and the torch backend's, once each
    bucket = oa._plan.buckets[0]
    assert bucket.native_index >= 0
    assert bucket.tables[1].tolist() == [p.grad.data_ptr() for p in a]  # the patched grad table


def test_zero_grad_set_to_none_and_backward(builds):
    torch.manual_seed(0)
    ma, mb = torch.nn.Linear(9, 5), torch.nn.Linear(9, 5)
    mb.load_state_dict(ma.state_dict())
    oa = cf.SGD(ma.parameters(), lr=0.1, momentum=0.9, backend="cpu")
    ob = cf.SGD(mb.parameters(), lr=0.1, momentum=0.9, backend="torch")
    x = torch.randn(16, 9)
    for _ in range(5):
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)
    assert len(builds) == 2


def test_add_param_group_rebuilds(builds):
    a, b, oa, ob = _pair()
    _step(a, b, oa, ob)
    extra_a = torch.nn.Parameter(torch.randn(33))
    extra_b = torch.nn.Parameter(extra_a.detach().clone())
    oa.add_param_group({"params": [extra_a], "lr": 0.003})
    ob.add_param_group({"params": [extra_b], "lr": 0.003})
    a.append(extra_a)
    b.append(extra_b)
    for _ in range(3):
        _step(a, b, oa, ob)
    _same(a, b, oa, ob)
    assert len(builds) == 4


def test_load_state_dict_rebuilds():
    a, b, oa, ob = _pair()
    for _ in range(3):
        _step(a, b, oa, ob)
    sd = copy.deepcopy(ob.state_dict())  # state_dict() holds the live state tensors
    saved = [p.detach().clone() for p in b]
    for _ in range(2):
        _step(a, b, oa, ob)
    # both go back to the torch backend's checkpoint (params and optimizer)
    with torch.no_grad():
        for p, q, s in zip(a, b, saved):
            p.copy_(s)
            q.copy_(s)
    oa.load_state_dict(copy.deepcopy(sd))
    ob.load_state_dict(copy.deepcopy(sd))
    assert oa._plan is None
    for _ in range(3):
        _step(a, b, oa, ob)
    _same(a, b, oa, ob)
    for p, q in zip(a, b):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa.state[p][key], ob.state[q][key], rtol=2e-6, atol=2e-6)


def test_param_data_replaced_and_dtype_change(builds):
    a, b, oa, ob = _pair("SGD", momentum=0.9)
    _step(a, b, oa, ob)
    new = torch.randn(SIZES[1])
    a[1].data = new.clone()
    b[1].data = new.clone()
    _step(a, b, oa, ob)
    _same(a, b, oa, ob)
    assert len(builds) == 4
    # a dtype change: bf16 storage for one parameter, its own bucket
    a[2].data = a[2].data.to(torch.bfloat16)
    b[2].data = b[2].data.to(torch.bfloat16)
    oa.state[a[2]]["momentum_buffer"] = oa.state[a[2]]["momentum_buffer"].to(torch.bfloat16)
    ob.state[b[2]]["momentum_buffer"] = ob.state[b[2]]["momentum_buffer"].to(torch.bfloat16)
    _step(a, b, oa, ob)
    assert len(builds) == 6
    assert {bk.params[0].dtype for bk in oa._plan.buckets} == {torch.float32, torch.bfloat16}
    for p, q in zip(a, b):
        torch.testing.assert_close(p.float(), q.float(), rtol=1e-2 if p.dtype == torch.bfloat16 else 2e-6, atol=1e-6)


def test_grad_lost_and_regained(builds):
    a, b, oa, ob = _pair("SGD", momentum=0.9)
    _step(a, b, oa, ob)
    _step(a, b, oa, ob, skip={0, 2})  # unused this step: no grad, not updated
    _step(a, b, oa, ob)
    _same(a, b, oa, ob)
    assert len(builds) == 6


def test_sparse_grad_refused_before_anything_moves():
    a, b, oa, ob = _pair()
    _step(a, b, oa, ob)
    before = [p.detach().clone() for p in a]
    states = {k: v.clone() for k, v in oa.state[a[0]].items()}
    step = oa.schedule_step.item()
    for p in a:
        p.grad = torch.randn_like(p)
    a[1].grad = a[1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="SparseAdam"):
        oa.step()
    assert all(torch.equal(p, q) for p, q in zip(a, before))
    assert all(torch.equal(v, oa.state[a[0]][k]) for k, v in states.items())
    assert oa.schedule_step.item() == step


def test_param_groups_list_edited_in_place(builds):
    a, b, oa, ob = _pair()
    _step(a, b, oa, ob)
    # swap two parameters of the same size between... a new one in place of a[0]
    new_a = torch.nn.Parameter(torch.randn(SIZES[0]))
    new_b = torch.nn.Parameter(new_a.detach().clone())
    oa.param_groups[0]["params"][0] = new_a
    ob.param_groups[0]["params"][0] = new_b
    a[0], b[0] = new_a, new_b
    _step(a, b, oa, ob)
    _same(a, b, oa, ob)
    assert len(builds) == 4


def test_python_check_without_the_extension(monkeypatch, builds):
    """Without _C (a pure-Python install) the same plan is checked in Python."""
    monkeypatch.setattr(plan_mod._ext, "load", lambda: None)
    a, b, oa, ob = _pair(backend="torch")
    for i in range(4):
        _step(a, b, oa, ob, fresh_grads=i % 2 == 0)
    _step(a, b, oa, ob, skip={1})
    _same(a, b, oa, ob)
    assert oa._plan.native is None
    assert len(builds) == 4


def test_version_counters_bumped_by_the_op():
    a, b, oa, ob = _pair("AdamW")
    _step(a, b, oa, ob)
    v0 = [p._version for p in a]
    m0 = [oa.state[p]["exp_avg"]._version for p in a]
    _step(a, b, oa, ob)
    assert all(p._version > v for p, v in zip(a, v0))
    assert all(oa.state[p]["exp_avg"]._version > v for p, v in zip(a, m0))


def test_thousands_of_parameters_checked_on_several_threads(builds):
    """A group past the C++ check's parallel threshold (4,096): moved grads are
    patched, a replaced parameter or a lost grad anywhere is still caught."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        a = [torch.nn.Parameter(torch.randn(1 + i % 5)) for i in range(6000)]
        b = [torch.nn.Parameter(p.detach().clone()) for p in a]
        oa = cf.SGD(a, lr=cf.CyclicLR(1e-3, 1e-2, 3), momentum=0.9, backend="cpu")
        ob = cf.SGD(b, lr=cf.CyclicLR(1e-3, 1e-2, 3), momentum=0.9, backend="torch")
        for _ in range(3):
            _step(a, b, oa, ob)  # new grad tensors each step: patched, no rebuild
        assert len(builds) == 2
        assert oa._plan.buckets[0].tables[1].tolist() == [p.grad.data_ptr() for p in a]
        new = torch.randn(a[5003].shape)
        a[5003].data, b[5003].data = new.clone(), new.clone()
        _step(a, b, oa, ob)
        assert len(builds) == 4
        _step(a, b, oa, ob, skip={4500})
        assert len(builds) == 6
        _same(a, b, oa, ob)
    finally:
        torch.set_num_threads(threads)
