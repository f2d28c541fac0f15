"""GPU-only checks (skipped without CUDA): no host sync, CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

import clr_fused as cf

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BACKENDS = ["torch", "triton", "cuda"]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 129), torch.nn.GELU(), torch.nn.Linear(129, 10)).cuda()


# low-precision variants: bf16 / int8 states for fp32 params, bf16 params + stochastic rounding (+ int8)
LOWP = {"fp32": (torch.float32, {}), "bf16-states": (torch.float32, dict(state_dtype=torch.bfloat16)),
        "int8-states": (torch.float32, dict(state_dtype="int8")),
        "bf16-sr": (torch.bfloat16, dict(stochastic_rounding=True)),
        "bf16-sr-int8": (torch.bfloat16, dict(stochastic_rounding=True, state_dtype="int8"))}  # fmt: skip


@cuda
@pytest.mark.parametrize("lowp", list(LOWP))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_hundred_steps_without_host_sync(cls, backend, lowp):
    dtype, lkw = LOWP[lowp]
    m = _model().to(dtype)
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(cf, cls)(
        m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 7), backend=backend, max_grad_norm=1.0, **kw, **lkw
    )
    x, y = torch.randn(32, 64, device="cuda", dtype=dtype), torch.randint(0, 10, (32,), device="cuda")
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x).float(), y).backward()
    opt.step()  # first step builds tables and state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x).float(), y).backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.schedule_step.item() == 101


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_number_writes_without_host_sync(cls, backend):
    """nanoGPT's loop: a float written to group["lr"] (and momentum / betas) every iteration."""
    m = _model()
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(cf, cls)(m.parameters(), lr=1e-3, backend=backend, **kw)
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in range(50):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (1 + it % 7)
                if cls == "SGD":
                    group["momentum"] = 0.9 - 0.01 * (it % 3)
                else:
                    group["betas"] = (0.9 - 0.01 * (it % 3), 0.999)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.get_last_lr() == [1e-3 * (1 + 49 % 7)]


@cuda
@pytest.mark.parametrize("lowp", list(LOWP))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_graph_replay_equals_eager_with_moving_lr(cls, backend, lowp):
    dtype, lkw = LOWP[lowp]
    kw = dict(momentum=0.9) if cls == "SGD" else dict(amsgrad=True)
    spec = cf.CyclicLR(1e-3, 1e-2, 5, 3, "triangular2")

    def make():
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(n, device="cuda").to(dtype)) for n in (3, 129, 4097, 65537)]
        for p in ps:
            p.grad = torch.randn_like(p)
        return ps, getattr(cf, cls)(ps, lr=spec, backend=backend, **kw, **lkw)

    eager_ps, eager = make()
    for _ in range(52):
        eager.step()

    ps, opt = make()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt.step()  # warm-up: builds state and tables
        opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step()
    lrs = []
    for _ in range(50):
        g.replay()
        lrs.append(opt.get_last_lr()[0])
    assert len(set(lrs)) > 5  # the LR moved between replays
    assert opt.schedule_step.item() == 52
    for a, b in zip(ps, eager_ps):
        # the same kernels and random bits (from the device step counter) replayed: identical
        assert torch.equal(a, b) if lowp != "fp32" else torch.allclose(a, b, rtol=1e-6, atol=1e-6)


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_training_step_in_one_graph(backend):
    """Forward, backward and step captured once; the LR follows the schedule across replays."""
    m = _model()
    spec = cf.OneCycleLR(1e-2, 60)
    opt = cf.AdamW(m.parameters(), lr=spec, backend=backend)
    x = torch.randn(32, 64, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(g):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
    for k in range(4, 40):
        g.replay()
        assert opt.get_last_lr()[0] == pytest.approx(spec(k), rel=1e-5)
    assert torch.isfinite(loss)


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_group_lr_written_between_replays(backend):
    """The capturable idiom on param_groups: writing g["lr"] in place between
    replays sets the next update's LR; the schedule takes over after it."""
    spec = cf.CyclicLR(0.01, 0.05, 4, cycle_momentum=False)
    p = torch.nn.Parameter(torch.zeros(1000, device="cuda"))
    p.grad = torch.ones_like(p)
    opt = cf.SGD([p], lr=spec, backend=backend)
    opt.step()  # builds the plan
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step()
    lr = opt.param_groups[0]["lr"]
    g.replay()  # step 1 (the capture itself did not run the kernels)
    before = p.detach().clone()
    lr.fill_(0.0)  # as a torch LRScheduler writes a tensor lr
    g.replay()
    torch.testing.assert_close(p, before)  # that update used lr = 0
    assert opt.get_last_lr()[0] == pytest.approx(spec(3), rel=1e-5)
    g.replay()
    torch.testing.assert_close(before - p.detach(), torch.full_like(p, spec(3)), rtol=1e-5, atol=1e-7)


@cuda
def test_report_inside_a_captured_graph():
    p = torch.nn.Parameter(torch.zeros(1000, device="cuda"))
    p.grad = torch.ones_like(p)
    opt = cf.SGD([p], lr=cf.ReduceLROnPlateau(0.1, patience=0, factor=0.5), backend="triton")
    metric = torch.tensor(1.0, device="cuda")
    opt.step()
    opt.report(metric)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step()
        opt.report(metric)  # no improvement: halves the LR each replay
    lrs = []
    for _ in range(3):
        g.replay()
        lrs.append(opt.get_last_lr()[0])
    assert lrs == pytest.approx([0.025, 0.0125, 0.00625], rel=1e-6)


@cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_single_tensor_over_2_31_elements(backend):
    n = 2**31 + 5
    free, _ = torch.cuda.mem_get_info()
    assert free > 4 * n * 2 + 2**30, "needs ~18 GB free for a bf16 tensor with grad and momentum"
    p = torch.nn.Parameter(torch.zeros(n, device="cuda", dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    opt = cf.SGD([p], lr=0.5, momentum=0.9, backend=backend)
    opt.step()
    torch.cuda.synchronize()
    # the last elements (past 2**31) were updated like the first
    assert p[-1].item() == -0.5 and p[0].item() == -0.5 and p[2**31 + 1].item() == -0.5
