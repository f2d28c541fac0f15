"""Workers for the 2-process gloo tests (spawned; must live in an importable module)."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

import clr_fused as cf


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def batches(rank: int, world: int, steps: int):
    """Per-rank batches; rank r takes rows r::world of one global batch."""
    gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        x, y = torch.randn(8 * world, 6, generator=gen), torch.randn(8 * world, 3, generator=gen)
        out.append((x[rank::world], y[rank::world]))
    return out


def make_opt(params, **kw):
    return cf.AdamW(params, lr=cf.CyclicLR(1e-3, 1e-2, 3, 2), backend="torch", weight_decay=0.01, **kw)


def single_process(steps: int, world: int):
    m = model()
    opt = make_opt(m.parameters())
    per_rank = [batches(r, world, steps) for r in range(world)]
    for i in range(steps):
        x = torch.cat([per_rank[r][i][0] for r in range(world)])
        y = torch.cat([per_rank[r][i][1] for r in range(world)])
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def run(rank: int, world: int, init_file: str, mode: str, steps: int, out_path: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _train_and_save(rank, world, mode, steps, out_path)
        # Both ranks leave together: a rank that tears gloo down while its peer is still
        # inside a collective (DCP's save/load plans) can abort the peer (seen once in CI:
        # "terminate called without an active exception", SIGABRT).
        dist.barrier()
    finally:
        # The FSDP modules, mesh and optimizer hold the process group; drop them and collect
        # now, so its gloo threads are joined here and not during interpreter teardown.
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def _train_and_save(rank: int, world: int, mode: str, steps: int, out_path: str):
    m = model()
    # "fsdp2-int8": int8 states, blocks per local shard (each rank's own scales);
    # "fsdp2-kahan": bf16 parameters with kahan_sum's compensation buffers (DTensors, like the parameters)
    kw = dict(state_dtype="int8") if mode.endswith("int8") else {}
    dtype = torch.bfloat16 if mode.endswith("kahan") else torch.float32
    if mode.endswith("kahan"):
        m = m.to(dtype)
        kw = dict(kahan_sum=True)
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(m)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(m, mesh=mesh)
    opt = make_opt(wrapped.parameters(), **kw)
    for x, y in batches(rank, world, steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(wrapped(x.to(dtype)).float(), y).backward()
        opt.step()
    state = {}
    for k, v in m.state_dict().items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        state[k] = full.detach().clone().float()
    if mode.startswith("fsdp2"):
        # checkpoint through torch.distributed.checkpoint, then load back
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        osd = get_optimizer_state_dict(m, opt)
        ckpt = os.path.join(os.path.dirname(out_path), "dcp")
        dcp.save({"optim": osd}, checkpoint_id=ckpt)
        opt2 = make_opt(wrapped.parameters(), **kw)
        m.zero_grad(set_to_none=True)  # lets DCP initialise opt2's state
        osd2 = get_optimizer_state_dict(m, opt2)
        dcp.load({"optim": osd2}, checkpoint_id=ckpt)
        set_optimizer_state_dict(m, opt2, osd2)
        same = True
        for p0 in m.parameters():  # every state of every parameter, on every rank's shard
            st1, st2 = opt.state[p0], opt2.state[p0]
            same = same and set(st1) == set(st2) and all(
                torch.equal(st1[k].to_local() if hasattr(st1[k], "to_local") else st1[k],
                            st2[k].to_local() if hasattr(st2[k], "to_local") else st2[k]) for k in st1)  # fmt: skip
        if mode.endswith("kahan"):  # the buffers are there, as DTensor states, and hold something
            same = same and all(
                hasattr(opt.state[p]["kahan_comp"], "to_local") and bool(opt.state[p]["kahan_comp"].to_local().ne(0).any())
                for p in m.parameters()
            )  # fmt: skip
        flags = torch.tensor([float(same)])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        same = bool(flags.item())
        same = same and int(opt2.schedule_step) == int(opt.schedule_step) == steps
        same = same and opt2.get_last_lr() == opt.get_last_lr()
        state["__dcp_roundtrip_ok"] = torch.tensor(float(same))
    if rank == 0:
        torch.save(state, out_path)
