"""Fault injection, round 2 (issue 28): what a user or a trainer changes
between steps, each checked against torch.optim.  A refused step leaves
parameters, states and the schedule untouched; semantics are torch's."""

from __future__ import annotations

import copy

import pytest
import torch

import clr_fused as cf


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
    states = {
        id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for p, s in opt.state.items()
    }
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


@pytest.mark.parametrize(
    "cls,key,value", BAD_LATER_GROUP, ids=[f"{c}-{k}-{i}" for i, (c, k, _) in enumerate(BAD_LATER_GROUP)]
)
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


# ------------------------------------------------------------ state written between steps
def _reset(kind, opt, p):
    """The pruning / re-initialisation recipes, applied to any optimizer (torch's or ours)."""
    if kind == "replace-tensor":
        opt.state[p]["exp_avg"] = torch.full_like(p, 0.25)
    elif kind == "replace-dict":
        opt.state[p] = {}
    elif kind == "delete":
        del opt.state[p]
    elif kind == "clear":
        opt.state.clear()
    elif kind == "new-mapping":
        from collections import defaultdict

        opt.state = defaultdict(dict)
    elif kind == "zero-in-place":
        opt.state[p]["exp_avg_sq"].zero_()  # (an in-place write: the same tensor, seen by any plan)


RESETS = ["replace-tensor", "replace-dict", "delete", "clear", "new-mapping", "zero-in-place"]


@pytest.mark.parametrize("kind", RESETS)
def test_state_written_between_steps_is_what_the_next_step_uses(backend, kind):
    """As torch.optim.Adam, which reads opt.state every step: the next update
    takes the replaced tensor (or starts afresh), and state_dict() saves it."""
    groups = _params(1, seed=3)
    twin = [[torch.nn.Parameter(p.detach().clone()) for p in groups[0]]]
    ours = cf.Adam(groups[0], lr=1e-2, backend=backend)
    ref = torch.optim.Adam(twin[0], lr=1e-2, foreach=False)
    for step in range(6):
        _grads(groups, step)
        _grads(twin, step)
        if step == 3:
            _reset(kind, ours, groups[0][1])
            _reset(kind, ref, twin[0][1])
        ours.step()
        ref.step()
        if step == 3 and kind == "replace-tensor":
            assert not torch.equal(ours.state[groups[0][1]]["exp_avg"], torch.full_like(groups[0][1], 0.25))  # updated
    for p, q in zip(groups[0], twin[0]):
        # (float32 rounding differences between backends, amplified where exp_avg_sq was zeroed;
        # a state not taken moves a parameter by ~1e-2)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-5)
        assert float(ours.state[p]["step"]) == float(ref.state[q]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][key], ref.state[q][key], rtol=1e-5, atol=1e-7)
    sd, sd_ref = ours.state_dict(), ref.state_dict()
    for i in (0, 1):
        torch.testing.assert_close(sd["state"][i]["exp_avg"], sd_ref["state"][i]["exp_avg"], rtol=1e-6, atol=1e-8)
        assert type(sd["state"][i]) is dict  # plain data: weights_only loads take it


def test_an_emptied_momentum_state_restarts_as_torchs(backend):
    """SGD: a deleted momentum buffer is the gradient again at the next step (torch's first-step rule)."""
    groups = _params(1, seed=4)
    twin = [[torch.nn.Parameter(p.detach().clone()) for p in groups[0]]]
    ours = cf.SGD(groups[0], lr=0.1, momentum=0.9, dampening=0.5, backend=backend)
    ref = torch.optim.SGD(twin[0], lr=0.1, momentum=0.9, dampening=0.5, foreach=False)
    for step in range(5):
        _grads(groups, step)
        _grads(twin, step)
        if step == 2:
            ours.state[groups[0][0]].pop("momentum_buffer")
            ref.state[twin[0][0]].pop("momentum_buffer")
        ours.step()
        ref.step()
    for p, q in zip(groups[0], twin[0]):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"], rtol=1e-6, atol=1e-7
        )


def test_the_state_store_counts_writes_and_copies_as_plain_data():
    import pickle

    from clr_fused.optim.state_store import SlotDict, StateStore

    p = torch.nn.Parameter(torch.randn(3))
    opt = cf.Adam([p], lr=1e-3)
    p.grad = torch.randn(3)
    opt.step()
    store = opt.state
    assert isinstance(store, StateStore) and isinstance(store[p], SlotDict)
    for write in (lambda s: s[p].__setitem__("exp_avg", s[p]["exp_avg"]), lambda s: s[p].update({}),
                  lambda s: s[p].setdefault("extra", 1), lambda s: s[p].pop("extra"),
                  lambda s: s.__setitem__(p, dict(s[p]))):  # fmt: skip
        v = store.version
        write(store)
        assert store.version > v
    v = store.version
    _ = store[p]["exp_avg"], p in store, len(store), list(store.items()), store.setdefault(p, {})  # reads count nothing
    assert store.version == v
    twin = copy.deepcopy(opt)
    assert isinstance(twin.state, StateStore) and all(
        isinstance(s, SlotDict) and s._store is twin.state for s in twin.state.values()
    )
    back = pickle.loads(pickle.dumps(opt))
    assert isinstance(back.state, StateStore) and torch.equal(
        next(iter(back.state.values()))["exp_avg"], opt.state[p]["exp_avg"]
    )
    import io

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


# ------------------------------------------------------------ int8 codes and scales of any layout
def _int8_run(backend, p, steps, opt=None, seed=0):
    opt = opt or cf.Adam([p], lr=1e-2, backend=backend, state_dtype="int8")
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        p.grad = (
            torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last)
            if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
            else torch.randn(p.shape, generator=g)
        )
        opt.step()
    return opt


@pytest.mark.parametrize("how", ["every-other", "expanded"])
def test_strided_scales_in_a_checkpoint_are_adopted_dense(backend, how):
    """A scales view (every other element of a bigger tensor, one float expanded
    to num_blocks) used to be read as contiguous (segfaults, writes outside the
    view): it is copied dense at load, and the base tensor is never written."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(700))  # 6 blocks
    opt = _int8_run(backend, p, 3)
    sd = copy.deepcopy(opt.state_dict())  # (torch's load keeps a loaded tensor as it is: no sharing between the two)
    nb = sd["state"][0]["exp_avg_scale"].numel()
    base = torch.full((2 * nb,), 7.0) if how == "every-other" else torch.tensor([0.01])
    view = base[::2] if how == "every-other" else base.expand(nb)
    if how == "every-other":
        view.copy_(sd["state"][0]["exp_avg_scale"])
    sd["state"][0]["exp_avg_scale"] = view
    base_before = base.clone()
    dense = copy.deepcopy(dict(sd["state"][0], exp_avg_scale=view.contiguous()))
    q = torch.nn.Parameter(p.detach().clone())
    ref = cf.Adam([q], lr=1e-2, backend=backend, state_dtype="int8")
    ref.load_state_dict({"state": {0: dense}, "param_groups": sd["param_groups"]})
    opt.load_state_dict(sd)
    _int8_run(backend, p, 2, opt, seed=5)
    _int8_run(backend, q, 2, ref, seed=5)
    assert torch.equal(base, base_before)
    assert torch.equal(p.detach(), q.detach())
    assert opt.state[p]["exp_avg_scale"].is_contiguous()


def test_scales_made_strided_in_place_are_refused_or_adopted_never_misread(backend):
    """The same view written into the live state between steps: the next step
    adopts or refuses it, and never reads past the view (the base is intact)."""
    p = torch.nn.Parameter(torch.randn(700))
    opt = _int8_run(backend, p, 2)
    st = opt.state[p]
    nb = st["exp_avg_sq_scale"].numel()
    base = torch.full((2 * nb,), 3.0)
    base[::2] = st["exp_avg_sq_scale"]
    st["exp_avg_sq_scale"] = base[::2]
    before = base.clone()
    _int8_run(backend, p, 1, opt)
    assert torch.equal(base, before) and opt.state[p]["exp_avg_sq_scale"].is_contiguous()
    # in place, on the tensor the plan holds: caught by the plan's check (or the step's)
    s = opt.state[p]["exp_avg_sq_scale"]
    big = torch.zeros(2 * nb)
    try:
        s.set_(big.untyped_storage(), 0, (nb,), (2,))
    except RuntimeError:
        pytest.skip("this torch refuses set_ with these strides")  # (not expected on 2.4+)
    p_before = p.detach().clone()
    try:
        _int8_run(backend, p, 1, opt)
    except RuntimeError as exc:
        assert "scales" in str(exc) and torch.equal(p.detach(), p_before)  # refused before anything moved
    else:
        assert opt.state[p]["exp_avg_sq_scale"].is_contiguous()


def _channels_last(t):
    return t.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("direction", ["cl-into-contiguous", "contiguous-into-cl"])
def test_a_checkpoint_of_another_layout_loads_and_steps(backend, direction):
    """torch.optim.Adam state of channels_last parameters loaded into
    cf.Adam(state_dtype='int8') over contiguous ones (and the reverse): the
    states are re-quantized in the parameters' layout, and training goes on
    as the float run does (within int8's error)."""
    torch.manual_seed(1)
    w = torch.randn(6, 5, 3, 7)
    src = torch.nn.Parameter(_channels_last(w.clone()) if direction == "cl-into-contiguous" else w.clone())
    dst_data = w.clone() if direction == "cl-into-contiguous" else _channels_last(w.clone())
    torch_opt = torch.optim.Adam([src], lr=1e-2)
    for s in range(3):
        src.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(s)).to(
            memory_format=torch.preserve_format
        )
        src.grad = (
            src.grad.contiguous(memory_format=torch.channels_last) if not src.is_contiguous() else src.grad.contiguous()
        )
        torch_opt.step()
    sd = torch_opt.state_dict()
    p = torch.nn.Parameter(dst_data.copy_(src.detach()))
    f = torch.nn.Parameter(p.detach().clone(memory_format=torch.preserve_format))
    opt = cf.Adam([p], lr=1e-2, backend=backend, state_dtype="int8")
    fopt = cf.Adam([f], lr=1e-2, backend=backend)
    opt.load_state_dict(sd)
    fopt.load_state_dict(sd)
    for s in range(4):
        for t in (p, f):
            g = torch.randn(w.shape, generator=torch.Generator().manual_seed(10 + s))
            t.grad = g.contiguous(memory_format=torch.channels_last) if not t.is_contiguous() else g
        opt.step()
        fopt.step()
    for key in ("exp_avg", "exp_avg_sq"):
        c = opt.state[p][key]
        assert c.stride() == p.stride(), key
    torch.testing.assert_close(p.detach(), f.detach(), rtol=0, atol=2e-3)


def test_a_memory_format_change_mid_run_requantizes_the_states(backend):
    """p.data = p.data.to(channels_last) with int8 states: the next steps run
    (states re-laid out in the new layout), as close to the float run as int8 is."""
    torch.manual_seed(2)
    w = torch.randn(4, 6, 3, 5)
    p, f = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    opt = cf.Adam([p], lr=1e-2, backend=backend, state_dtype="int8")
    fopt = cf.Adam([f], lr=1e-2, backend=backend)
    for s in range(6):
        if s == 3:
            p.data = _channels_last(p.data)
            f.data = _channels_last(f.data)
        for t in (p, f):
            g = torch.randn(w.shape, generator=torch.Generator().manual_seed(s))
            t.grad = _channels_last(g) if s >= 3 else g
        opt.step()
        fopt.step()
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    torch.testing.assert_close(p.detach(), f.detach(), rtol=0, atol=2e-3)


def test_int8_codes_that_are_a_non_dense_view_load_and_step(backend):
    p = torch.nn.Parameter(torch.randn(300))
    opt = _int8_run(backend, p, 2)
    sd = copy.deepcopy(opt.state_dict())
    codes = sd["state"][0]["exp_avg"]
    big = torch.zeros(600, dtype=codes.dtype)
    big[::2] = codes
    sd["state"][0]["exp_avg"] = big[::2]
    q = torch.nn.Parameter(p.detach().clone())
    ref = cf.Adam([q], lr=1e-2, backend=backend, state_dtype="int8")
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.load_state_dict(sd)
    _int8_run(backend, p, 2, opt, seed=9)
    _int8_run(backend, q, 2, ref, seed=9)
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-5)  # the same values, requantized once
