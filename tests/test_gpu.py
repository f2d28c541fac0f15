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


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_hundred_steps_without_host_sync(cls, backend):
    m = _model()
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(cf, cls)(m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 7), backend=backend, max_grad_norm=1.0, **kw)
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()  # first step builds tables and state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.schedule_step.item() == 101


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_graph_replay_equals_eager_with_moving_lr(cls, backend):
    kw = dict(momentum=0.9) if cls == "SGD" else dict(amsgrad=True)
    spec = cf.CyclicLR(1e-3, 1e-2, 5, 3, "triangular2")

    def make():
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (3, 129, 4097, 65537)]
        for p in ps:
            p.grad = torch.randn_like(p)
        return ps, getattr(cf, cls)(ps, lr=spec, backend=backend, **kw)

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
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
