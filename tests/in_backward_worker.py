"""Worker for tests/test_in_backward.py's DDP and FSDP2 tests (spawned; must live in an importable module).

Every rank trains the same model side by side on a gloo group:
``backward(); step()`` (the reference) and ``register_step_in_backward``.
DDP: both gradient layouts it offers (``gradient_as_bucket_view`` False /
True), small buckets (several per backward), a channels_last convolution (a
bucket slice in non-contiguous strides), micro-batches under ``no_sync()``.
FSDP2: ``fully_shard`` per layer and at the root, micro-batches under
``set_requires_gradient_sync(False)``.  Two param groups; fp32 and int8
states.  Each rank writes the mismatches it saw (none expected: bit for bit).
"""

from __future__ import annotations

import gc
import warnings

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
    "adam-lambda-int8": lambda groups: cf.Adam(
        groups, lr=cf.LambdaLR(0.01, [1.0, 0.5, 0.25], 3), amsgrad=True, state_dtype="int8"
    ),
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
    fsdp = not isinstance(ddp, DDP)
    for i, (x, y) in enumerate(micro):
        last = i == len(micro) - 1
        if fsdp:
            ddp.set_requires_gradient_sync(last)
            torch.nn.functional.mse_loss(ddp(x), y).backward()
        elif not last:
            with ddp.no_sync():
                torch.nn.functional.mse_loss(ddp(x), y).backward()
        else:
            torch.nn.functional.mse_loss(ddp(x), y).backward()
    if not in_backward:
        opt.step()


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _compare(ref, got, what, bad):
    (m1, o1), (m2, o2) = ref, got
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        if not torch.equal(_local(p1.detach()), _local(p2.detach())):
            bad.append(f"{what}: parameter {name}")
        s1, s2 = o1.state[p1], o2.state[p2]
        if s1.keys() != s2.keys() or not all(torch.equal(_local(s1[k]), _local(s2[k])) for k in s1):
            bad.append(f"{what}: states of {name}")
        if p2.grad is not None:
            bad.append(f"{what}: the gradient of {name} was not released")
    if o1.get_last_lr() != o2.get_last_lr() or int(o1.schedule_step) != int(o2.schedule_step):
        bad.append(f"{what}: LR / step {o1.get_last_lr()} {o2.get_last_lr()}")


def _wrap(model, how, world):
    if how == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model.conv, model.head[0], model.head[2]):
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    return DDP(model, bucket_cap_mb=0.0005, gradient_as_bucket_view=how == "bucket view")


def run(rank: int, world: int, init_file: str, out_dir: str, fsdp: bool = False):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    bad: list[str] = []
    hows = ("fsdp2",) if fsdp else ("copy", "bucket view")
    try:
        # the parameters of a DDP model passed instead of the model: warned (FSDP2's sharded ones: not)
        model = net() if not fsdp else net().to(memory_format=torch.contiguous_format)
        wrapped = _wrap(model, hows[0], world)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            cf.SGD(model.parameters(), lr=0.1).register_step_in_backward(list(model.parameters())).remove()
        warned = any("pass that model" in str(w.message) for w in seen)
        if warned == fsdp:
            bad.append(f"registering the parameters of a {hows[0]} model: warned {warned}")
        for name, make in OPTS.items():
            runs = []
            for in_backward, how in ((False, hows[0]), *((True, h) for h in hows)):
                model = net() if not fsdp else net().to(memory_format=torch.contiguous_format)
                wrapped = _wrap(model, how, world)
                opt = make(_groups(model))
                if in_backward:
                    opt.register_step_in_backward(wrapped)
                runs.append((wrapped, model, opt, in_backward))
            for step, micro in enumerate(_batches(rank)):
                for wrapped, _, opt, in_backward in runs:
                    _train_one_step(wrapped, opt, micro, in_backward)
                ref = (runs[0][1], runs[0][2])
                for (_, model, opt, _), how in zip(runs[1:], hows):
                    _compare(ref, (model, opt), f"{name}, {how}, step {step + 1}", bad)
            if int(runs[0][2].schedule_step) != STEPS:
                bad.append(f"{name}: the reference did not step")
        dist.barrier()
    finally:
        torch.save(bad, f"{out_dir}/bad-{rank}.pt")
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
