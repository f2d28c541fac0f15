"""Real training loops: torch.compile, the scheduler view, AMP autocast,
100k tensors, reproducibility, and a checkpoint that survives a SIGKILL."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import clr_fused as cf

from . import resume_worker


@pytest.mark.parametrize("cls", ["SGD", "AdamW"])
def test_compiled_step_does_not_recompile_across_an_lr_cycle(cls):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    eager = __import__("copy").deepcopy(m)
    spec = cf.CyclicLR(0.01, 0.1, 3, 2, cycle_momentum=False)
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(cf, cls)(m.parameters(), lr=spec, backend="torch", **kw)
    opt_eager = getattr(cf, cls)(eager.parameters(), lr=spec, backend="torch", **kw)
    cnt = CompileCounter()

    def train_step(model, o, x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        o.step()
        o.zero_grad()
        return loss

    compiled = torch.compile(train_step, backend=cnt)
    x, y = torch.randn(4, 8), torch.randn(4, 2)
    frames = []
    for _ in range(12):  # more than two full cycles (5 steps each)
        compiled(m, opt, x, y)
        train_step(eager, opt_eager, x, y)
        frames.append(cnt.frame_count)
    assert frames[2:] == [frames[2]] * 10, frames  # no recompilation while the LR moves
    assert opt.schedule_step.item() == 12
    for a, b in zip(m.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)


def test_scheduler_view_for_trainers():
    p = [torch.nn.Parameter(torch.zeros(3))]
    spec = cf.OneCycleLR(0.1, 20)
    opt = cf.SGD(p, lr=spec)
    view = opt.as_lr_scheduler()
    assert isinstance(view, torch.optim.lr_scheduler.LRScheduler)
    for k in range(5):
        assert view.get_last_lr() == pytest.approx([spec(k)], rel=1e-6)
        assert view.last_epoch == k
        p[0].grad = torch.ones(3)
        opt.step()
        view.step()  # a trainer's call: must not advance anything
    assert opt.schedule_step.item() == 5 and view.state_dict() == {}


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_with_grad_scaler_backoff_and_growth(amp_dtype):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = cf.AdamW(m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 3), backend="torch", max_grad_norm=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    scales, steps = [], []
    for i in range(10):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=amp_dtype):
            loss = torch.nn.functional.mse_loss(m(x), y)
        scaler.scale(loss).backward()
        if i == 4:
            m[0].weight.grad[0, 0] = float("nan")  # forces a skipped step and a backoff
            before = ([q.detach().clone() for q in m.parameters()], opt.schedule_step.item())
        scaler.step(opt)
        scaler.update()
        if i == 4:
            assert all(torch.equal(a, b) for a, b in zip(m.parameters(), before[0]))
            assert opt.schedule_step.item() == before[1]
        scales.append(scaler.get_scale())
        steps.append(opt.schedule_step.item())
    assert scales[4] == scales[3] / 2  # backoff on the non-finite step
    assert max(scales) > 2.0**8  # growth after growth_interval clean steps
    assert steps[-1] == 9


def test_one_hundred_thousand_tensors():
    ps = [torch.nn.Parameter(torch.randn(1 + i % 3)) for i in range(100_000)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = cf.SGD(ps, lr=cf.CyclicLR(0.01, 0.1, 2), momentum=0.9, backend="torch")
    topt = torch.optim.SGD(ref, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(topt, 0.01, 0.1, 2)
    for _ in range(2):
        for a, b in zip(ps, ref):
            a.grad = torch.ones_like(a)
            b.grad = torch.ones_like(b)
        opt.step()
        topt.step()
        sched.step()
    worst = max((a - b).abs().max().item() for a, b in zip(ps[::997], ref[::997]))
    assert worst < 1e-6


def test_bit_identical_run_to_run():
    runs = []
    for _ in range(2):
        m, opt = resume_worker.build()
        resume_worker.train(m, opt, 0, 15)
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_checkpoint_kill_resume_equals_uninterrupted(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    worker = resume_worker.__file__
    first = subprocess.run(
        [sys.executable, worker, "first", path, "11", "25"], capture_output=True, text=True, timeout=300
    )
    assert first.returncode == -9, first.stderr  # killed by SIGKILL mid-cycle
    second = subprocess.run(
        [sys.executable, worker, "resume", path, "11", "25"], capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    resumed = torch.load(path + ".final")
    m, opt = resume_worker.build()
    resume_worker.train(m, opt, 0, 25)
    for k, v in m.state_dict().items():
        assert torch.equal(resumed[k], v), k
