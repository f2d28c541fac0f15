"""kahan_sum=True: bf16 / fp16 parameters with a compensation buffer of their
dtype (state key ``kahan_comp``), applied inside the fused step.

Oracles: float64 (the compensated parameter p + c follows the float64 run
within its per-step bound, where rounding to nearest drops every sub-ulp update),
the torch backend (its torch-ops twin of multi_tensor.cuh's compensation: SGD
and Lion bit for bit on every backend, Adam within float32 ulps of the sum),
and the same optimizer without it (float32 parameters take no buffer and are
bit for bit unchanged).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clr_fused as cf
from clr_fused import _ext

from . import test_mutations as M
from .cases import backends

BACKENDS = backends("torch", "cpu", "triton")
SIZES = [1, 7, 127, 128, 129, 1000, 4099, 16387]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _needs(backend):
    if backend == "cpu" and _ext.load() is None:
        pytest.skip(f"extension absent: {_ext.error()}")
    if backend == "triton":
        pytest.importorskip("triton")


def _train(cls, backend, dtype=torch.bfloat16, steps=6, sizes=SIZES, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]
    opt = getattr(cf, cls)(ps, backend=backend, **kw)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    return ps, opt


def _full(p, opt) -> torch.Tensor:
    """The compensated parameter's value, p + c, in float32 (exact)."""
    return p.detach().float() + opt.state[p]["kahan_comp"].float()


# ------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sub_ulp_updates_accumulate_as_in_float64(backend, dtype):
    """300 SGD steps of lr * g = 1e-4 * U(0.5, 1.5) on parameters in [1, 1.25]
    (half a bf16 ulp there is 2**-8 = 0.0039, of fp16 2**-11 = 0.00049):
    rounding to nearest never moves them.  With kahan_sum the error of p + c
    against the float64 run is bounded per step by half an ulp of c (|c| is
    at most half an ulp of p: 2**-17 for bf16, 2**-22 for fp16) plus the
    float32 update's own rounding (2**-23): at most 300 times that after 300
    steps, and p stays within one of its ulps of float64's value."""
    _needs(backend)
    gen = torch.Generator().manual_seed(3)
    x0 = 1.0 + 0.25 * torch.rand(4099, generator=gen, dtype=torch.float64)
    grads = [0.5 + torch.rand(4099, generator=gen, dtype=torch.float64) for _ in range(300)]
    p = torch.nn.Parameter(x0.to(dtype))
    q = torch.nn.Parameter(x0.to(dtype))
    opt = cf.SGD([p], lr=1e-4, backend=backend, kahan_sum=True)
    plain = cf.SGD([q], lr=1e-4, backend=backend)
    x = x0.to(dtype).double()  # float64 from the same rounded start
    for g in grads:
        p.grad, q.grad = g.to(dtype), g.to(dtype)
        x = x - 1e-4 * g.to(dtype).double()
        opt.step()
        plain.step()
    assert torch.equal(q.detach(), x0.to(dtype))  # nearest: stuck where it started
    moved = (x - x0.to(dtype).double()).abs().min().item()
    assert moved > 0.02  # float64 moved by many bf16 ulps
    err = (_full(p, opt).double() - x).abs().max().item()
    per_step = (2**-17 if dtype == torch.bfloat16 else 2**-22) + 2**-23
    assert err <= 300 * per_step, (err, 300 * per_step)
    assert err * 50 < moved  # nearest's error is the whole movement
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    assert ((p.detach().double() - x).abs() / x.abs()).max().item() <= ulp


# (Triton is left out here, 200 interpreted steps a run: its kernels equal the torch backend's
# bit for bit for SGD and Lion, and within float32 ulps of the sum for Adam, tested below)
@pytest.mark.parametrize("backend", backends("torch", "cpu"))
@pytest.mark.parametrize(
    "cls,kw",
    [("AdamW", dict(lr=1e-3, weight_decay=0.1)), ("SGD", dict(lr=1e-3, momentum=0.9)), ("Lion", dict(lr=1e-4))],
    ids=["adamw", "sgd", "lion"],
)
def test_closer_to_float32_training_than_rounding_to_nearest(backend, cls, kw):
    """200 steps from the same start and gradients: the bf16 + kahan_sum run
    (p + c) stays at least 8x closer to the float32 run than bf16 rounded to
    nearest does."""
    _needs(backend)
    sizes = [129, 4099]
    near, _ = _train(cls, backend, torch.bfloat16, steps=200, sizes=sizes, seed=5, **kw)
    kahan, ok = _train(cls, backend, torch.bfloat16, steps=200, sizes=sizes, seed=5, kahan_sum=True, **kw)
    ref, _ = _train_rounded_grads(cls, backend, sizes, **kw)  # float32, on the bf16 runs' start and gradients
    for r, n, k in zip(ref, near, kahan):
        err_near = (n.detach().float() - r.detach()).norm().item()
        err_kahan = (_full(k, ok) - r.detach()).norm().item()
        assert err_kahan * 8 < err_near, (err_kahan, err_near)


def _train_rounded_grads(cls, backend, sizes, **kw):
    """_train's float32 run on the gradients (and start) the bf16 runs see."""
    gen = torch.Generator().manual_seed(5)
    ps = [torch.nn.Parameter(torch.randn(n, generator=gen).to(torch.bfloat16).float()) for n in sizes]
    opt = getattr(cf, cls)(ps, backend=backend, **kw)
    for _ in range(200):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16).float()
        opt.step()
    return ps, opt


# ------------------------------------------------------------------ backends agree
_EXACT = textwrap.dedent("""
    import sys, torch, clr_fused as cf
    sys.path.insert(0, {root!r})
    from tests.test_kahan import _train
    bad = []
    for cls, kw in [("SGD", dict(lr=cf.CyclicLR(1e-3, 1e-2, 3), momentum=0.9, weight_decay=0.01)),
                    ("SGD", dict(lr=0.01, momentum=0.8, dampening=0.3, nesterov=False, maximize=True)),
                    ("Lion", dict(lr=cf.CyclicLR(1e-4, 1e-3, 3), weight_decay=0.1))]:
        for dtype in (torch.bfloat16, torch.float16):
            for sdt in (None, torch.float32, "int8"):
                runs = [_train(cls, b, dtype, state_dtype=sdt, kahan_sum=True, **kw) for b in ("torch", "cpu", "triton")]
                (a, oa) = runs[0]
                for b, ob in runs[1:]:
                    for x, y in zip(a, b):
                        if not torch.equal(x.detach().view(torch.int16), y.detach().view(torch.int16)):
                            bad.append((cls, str(dtype), str(sdt), "param"))
                        for k, v in oa.state[x].items():
                            w = ob.state[y][k]
                            if not torch.equal(v.view(torch.int8) if v.dim() else v, w.view(torch.int8) if w.dim() else w):
                                bad.append((cls, str(dtype), str(sdt), k))
    print("BAD", bad)
""")


def test_sgd_and_lion_bit_identical_on_every_backend():
    """SGD and Lion round identically on the torch backend, the cpu kernels'
    baseline copy and Triton (interpreted), so their parameters and
    compensation buffers (and every state) agree bit for bit, fp16 too."""
    _needs("cpu")
    pytest.importorskip("triton")
    env = dict(os.environ, CLR_FUSED_CPU_ISA="baseline", ATEN_CPU_CAPABILITY="default", TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", _EXACT.format(root=ROOT)], capture_output=True, text=True, env=env,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "BAD []", run.stdout[-3000:]


@pytest.mark.parametrize("backend", backends("cpu", "triton"))
@pytest.mark.parametrize("sdt", [None, torch.float32, "int8"], ids=["bf16-states", "fp32-states", "int8-states"])
def test_adam_matches_the_torch_backend(backend, sdt):
    """Adam's float32 op order differs between paths (fused multiply-adds): a
    last-bit difference of the new float32 value can move c by one of its
    ulps (2**-16 of p) at a step, and a bf16 or int8 state's rounding by one
    of its steps.  Over all 21,900 elements: the compensated values p + c
    agree within 2**-15 (or 1e-7) but in at most 1% of them, and those within
    what a tipped state rounding moves an update by (lr_max * 2**-8; int8: a
    code step, 2e-2)."""
    _needs(backend)
    kw = dict(lr=cf.CyclicLR(1e-3, 1e-2, 3), weight_decay=0.1, amsgrad=True, state_dtype=sdt, kahan_sum=True)
    a, oa = _train("AdamW", backend, **kw)
    b, ob = _train("AdamW", "torch", **kw)
    fa = torch.cat([_full(x, oa) for x in a])
    fb = torch.cat([_full(y, ob) for y in b])
    differ = ~torch.isclose(fa, fb, rtol=2**-15, atol=1e-7)
    assert float(differ.float().mean()) < 0.01, int(differ.sum())
    if sdt == "int8":
        torch.testing.assert_close(fa, fb, rtol=2e-2, atol=1e-4)
    else:
        torch.testing.assert_close(fa, fb, rtol=2**-12, atol=1e-2 * 2**-8)


# ------------------------------------------------------------------ semantics
def test_float32_parameters_take_no_buffer_and_keep_their_bits():
    a, oa = _train("AdamW", "torch", torch.float32, kahan_sum=True)
    b, _ = _train("AdamW", "torch", torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all("kahan_comp" not in oa.state[p] for p in a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_is_state_of_the_parameters_dtype(backend):
    _needs(backend)
    ps, opt = _train("Adam", backend, state_dtype=torch.float32, kahan_sum=True, steps=2)
    for p in ps:
        c = opt.state[p]["kahan_comp"]
        assert c.dtype == torch.bfloat16 and c.shape == p.shape and c.stride() == p.stride()
        assert bool((c != 0).any()) or p.numel() < 8  # it holds what rounding dropped
        # at most half an ulp of p (half an ulp of a normal bf16 p is at most |p| * 2**-8)
        assert bool((c.float().abs() <= p.detach().float().abs() * 2**-8).all())


def test_exclusive_with_stochastic_rounding():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="kahan_sum=True and stochastic_rounding=True are exclusive"):
        cf.AdamW([p], kahan_sum=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="kahan_sum must be True or False"):
        cf.SGD([p], kahan_sum=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skipped_step_leaves_parameters_and_buffers(backend):
    """A non-finite gradient with max_grad_norm: nothing moves, compensation included."""
    _needs(backend)
    ps, opt = _train("AdamW", backend, kahan_sum=True, max_grad_norm=1.0, steps=3)
    before = [(p.detach().clone(), opt.state[p]["kahan_comp"].clone()) for p in ps]
    for p in ps:
        p.grad = torch.randn(p.shape).to(p.dtype)
    ps[-1].grad[5] = float("inf")
    opt.step()
    for p, (pb, cb) in zip(ps, before):
        assert torch.equal(p.detach(), pb) and torch.equal(opt.state[p]["kahan_comp"], cb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_parameters_keep_no_compensation(backend):
    """An inf parameter stays inf (inf - inf must not leave a NaN in c that the
    next step's p + c would turn into a NaN parameter); a NaN stays NaN; the
    other elements train on."""
    _needs(backend)
    p = torch.nn.Parameter(torch.linspace(-1, 1, 300).to(torch.bfloat16))
    with torch.no_grad():
        p[3] = float("inf")
        p[4] = float("nan")
        p[5] = 3.3e38  # rounds to inf after an update that pushes it up
    opt = cf.SGD([p], lr=1e-3, backend=backend, kahan_sum=True)
    for _ in range(3):
        p.grad = torch.full_like(p, -1.0)
        opt.step()
    c = opt.state[p]["kahan_comp"]
    assert p[3].item() == float("inf") and torch.isnan(p[4]) and c[3].item() == 0 and c[4].item() == 0
    assert torch.isfinite(c).all()
    assert torch.isfinite(p[6:]).all() and bool((c[6:] != 0).any())


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_continues_bit_for_bit(backend):
    _needs(backend)
    ps, opt = _train("AdamW", backend, kahan_sum=True, steps=3)
    sd = opt.state_dict()
    assert all("kahan_comp" in st for st in sd["state"].values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    other = cf.AdamW(qs, backend=backend, kahan_sum=True)
    other.load_state_dict(loaded)
    for _ in range(2):
        g = [torch.randn(p.shape).to(p.dtype) for p in ps]
        for xs, o in ((ps, opt), (qs, other)):
            for x, gi in zip(xs, g):
                x.grad = gi.clone()
            o.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt.state[p]["kahan_comp"], other.state[q]["kahan_comp"])


def test_loads_a_torch_checkpoint_and_one_with_another_buffer_dtype():
    """torch.optim.AdamW's checkpoint has no buffer: it starts at zero.  A
    buffer saved in float32 (an edited checkpoint) comes back as the parameter's dtype."""
    p = torch.nn.Parameter(torch.randn(50).to(torch.bfloat16))
    p.grad = torch.randn(50).to(torch.bfloat16)
    ref = torch.optim.AdamW([p])
    ref.step()
    opt = cf.AdamW([p], backend="torch", kahan_sum=True)
    opt.load_state_dict(ref.state_dict())
    opt.step()
    assert opt.state[p]["kahan_comp"].dtype == torch.bfloat16
    sd = opt.state_dict()
    sd["state"][0]["kahan_comp"] = sd["state"][0]["kahan_comp"].float()
    again = cf.AdamW([p], backend="torch", kahan_sum=True)
    again.load_state_dict(sd)
    assert again.state[p]["kahan_comp"].dtype == torch.bfloat16
    bad = opt.state_dict()
    bad["state"][0]["kahan_comp"] = torch.zeros(49, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="kahan_comp"):
        again.load_state_dict(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_in_backward_equals_step(backend):
    _needs(backend)
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3)).to(torch.bfloat16)
              for _ in range(2)]  # fmt: skip
    models[1].load_state_dict(models[0].state_dict())
    opts = [cf.AdamW(m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3), backend=backend, kahan_sum=True) for m in models]
    opts[1].register_step_in_backward(models[1])
    for _ in range(5):
        x = torch.randn(8, 9).to(torch.bfloat16)
        for m, o in zip(models, opts):
            m(x).float().square().mean().backward()
            o.step()
            o.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opts[0].state[a]["kahan_comp"], opts[1].state[b]["kahan_comp"])


@pytest.mark.skipif(_ext.load() is None, reason="needs the compiled extension")
def test_op_refuses_bad_compensation():
    """The op's own checks (a caller past the optimizer): the pair with
    stochastic rounding, another dtype, a float32 parameter."""
    from clr_fused.kernels import compiled
    from clr_fused.kernels.tensor_tables import build_tables

    ops = compiled._ops()
    p, g = torch.zeros(8, dtype=torch.bfloat16), torch.ones(8, dtype=torch.bfloat16)
    rows = torch.zeros(1, 16, dtype=torch.float64)
    base = dict(counter=torch.zeros((), dtype=torch.int64), lr=torch.tensor(0.1, dtype=torch.float64))

    def call(param, comp, stochastic=False):
        t = build_tables([[param], [g.to(param.dtype)], [comp]], compiled.CHUNK, torch.device("cpu")).flat()
        ops.sgd_step([param], [g.to(param.dtype)], [], [], t, torch.zeros(1, dtype=torch.int8), rows, base["counter"],
                     base["lr"], None, None, None, None, torch.zeros(1, dtype=torch.int32), 0.0, 0.0, 0.0, False, False,
                     False, stochastic, True, [comp])  # fmt: skip

    with pytest.raises(RuntimeError, match="exclusive"):
        call(p, torch.zeros_like(p), stochastic=True)
    with pytest.raises(RuntimeError, match="compensation buffers must be"):
        call(p, torch.zeros(8, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="bfloat16 / float16 parameters"):
        call(p.float(), torch.zeros(8))
    call(p, torch.zeros_like(p))
    assert torch.equal(p, torch.full((8,), -0.1).to(torch.bfloat16))


def test_a_parameter_made_float32_takes_its_buffer_in():
    """p.data = p.data.float() mid-run: the parameter is then p + c (what the
    pair stood for, exact in float32) and keeps no buffer."""
    ps, opt = _train("SGD", "torch", lr=1e-3, kahan_sum=True, steps=3, sizes=[300])
    p = ps[0]
    want = _full(p, opt)
    p.data = p.data.float()
    g = torch.randn(300)
    p.grad = g.clone()
    opt.step()
    assert "kahan_comp" not in opt.state[p]
    assert torch.equal(p.detach(), want - g * torch.tensor(1e-3, dtype=torch.float32))


# ------------------------------------------------------------------ what users change between steps
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend=st.sampled_from(backends("cpu", "triton") if M.TRITON else backends("cpu")),
    cls=st.sampled_from(["SGD", "AdamW", "Lion"]),
    kinds=st.lists(st.sampled_from(M.MUTATIONS), min_size=1, max_size=8),
    seed=st.integers(0, 1000),
)
def test_random_mutation_sequences_against_the_torch_backend(backend, cls, kinds, seed):
    """tests/test_mutations.py's random sequences (sizes, dtypes, storage,
    gradients, groups, checkpoints changed between steps) with kahan_sum on
    bf16 parameters, a fused backend beside the torch backend: both step or
    both refuse (a refusal changes nothing), never a crash; after each step
    the compensated values agree, and the buffers exist on both sides or on neither."""
    kw = dict(lr=0.05, momentum=0.9) if cls == "SGD" else dict(lr=1e-3, weight_decay=0.1)
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s).to(torch.bfloat16)) for s in ((5, 3), (7,), (130,))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = getattr(cf, cls)(ps, backend=backend, kahan_sum=True, **kw)
    theirs = getattr(cf, cls)(qs, backend="torch", kahan_sum=True, **kw)
    for j, kind in enumerate(kinds + ["step"]):
        if kind != "step":
            M._apply(kind, ps, qs, ours, theirs, seed * 100 + j)
            continue
        M._grads_missing(ps, qs, seed * 100 + j)
        if not M._step_both(ours, theirs):
            return  # both refused (ours changed nothing: _step_both checks it)
        for p, q in zip(ps, qs):
            assert p.shape == q.shape and p.dtype == q.dtype
            a, b = ours.state.get(p, {}), theirs.state.get(q, {})
            assert ("kahan_comp" in a) == ("kahan_comp" in b)
            if "kahan_comp" in a:
                torch.testing.assert_close(_full(p, ours), _full(q, theirs), rtol=2**-10, atol=1e-5)
            else:
                # (float32 now, after a retype: the fused backends widen a bf16 state of a float32
                # parameter once, the torch backend keeps it, as torch.optim does: bf16-level agreement)
                torch.testing.assert_close(p.detach(), q.detach(), rtol=3e-2, atol=3e-2)
