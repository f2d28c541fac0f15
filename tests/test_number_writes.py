"""A number written to ``group["lr"]`` (or a momentum / beta1) every iteration,
as nanoGPT-style loops and trainers' schedulers do: the next step fills the
group's existing LR tensor (a device fill with the value as its argument) and
makes no new tensor, so no host-to-device copy and no sync; the updates are
torch.optim's with the same writes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import clr_fused as cf

# aten ops that make a tensor from host data (torch.tensor / as_tensor: on a GPU a pageable
# host-to-device copy) or a new one for a value
FROM_HOST = {"lift_fresh", "scalar_tensor"}


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def get_lr(it: int) -> float:
    """nanoGPT's warm-up + cosine, written in Python."""
    warmup, decay, max_lr, min_lr = 3, 12, 0.02, 0.002
    if it < warmup:
        return max_lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def _make(cls, backend=None):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (1, 7, 130)]
    extra = dict(momentum=0.9) if cls == "SGD" else dict(weight_decay=0.1)
    if backend is None:
        # torch.optim's implementation our backends follow bit for bit (tests/test_exactness.py):
        # the for-loop SGD, the fused Adam; both apply the Python float lr in float64, as ours do
        impl = dict(foreach=False) if cls == "SGD" else dict(fused=True)
        return ps, getattr(torch.optim, cls)(ps, lr=get_lr(0), **extra, **impl)
    return ps, getattr(cf, cls)(ps, lr=get_lr(0), backend=backend, **extra)


def _write(opt, it: int, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr  # the nanoGPT idiom
        if "momentum" in group:
            group["momentum"] = 0.9 - 0.01 * (it % 3)
        else:
            group["betas"] = (0.9 - 0.01 * (it % 3), 0.999)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_write_then_step_matches_torch_and_makes_no_tensor(cls, backend):
    """Steps alternate between a new number (lr and momentum/beta1) and none:
    a write adds exactly one device fill to the step's ops and nothing else
    (no tensor made from host data), and every update is torch's."""
    ref_ps, ref = _make(cls)
    ps, opt = _make(cls, backend)
    g = torch.Generator().manual_seed(1)
    quiet = None  # the op sequence of a step without a write
    for it in range(16):
        grads = [torch.randn(p.shape, generator=g) for p in ps]
        for p, q, gr in zip(ps, ref_ps, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        write = it % 2 == 0
        lr = get_lr(it) * 1.0001  # a new float object every time
        if write:
            _write(opt, it, lr)
            _write(ref, it, lr)
        ref.step()
        with OpLog() as log:
            opt.step()
        if it >= 3 and not write:
            if quiet is not None:
                assert log.ops == quiet
            quiet = log.ops
        if it >= 4 and write:
            extra = list(log.ops)
            assert extra.count("aten.fill_.Scalar") == quiet.count("aten.fill_.Scalar") + 1, log.ops
            extra.remove("aten.fill_.Scalar")
            assert extra == quiet, f"step {it}: a number write changed the step's ops beyond one fill"
            made = [op for op in log.ops if op.split(".")[1] in FROM_HOST]
            assert backend == "triton" or made == [], made  # (the Triton interpreter stages tensors itself)
        if write:
            assert opt.param_groups[0]["lr"] == lr and opt.get_last_lr() == [lr]  # the user's number, as written
    for p, q in zip(ps, ref_ps):
        if backend == "cpu":
            assert torch.equal(p, q), (p - q).abs().max()
        else:  # torch's order too, but numpy's (interpreter) / foreach's roundings: a few ulps after 16 steps
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_number_replacing_a_schedule_makes_no_tensor(backend):
    """The first number written over a schedule lands in the schedule's live
    tensor (a later re-attach rewrites it from the counter)."""
    ps = [torch.nn.Parameter(torch.randn(5))]
    opt = cf.SGD(ps, lr=cf.CyclicLR(1e-3, 1e-2, 4), momentum=0.9, backend=backend)
    for _ in range(3):
        ps[0].grad = torch.randn(5)
        opt.step()
    live = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = 0.005
    ps[0].grad = torch.randn(5)
    with OpLog() as log:
        opt.step()
    made = [op for op in log.ops if op.split(".")[1] in FROM_HOST]
    assert made == [], made
    assert "schedule" not in opt.param_groups[0] and opt.get_last_lr() == [0.005]
    assert float(live) == pytest.approx(0.005, rel=1e-7)
    # putting the live tensor back re-attaches the schedule at the current step
    opt.param_groups[0]["lr"] = live
    ref = torch.optim.SGD([torch.nn.Parameter(torch.randn(5))], lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(ref, 1e-3, 1e-2, 4)
    for _ in range(4):
        ref.step()
        sched.step()
    assert opt.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], rel=1e-7)


def test_bad_number_is_refused_before_anything_moves():
    ps = [torch.nn.Parameter(torch.randn(5))]
    opt = cf.SGD(ps, lr=0.1, momentum=0.9, backend="torch")
    ps[0].grad = torch.randn(5)
    opt.step()
    before = ps[0].detach().clone()
    buf = opt.state[ps[0]]["momentum_buffer"].clone()
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    assert torch.equal(ps[0], before) and torch.equal(opt.state[ps[0]]["momentum_buffer"], buf)
    assert int(opt.schedule_step) == 1
    opt.param_groups[0]["lr"] = 0.05
    opt.step()
    torch.testing.assert_close(ps[0].detach(), before - 0.05 * (0.9 * buf + ps[0].grad), rtol=0, atol=1e-7)
