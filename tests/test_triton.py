"""The Triton backend against the torch backend (the reference).

Without a GPU these run under TRITON_INTERPRET=1 on CPU tensors (see
conftest.py); with one, on CUDA tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

import clr_fused as cf
from clr_fused import schedule_math as sm
from clr_fused.kernels.triton_schedule import evaluate_rows

# the case tables and the pair runner every backend's tests share
from .cases import (
    ADAM_FLAGS,
    DEVICE,
    SCHED_IDS,
    SCHEDULES,
    SGD_FLAGS,
)
from .cases import assert_same as _assert_same
from .cases import params as _params
from .cases import run_pair as _run_pair


@pytest.mark.parametrize("spec", SCHEDULES, ids=SCHED_IDS)
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {})], ids=["sgd", "adam"])
def test_every_schedule_kind(cls, kw, spec):
    _assert_same(*_run_pair(cls, kw, spec))


@pytest.mark.parametrize("cycled", [False, True], ids=["fixed-momentum", "cycled-momentum"])
@pytest.mark.parametrize(
    "cls,kw",
    [("SGD", f) for f in SGD_FLAGS] + [(c, f) for c in ("Adam", "AdamW") for f in ADAM_FLAGS],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)
def test_every_flag(cls, kw, cycled):
    spec = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=cycled, base_momentum=0.7, max_momentum=0.9)
    _assert_same(*_run_pair(cls, kw, spec))


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["state-as-param", "state-fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "cls,kw", [("SGD", dict(momentum=0.9, weight_decay=1e-3)), ("Adam", dict(eps=1e-4)), ("AdamW", dict(eps=1e-4))]
)
def test_low_precision_matches_torch_backend(cls, kw, dtype, state_dtype):
    """Both backends do float32 math and round once: they agree to a few units
    in the last place of the storage dtype (bf16 states compound roundings)."""
    spec = cf.CyclicLR(1e-3, 1e-2, 3, cycle_momentum=False)
    a, b, oa, ob = _run_pair(cls, kw, spec, dtype=dtype, state_dtype=state_dtype, sizes=[1, 129, 4097])
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for x, y in zip(a, b):
        assert x.dtype == dtype
        # float32 op order differs between paths: a few units in the last place
        torch.testing.assert_close(x.float(), y.float(), rtol=4 * ulp, atol=ulp * 1e-2)
    for p in a:
        for key, v in oa.state[p].items():
            if key != "step":
                assert v.dtype == (state_dtype or dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_low_precision_error_at_most_twice_torch(cls, dtype):
    """Error against a float64 run on the same gradients: ours <= 2x torch.optim's own."""
    from torch.optim import lr_scheduler as L

    kw = dict(momentum=0.9, weight_decay=1e-3) if cls == "SGD" else dict(weight_decay=1e-2, eps=1e-4)
    n = 4097
    gen = torch.Generator().manual_seed(2)
    p0 = torch.randn(n, generator=gen).to(dtype)
    grads = [torch.randn(n, generator=gen) * (1.0 if dtype == torch.float16 else 0.1) for _ in range(20)]

    def torch_run(d):
        p = torch.nn.Parameter(p0.to(DEVICE, d, copy=True))
        o = getattr(torch.optim, cls)([p], lr=1e-2, foreach=False, **kw)
        s = L.CyclicLR(o, 1e-3, 1e-2, 5, cycle_momentum=False)
        for g in grads:
            p.grad = g.to(DEVICE, d)
            o.step()
            s.step()
        return p.detach().double().cpu()

    exact = torch_run(torch.float64)
    torch_err = (torch_run(dtype) - exact).abs().max().item()
    p = torch.nn.Parameter(p0.to(DEVICE, copy=True))
    o = getattr(cf, cls)([p], lr=cf.CyclicLR(1e-3, 1e-2, 5, cycle_momentum=False), backend="triton", **kw)
    for g in grads:
        p.grad = g.to(DEVICE, dtype)
        o.step()
    assert (p.detach().double().cpu() - exact).abs().max().item() <= 2 * torch_err


def test_found_inf_and_grad_scale_read_from_device():
    a, b = _params([5, 4097], torch.float32), _params([5, 4097], torch.float32)
    spec = cf.CyclicLR(0.001, 0.01, 2)
    oa = cf.Adam(a, lr=spec, backend="triton", amsgrad=True)
    ob = cf.Adam(b, lr=spec, backend="torch", amsgrad=True)
    for i in range(6):
        skip = float(i in (0, 3))
        for ps, o in ((a, oa), (b, ob)):
            o.grad_scale = torch.tensor(8.0, device=DEVICE)
            o.found_inf = torch.tensor(skip, device=DEVICE)
            before = [p.detach().clone() for p in ps]
            for p in ps:
                p.grad = torch.full_like(p, 8.0 * (i + 1))
                p.grad[0] = float("inf") if skip else p.grad[0]
            o.step()
            if skip:
                assert all(torch.equal(x, y) for x, y in zip(ps, before))
    _assert_same(a, b, oa, ob)
    assert oa.schedule_step.item() == 4
    assert all(oa.state[p]["step"].item() == 4 for p in a)


def test_fused_clipping_and_non_finite_skip():
    a, b = _params([7, 1000], torch.float32), _params([7, 1000], torch.float32)
    oa = cf.SGD(a, lr=cf.ExponentialLR(0.1, 0.9), momentum=0.9, backend="triton", max_grad_norm=0.5)
    ob = cf.SGD(b, lr=cf.ExponentialLR(0.1, 0.9), momentum=0.9, backend="torch", max_grad_norm=0.5)
    for i in range(5):
        for ps, o in ((a, oa), (b, ob)):
            for j, p in enumerate(ps):
                p.grad = torch.full_like(p, float(j + i + 1))
                if i == 2:
                    p.grad[-1] = float("nan")
            o.step()
    _assert_same(a, b, oa, ob)
    assert oa.schedule_step.item() == 4


def test_non_contiguous_and_zero_size_params():
    def make():
        torch.manual_seed(4)
        ps = [
            torch.nn.Parameter(torch.randn(9, 7, device=DEVICE).t()),
            torch.nn.Parameter(torch.randn(10, device=DEVICE)[::3]),
        ]
        ps += [torch.nn.Parameter(torch.randn(s, device=DEVICE)) for s in [(0,), (3, 0), (129,)]]
        return ps

    for cls, kw in (("SGD", dict(momentum=0.9)), ("Adam", {})):
        a, b = make(), make()
        oa = getattr(cf, cls)(a, lr=0.01, backend="triton", **kw)
        ob = getattr(cf, cls)(b, lr=0.01, backend="torch", **kw)
        for _ in range(4):
            grads = [torch.randn(p.shape, device=DEVICE) for p in a]
            for ps, o in ((a, oa), (b, ob)):
                for p, g in zip(ps, grads):
                    p.grad = g.clone()
                o.step()
        _assert_same(a, b, oa, ob)
        assert a[0].stride() == b[0].stride()


def test_deterministic_bits():
    runs = []
    for _ in range(2):
        a, _, oa, _ = _run_pair("Adam", dict(weight_decay=0.01), cf.OneCycleLR(0.01, 12), sizes=[129, 65537], steps=4)
        runs.append([p.detach().clone() for p in a])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_tables_built_once_for_a_steady_loop(monkeypatch):
    from clr_fused.kernels import tensor_tables

    calls = []
    real = tensor_tables._upload
    monkeypatch.setattr(tensor_tables, "_upload", lambda *a, **k: calls.append(1) or real(*a, **k))
    ps = _params([3, 129], torch.float32)
    opt = cf.Adam(ps, lr=cf.CyclicLR(0.001, 0.01, 2), backend="triton")
    grads = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, grads):
        p.grad = g  # the same gradient tensors every step, as in a captured graph
    opt.step()
    first = len(calls)
    assert first > 0
    for _ in range(3):
        opt.step()
    assert len(calls) == first


@triton.jit
def _schedule_probe(rows, n_rows, steps, plateau_lr, out_lr, out_mom, N: tl.constexpr):
    for i in range(N):
        k = tl.load(steps + i)
        lr, mom = evaluate_rows(rows, n_rows, k, plateau_lr, True)
        tl.store(out_lr + i, lr)
        tl.store(out_mom + i, mom)


@pytest.mark.parametrize("spec", SCHEDULES[1:], ids=SCHED_IDS[1:])
def test_kernel_schedule_equals_python_closed_form(spec):
    ks = list(range(0, 40)) + [2**24 + 3, 3 * 10**7 + 1500, 10**9 + 7]
    steps = torch.tensor(ks, dtype=torch.int64, device=DEVICE)
    rows = torch.tensor(spec.rows(), dtype=torch.float64, device=DEVICE)
    plateau = torch.tensor(spec.initial_lr if not isinstance(spec, cf.ReduceLROnPlateau) else 0.0042, device=DEVICE)
    out_lr = torch.empty(len(ks), device=DEVICE)
    out_mom = torch.empty(len(ks), device=DEVICE)
    _schedule_probe[(1,)](rows, sm.segment_count(spec.rows()), steps, plateau, out_lr, out_mom, N=len(ks))
    for i, k in enumerate(ks):
        want = 0.0042 if isinstance(spec, cf.ReduceLROnPlateau) else spec(k)
        assert out_lr[i].item() == pytest.approx(want, rel=2e-5, abs=1e-9), k
        if spec.cycles_momentum:
            assert out_mom[i].item() == pytest.approx(spec.momentum(k), rel=2e-5), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU every test above compiles and runs the real kernels")
def test_kernels_compile_for_sm80_and_sm90():
    """The interpreter is lenient; the real compiler must accept every variant."""
    env = {**__import__("os").environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "tools.triton_aot_check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sm_90: compiled" in out.stdout


def test_amsgrad_nan_propagates_like_torch():
    """torch.maximum keeps a NaN in max_exp_avg_sq; so must the Triton kernel."""
    p = torch.nn.Parameter(torch.randn(37, device=DEVICE))
    q = torch.nn.Parameter(p.detach().clone())
    ours = cf.Adam([p], lr=1e-2, amsgrad=True, backend="triton")
    ref = torch.optim.Adam([q], lr=1e-2, amsgrad=True)
    for i in range(3):
        g = torch.randn(37, device=DEVICE)
        if i == 1:
            g[5] = float("nan")
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.isnan(ours.state[p]["max_exp_avg_sq"][5]) and torch.isnan(p[5])
    torch.testing.assert_close(p, q, equal_nan=True)


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["bf16-state", "fp32-state"])
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {})])
def test_bf16_nan_and_inf_through_the_rounding(cls, kw, state_dtype):
    """NaN and Inf survive the kernel's explicit bf16 rounding as NaN and Inf
    (the carry of the rounding bias used to turn a NaN into -0.0 or Inf)."""
    p = torch.nn.Parameter(torch.randn(300, device=DEVICE).to(torch.bfloat16))
    q = torch.nn.Parameter(p.detach().clone())
    ours = getattr(cf, cls)([p], lr=0.1, backend="triton", state_dtype=state_dtype, **kw)
    ref = getattr(cf, cls)([q], lr=0.1, backend="torch", state_dtype=state_dtype, **kw)
    g = torch.randn(300, device=DEVICE).to(torch.bfloat16)
    g[3], g[7], g[11] = float("nan"), float("inf"), -float("inf")
    p.grad, q.grad = g.clone(), g.clone()
    ours.step()
    ref.step()
    if state_dtype == torch.float32:
        # a float32 NaN whose payload fills the low bits (0x7FFFFFFF) in the
        # state flows into the parameter and through the bf16 rounding
        payload_nan = torch.tensor([0x7FFFFFFF], dtype=torch.int32).view(torch.float32).item()
        key = "momentum_buffer" if cls == "SGD" else "exp_avg"
        for o, t in ((ours, p), (ref, q)):
            o.state[t][key][20] = payload_nan
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        ours.step()
        ref.step()
        assert torch.isnan(p[20])
    assert torch.equal(torch.isnan(p), torch.isnan(q)) and torch.isnan(p[3])
    assert torch.equal(torch.isinf(p), torch.isinf(q))
    finite = torch.isfinite(q)
    torch.testing.assert_close(p[finite].float(), q[finite].float(), rtol=2**-7, atol=1e-6)
    for key, v in ref.state[q].items():
        assert torch.equal(torch.isnan(ours.state[p][key]), torch.isnan(v)), key


def test_alignment_flag_routes_unaligned_tensors_to_the_scalar_variant():
    """ALIGNED (vector accesses) only when every address of the bucket is 16-byte
    aligned; an unaligned view, or a gradient that moves to an unaligned
    address, takes the masked scalar path; results equal the torch backend's."""

    def make():
        torch.manual_seed(0)
        return [
            torch.nn.Parameter(torch.randn(2053, device=DEVICE)),
            torch.nn.Parameter(torch.randn(3000, device=DEVICE)),
        ]

    for unaligned_view in (False, True):
        a, b = make(), make()
        if unaligned_view:
            for ps in (a, b):
                ps[1] = torch.nn.Parameter(torch.randn(3001, device=DEVICE)[1:])
            b[1].data.copy_(a[1].data)
        oa = cf.Adam(a, lr=1e-2, backend="triton")
        ob = cf.Adam(b, lr=1e-2, backend="torch")
        gen = torch.Generator().manual_seed(1)
        for i in range(4):
            for p, q in zip(a, b):
                g = torch.randn(p.shape, generator=gen).to(DEVICE)
                if i == 3:  # the grad moves to an unaligned address: the plan must not keep ALIGNED
                    p.grad = torch.empty(p.numel() + 1, device=DEVICE)[1:].copy_(g)
                else:
                    p.grad = g.clone()
                q.grad = g.clone()
            oa.step()
            ob.step()
            if i == 0:
                kept = [bk for bk in oa._plan.buckets if bk.tables is not None]
                assert kept and all(bk.aligned == (not unaligned_view) for bk in kept)
        assert not any(bk.aligned for bk in oa._plan.buckets)
        _assert_same(a, b, oa, ob, rtol=1e-5, atol=1e-6)
