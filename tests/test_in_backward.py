"""The optimizer step inside backward (register_step_in_backward): bit for bit
the normal step after the same backward, on every backend that runs here."""

from __future__ import annotations

import copy

import pytest
import torch

import clr_fused as cf
from clr_fused.optim import in_backward

STEPS = 50


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(13, 33), torch.nn.Tanh(), torch.nn.Linear(33, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    )


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(9, 13, generator=g), torch.randn(9, 3, generator=g)) for _ in range(n)]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


CASES = {
    "sgd-cyclic-momentum": lambda ps, b: cf.SGD(
        ps, lr=cf.CyclicLR(0.01, 0.1, 4, cycle_momentum=True), momentum=0.9, weight_decay=1e-3, backend=b
    ),
    "adam-onecycle": lambda ps, b: cf.Adam(ps, lr=cf.OneCycleLR(0.02, STEPS), weight_decay=1e-2, backend=b),
    "adamw-lambda-amsgrad": lambda ps, b: cf.AdamW(
        ps, lr=cf.LambdaLR(0.01, [1.0, 0.5, 0.25, 0.75, 0.1], 5), amsgrad=True, backend=b
    ),
    "sgd-nesterov-int8": lambda ps, b: cf.SGD(
        ps, lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9, nesterov=True, state_dtype="int8", backend=b
    ),
}


def _same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(a, b), what


def _compare(m1, o1, m2, o2, step):
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        _same(p1.detach(), p2.detach(), f"step {step}: parameter {name}")
        s1, s2 = o1.state[p1], o2.state[p2]
        assert s1.keys() == s2.keys(), (step, name)
        for k in s1:
            _same(s1[k], s2[k], f"step {step}: state {k} of {name}")
    assert o1.get_last_lr() == o2.get_last_lr(), step
    assert int(o1.schedule_step) == int(o2.schedule_step) == step


# BATCH_BYTES: 0 updates each parameter with the next hook, 1,000 batches some of this model's
# (1,716 / 924 / 132 / 84 / 28 / 12 bytes of gradient), the default all of them at the end
@pytest.mark.parametrize("batch_bytes", [0, 1000, in_backward.BATCH_BYTES])
@pytest.mark.parametrize("case", CASES)
def test_bit_identical_to_the_normal_step(case, backend, batch_bytes, monkeypatch):
    monkeypatch.setattr(in_backward, "BATCH_BYTES", batch_bytes)
    steps = STEPS if backend != "triton" else 12  # (the interpreter: seconds per step)
    m1, m2 = _model(), _model()
    o1, o2 = CASES[case](m1.parameters(), backend), CASES[case](m2.parameters(), backend)
    handle = o2.register_step_in_backward(m2)
    for i, (x, y) in enumerate(_batches(steps)):
        _loss(m1, x, y).backward()
        o1.step()
        o1.zero_grad()
        _loss(m2, x, y).backward()
        assert all(p.grad is None for p in m2.parameters())  # released in backward
        o2.step()  # (only the closure, none here: the update ran in backward)
        _compare(m1, o1, m2, o2, i + 1)
    assert handle.steps == steps


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


@pytest.mark.parametrize("zero_grad", [True, False])
def test_a_backward_that_raises_does_not_stop_the_steps(zero_grad):
    """A backward that raises midway (its end-of-backward callback is dropped
    by the engine): the next backward starts a new pass, and the gradients
    the failed one left are applied as step() applies them (or are gone with
    zero_grad()).  With this model's small gradients nothing was launched in
    the failed pass, so the runs stay bit for bit those of step()."""
    m1, m2 = _model(), _model()
    o1 = cf.SGD(m1.parameters(), lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9)
    o2 = cf.SGD(m2.parameters(), lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9)
    o2.register_step_in_backward(m2)
    batches = _batches(6)
    for i, (x, y) in enumerate(batches):
        if i == 2:  # the last layers' gradients arrive, then the first layer's input path raises
            for m in (m1, m2):
                with pytest.raises(RuntimeError, match="boom"):
                    _loss(m[4:], m[3](_Boom.apply(m[2](m[1](m[0](x))))), y).backward()
            if zero_grad:
                o1.zero_grad()
                o2.zero_grad()
            continue
        _loss(m1, x, y).backward()
        o1.step()
        o1.zero_grad()
        _loss(m2, x, y).backward()
        _compare(m1, o1, m2, o2, int(o1.schedule_step))
    assert int(o2.schedule_step) == 5


def test_a_batch_of_several_dtypes_advances_once():
    """Held gradients of fp32 and bf16 parameters of one group go in one
    batch (two buckets: one dtype each); only its last launch writes the next
    LR and advances the counter."""

    def make():
        torch.manual_seed(3)
        ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7).bfloat16())]
        return ps, cf.AdamW(ps, lr=cf.CyclicLR(1e-3, 1e-2, 3), weight_decay=0.1)

    (a1, b1), o1 = make()
    (a2, b2), o2 = make()
    o2.register_step_in_backward([a2, b2])
    for i in range(8):
        w = torch.linspace(-1, 1, 15).reshape(5, 3) * (i + 1)
        ((a1 * w).sum() + (b1.float() ** 2).sum()).backward()
        o1.step()
        o1.zero_grad()
        ((a2 * w).sum() + (b2.float() ** 2).sum()).backward()
        for p1, p2 in ((a1, a2), (b1, b2)):
            _same(p1.detach(), p2.detach(), f"step {i + 1}")
            assert all(torch.equal(o1.state[p1][k], o2.state[p2][k]) for k in o1.state[p1])
        assert int(o1.schedule_step) == int(o2.schedule_step) == i + 1
        assert o1.get_last_lr() == o2.get_last_lr()


def test_gradient_accumulation_steps_on_the_last_micro_batch():
    m1, m2 = _model(), _model()
    make = CASES["adam-onecycle"]
    o1, o2 = make(m1.parameters(), "auto"), make(m2.parameters(), "auto")
    handle = o2.register_step_in_backward(m2.parameters())
    data = _batches(3 * 10)
    for i in range(10):
        micro = data[3 * i : 3 * i + 3]
        for j, (x, y) in enumerate(micro):
            (_loss(m1, x, y) / 3).backward()
            handle.stepping = j == len(micro) - 1
            (_loss(m2, x, y) / 3).backward()
            if not handle.stepping:
                assert all(p.grad is not None for p in m2.parameters())  # accumulating
        o1.step()
        o1.zero_grad()
        _compare(m1, o1, m2, o2, i + 1)


def test_checkpoint_mid_run_resumes_with_step():
    """A checkpoint taken in backward mode loads into an optimizer that uses
    step() (and the reverse), continuing bit for bit."""
    make = CASES["sgd-cyclic-momentum"]
    m1, m2 = _model(), _model()
    o1, o2 = make(m1.parameters(), "auto"), make(m2.parameters(), "auto")
    h = o2.register_step_in_backward(m2)
    data = _batches(20)
    for i, (x, y) in enumerate(data):
        _loss(m1, x, y).backward()
        o1.step()
        o1.zero_grad()
        _loss(m2, x, y).backward()
        if i >= 10:
            o2.step()  # (from step 15 on, in backward again: only the closure)
            o2.zero_grad()
        _compare(m1, o1, m2, o2, i + 1)
        if i == 14:  # and back to stepping in backward, mid-run
            o2.register_step_in_backward(m2)
        if i == 9:  # resume m2 in a fresh optimizer that steps normally
            h.remove()
            m3 = copy.deepcopy(m2)
            o3 = make(m3.parameters(), "auto")
            o3.load_state_dict(o2.state_dict())
            m2, o2 = m3, o3


def test_matches_torchtunes_optimizer_per_parameter_pattern():
    """torchtune's optimizer_in_bwd: one optimizer (and schedule) per
    parameter, stepped from its hook.  One optimizer in backward mode gives
    the same parameters."""
    m1, m2 = _model(), _model()
    make = lambda ps: cf.AdamW(ps, lr=cf.OneCycleLR(0.02, 30), weight_decay=0.05)  # noqa: E731
    per_param = {p: make([p]) for p in m1.parameters()}

    def hook(p):
        per_param[p].step()
        per_param[p].zero_grad()

    for p in m1.parameters():
        p.register_post_accumulate_grad_hook(hook)
    o2 = make(m2.parameters())
    o2.register_step_in_backward(m2)
    for x, y in _batches(30):
        _loss(m1, x, y).backward()
        _loss(m2, x, y).backward()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        _same(p1.detach(), p2.detach(), "parameter")
    assert int(o2.schedule_step) == 30


def test_refusals_and_remove():
    m = _model()
    with pytest.raises(ValueError, match="max_grad_norm"):
        cf.SGD(m.parameters(), lr=0.1, max_grad_norm=1.0).register_step_in_backward(m)
    o = cf.SGD(m.parameters(), lr=0.1, momentum=0.9)
    h = o.register_step_in_backward(m)
    with pytest.raises(RuntimeError, match="already steps in backward"):
        o.register_step_in_backward(m)
    with pytest.raises(ValueError, match="not in this optimizer"):
        cf.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1).register_step_in_backward(m)
    x, y = _batches(1)[0]
    before = [p.detach().clone() for p in m.parameters()]
    _loss(m, x, y).backward()
    assert int(o.schedule_step) == 1 and not any(torch.equal(a, p) for a, p in zip(before, m.parameters()))
    h.remove()  # back to step(): gradients stay until it runs
    _loss(m, x, y).backward()
    assert all(p.grad is not None for p in m.parameters())
    o.step()
    assert int(o.schedule_step) == 2


def test_copies_step_normally():
    m = _model()
    o = cf.Adam(m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3))
    o.register_step_in_backward(m)
    assert copy.deepcopy(o)._in_backward is None


def test_gradscaler_is_refused_clearly():
    m = _model()
    o = cf.AdamW(m.parameters(), lr=1e-3)
    o.register_step_in_backward(m)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batches(1)[0]
    scaler.scale(_loss(m, x, y)).backward()
    with pytest.raises(RuntimeError, match="GradScaler cannot drive an optimizer that steps in backward"):
        scaler.step(o)


def _spawn_worker(tmp_path, fsdp):
    """3 gloo ranks of tests/in_backward_worker.py; each writes the mismatches it saw."""
    import torch.multiprocessing as mp

    from . import in_backward_worker

    mp.spawn(in_backward_worker.run, args=(3, str(tmp_path / "init"), str(tmp_path), fsdp), nprocs=3, join=True)
    for rank in range(3):
        bad = torch.load(tmp_path / f"bad-{rank}.pt")
        assert bad == [], f"rank {rank}: {bad[:5]}"


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-rank gloo process group for DDP in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_bit_identical_to_the_normal_step(tmp_path):
    """Under DDP (3 gloo ranks, each with its own data: 1 / 3 is not exact, so
    the averaging must be DDP's own to the bit) the updates run from a
    communication hook on the reduced buckets: parameters, states and LRs bit
    for bit those of ``backward(); step()``, with either gradient layout, a
    channels_last convolution, two groups, several buckets and micro-batches
    under ``no_sync()`` (tests/in_backward_worker.py)."""
    _spawn_worker(tmp_path, fsdp=False)


def test_fsdp2_bit_identical_to_the_normal_step(tmp_path):
    """Under FSDP2 (fully_shard, 3 gloo ranks: uneven shards) the sharded
    parameters' post-accumulate-grad hooks run from FSDP2's reduce-scatter,
    on the reduced shards: parameters, states (int8 blocks of the shards
    included) and LRs bit for bit those of ``backward(); step()``, with
    micro-batches under ``set_requires_gradient_sync(False)``."""
    _spawn_worker(tmp_path, fsdp=True)


def test_ddp_refusals(one_rank_group):
    ddp = torch.nn.parallel.DistributedDataParallel(_model(), find_unused_parameters=True)
    o = cf.SGD(ddp.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="find_unused_parameters=True"):
        o.register_step_in_backward(ddp)
    assert o._in_backward is None
    ddp = torch.nn.parallel.DistributedDataParallel(_model(), static_graph=True)
    with pytest.raises(ValueError, match="static_graph=True"):
        o.register_step_in_backward(ddp)
    assert o._in_backward is None


def test_ddp_ignored_parameters_step_on_their_own_gradients(one_rank_group):
    """A parameter DDP ignores is in no bucket: its own hook updates it (its
    gradient is local by design), bit for bit as DDP + step() does."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    m1, m2 = _model(), _model()
    for m in (m1, m2):
        DDP._set_params_and_buffers_to_ignore_for_model(m, ["2.weight"])
    d1, d2 = DDP(m1), DDP(m2)
    o1 = cf.SGD(m1.parameters(), lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9)
    o2 = cf.SGD(m2.parameters(), lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9)
    o2.register_step_in_backward(d2)
    start = m2[2].weight.detach().clone()
    for i, (x, y) in enumerate(_batches(5)):
        o1.zero_grad()
        _loss(d1, x, y).backward()
        o1.step()
        _loss(d2, x, y).backward()
        _compare(m1, o1, m2, o2, i + 1)
    assert not torch.equal(start, m2[2].weight)


@pytest.mark.parametrize("as_view", [False, True])
def test_ddp_accumulates_with_stepping_false(one_rank_group, as_view):
    """``handle.stepping = False`` under DDP (without no_sync): every
    micro-batch is reduced into p.grad, as plain DDP does, and the last one
    steps (one rank: the reductions are exact, so the bits are DDP's)."""
    m1, m2 = _model(), _model()
    d1 = torch.nn.parallel.DistributedDataParallel(m1, gradient_as_bucket_view=as_view)
    d2 = torch.nn.parallel.DistributedDataParallel(m2, gradient_as_bucket_view=as_view)
    o1 = cf.AdamW(m1.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3))
    o2 = cf.AdamW(m2.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3))
    h = o2.register_step_in_backward(d2)
    batches = _batches(12)
    for i in range(4):
        o1.zero_grad()
        for j, (x, y) in enumerate(batches[3 * i : 3 * i + 3]):
            _loss(d1, x, y).backward()
            h.stepping = j == 2
            _loss(d2, x, y).backward()
        o1.step()
        _compare(m1, o1, m2, o2, i + 1)
        assert all(p.grad is None for p in m2.parameters())


def test_ddp_remove_goes_back_to_step(one_rank_group):
    """After remove() the comm hook DDP keeps only averages into p.grad:
    step() then gives what a plain DDP model gives."""
    m1, m2 = _model(), _model()
    d1, d2 = torch.nn.parallel.DistributedDataParallel(m1), torch.nn.parallel.DistributedDataParallel(m2)
    o1 = cf.Adam(m1.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3))
    o2 = cf.Adam(m2.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3))
    h = o2.register_step_in_backward(d2)
    for i, (x, y) in enumerate(_batches(6)):
        if i == 3:
            h.remove()
        o1.zero_grad()
        _loss(d1, x, y).backward()
        o1.step()
        if i >= 3:
            o2.zero_grad()
        _loss(d2, x, y).backward()
        if i >= 3:
            o2.step()
        _compare(m1, o1, m2, o2, i + 1)


# ----------------------------------------------------------------------------------------------
# Random sequences (hypothesis): parameters of random sizes and dtypes in two groups, random
# batch sizes, parameters left out of some backward passes, micro-batches that only accumulate;
# bit for bit the same optimizer driven by backward(); step().
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

RANDOM_OPTS = {
    "sgd": lambda groups: cf.SGD(groups, lr=cf.CyclicLR(0.01, 0.1, 3), momentum=0.9, nesterov=True),
    "adamw": lambda groups: cf.AdamW(groups, lr=cf.OneCycleLR(0.01, 40), weight_decay=0.1),
    "lion-int8": lambda groups: cf.Lion(groups, lr=cf.CyclicLR(1e-4, 1e-3, 2), state_dtype="int8"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opt_name=st.sampled_from(sorted(RANDOM_OPTS)),
    sizes=st.lists(st.tuples(st.integers(1, 300), st.booleans(), st.booleans()), min_size=1, max_size=7),
    batch_bytes=st.sampled_from([0, 40, 700, 1 << 20]),
    passes=st.lists(st.tuples(st.integers(0, 127), st.booleans(), st.booleans()), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
)
def test_random_sequences_match_step(opt_name, sizes, batch_bytes, passes, seed):
    old = in_backward.BATCH_BYTES
    in_backward.BATCH_BYTES = batch_bytes
    try:
        _random_sequence(opt_name, sizes, batch_bytes, passes, seed)
    finally:
        in_backward.BATCH_BYTES = old


def _random_sequence(opt_name, sizes, batch_bytes, passes, seed):
    gen = torch.Generator().manual_seed(seed)

    def make():
        torch.manual_seed(seed)
        ps = [torch.nn.Parameter(torch.randn(n).to(torch.bfloat16 if bf16 else torch.float32)) for n, bf16, _ in sizes]
        groups = [{"params": [p for p, s in zip(ps, sizes) if s[2] == g]} for g in (False, True)]
        return ps, RANDOM_OPTS[opt_name]([g for g in groups if g["params"]])

    ps1, o1 = make()
    ps2, o2 = make()
    handle = None
    stepped = 0
    for used_mask, steps, in_bwd in passes:  # in_bwd False: this pass with o2.step(), the handle removed
        if in_bwd and handle is None:
            handle = o2.register_step_in_backward(ps2)
        elif not in_bwd and handle is not None:
            handle.remove()
            handle = None
        used = [i for i in range(len(sizes)) if used_mask >> (i % 7) & 1] or [0]
        weights = {i: torch.randn(sizes[i][0], generator=gen) for i in used}
        if handle is not None:
            handle.stepping = steps
        for ps in (ps1, ps2):
            sum((ps[i].float() * weights[i]).sum() + (ps[i].float() ** 2).sum() for i in used).backward()
        if steps:
            for o in (o1, o2) if handle is None else (o1,):
                o.step()
                o.zero_grad()
            stepped += 1
        for i, (p1, p2) in enumerate(zip(ps1, ps2)):
            what = f"{opt_name}, batch {batch_bytes}, parameter {i}, after {stepped} steps"
            _same(p1.detach(), p2.detach(), what)
            if steps:
                assert p2.grad is None, what
            else:
                assert (p1.grad is None) == (p2.grad is None), what
                if p1.grad is not None:
                    _same(p1.grad, p2.grad, what)
            s1, s2 = o1.state[p1], o2.state[p2]
            assert s1.keys() == s2.keys(), what
            for k in s1:
                _same(s1[k], s2[k], f"{what}: state {k}")
        assert o1.get_last_lr() == o2.get_last_lr()
        assert int(o1.schedule_step) == int(o2.schedule_step) == stepped
