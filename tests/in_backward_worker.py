"""Worker for tests/test_in_backward.py's DDP test (spawned; must live in an importable module).

Every rank trains the same model three ways side by side, under DDP on a gloo
group: ``backward(); step()`` (the reference), and with
``register_step_in_backward(ddp)`` for both gradient layouts DDP offers
(``gradient_as_bucket_view`` False / True).  Small buckets (several per
backward) and two param groups; a channels_last convolution (a bucket slice
in non-contiguous strides); micro-batches accumulated under ``no_sync()``.
Each rank writes the mismatches it saw (none expected: bit for bit).
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import clr_fused as cf

STEPS = 12
MICRO = 2  # micro-batches per step: the first under no_sync()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3)
        self.head = torch.nn.Sequential(torch.nn.Linear(5 * 4 * 4, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3))

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def net():
    torch.manual_seed(0)
    return Net().to(memory_format=torch.channels_last)


OPTS = {
    "sgd-cyclic": lambda groups: cf.SGD(groups, lr=cf.CyclicLR(0.01, 0.1, 3, cycle_momentum=True), momentum=0.9),
    "adamw-onecycle": lambda groups: cf.AdamW(groups, lr=cf.OneCycleLR(0.02, STEPS), weight_decay=0.1),
}


def _groups(model):
    return [
        {"params": list(model.conv.parameters())},
        {"params": list(model.head.parameters()), "weight_decay": 0.0},
    ]


def _batches(rank):
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data: the reduction matters
    return [
        [(torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 3, generator=g)) for _ in range(MICRO)]
        for _ in range(STEPS)
    ]


def _train_one_step(ddp, opt, micro, in_backward):
    if not in_backward:
        opt.zero_grad()
    for i, (x, y) in enumerate(micro):
        if i < len(micro) - 1:
            with ddp.no_sync():
                torch.nn.functional.mse_loss(ddp(x), y).backward()
        else:
            torch.nn.functional.mse_loss(ddp(x), y).backward()
    if not in_backward:
        opt.step()


def _compare(ref, got, what, bad):
    (m1, o1), (m2, o2) = ref, got
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        if not torch.equal(p1.detach(), p2.detach()):
            bad.append(f"{what}: parameter {name}")
        s1, s2 = o1.state[p1], o2.state[p2]
        if s1.keys() != s2.keys() or not all(torch.equal(s1[k], s2[k]) for k in s1):
            bad.append(f"{what}: states of {name}")
        if p2.grad is not None:
            bad.append(f"{what}: the gradient of {name} was not released")
    if o1.get_last_lr() != o2.get_last_lr() or int(o1.schedule_step) != int(o2.schedule_step):
        bad.append(f"{what}: LR / step {o1.get_last_lr()} {o2.get_last_lr()}")


def run(rank: int, world: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    bad: list[str] = []
    try:
        for name, make in OPTS.items():
            runs = []
            for in_backward, as_view in ((False, False), (True, False), (True, True)):
                model = net()
                ddp = DDP(model, bucket_cap_mb=0.0005, gradient_as_bucket_view=as_view)
                opt = make(_groups(model))
                if in_backward:
                    opt.register_step_in_backward(ddp)
                runs.append((ddp, model, opt, in_backward))
            for step, micro in enumerate(_batches(rank)):
                for ddp, _, opt, in_backward in runs:
                    _train_one_step(ddp, opt, micro, in_backward)
                ref = (runs[0][1], runs[0][2])
                for (_, model, opt, _), view in zip(runs[1:], ("copy", "bucket view")):
                    _compare(ref, (model, opt), f"{name}, {view}, step {step + 1}", bad)
            if int(runs[0][2].schedule_step) != STEPS:
                bad.append(f"{name}: the reference did not step")
        dist.barrier()
    finally:
        torch.save(bad, f"{out_dir}/bad-{rank}.pt")
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
