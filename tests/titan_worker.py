"""torchtitan's optimizer container, LR scheduler container and distributed
checkpoint with our AdamW plugged in, on a 2-process gloo group (spawned by
tests/test_trainers_llm.py; must live in an importable module).

The supported way to plug an optimizer class into torchtitan 0.3: subclass
``OptimizersContainer`` and extend ``_resolve_optimizer_factory`` (its
docstring: "Users who want to customize the optimizer behavior can inherit
from this class"); the param-group configs then name it.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist

import clr_fused as cf

STEPS, SAVE_AT, LR = 16, 7, 8e-4


class ClrFusedOptimizers:
    """Built lazily: importing torchtitan is slow, and only the workers need it."""

    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            from torchtitan.components.optimizer import OptimizersContainer

            class Container(OptimizersContainer):
                @staticmethod
                def _resolve_optimizer_factory(name):
                    if name == "clr_fused.AdamW":
                        return cf.AdamW
                    return OptimizersContainer._resolve_optimizer_factory(name)

            cls.cls = Container
        return cls.cls


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def _build(impl: str):
    from torchtitan.components.optimizer import LRSchedulersContainer, OptimizersContainer, ParamGroupConfig

    model = torch.nn.parallel.DistributedDataParallel(_model())
    name = "AdamW" if impl == "torch" else "clr_fused.AdamW"
    kwargs = {"lr": LR, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    if impl != "torch":
        kwargs["backend"] = "torch"  # the reference path: the same Python on any machine
    config = OptimizersContainer.Config(param_groups=[ParamGroupConfig(pattern=".*", optimizer_name=name, optimizer_kwargs=kwargs)],
                                        implementation="for-loop")  # fmt: skip
    container_cls = OptimizersContainer if impl == "torch" else ClrFusedOptimizers.get()
    optimizers = container_cls(config, model_parts=[model.module])
    schedulers = LRSchedulersContainer.Config(
        warmup_steps=3, decay_ratio=0.5, decay_type="cosine", min_lr_factor=0.1
    ).build(optimizers=optimizers, training_steps=STEPS)
    if impl == "table":
        # torchtitan's own lambda, sampled onto the device: its scheduler is no longer stepped
        lam = schedulers.schedulers[0].lr_lambdas[0]
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = cf.LambdaLR(LR, lam, STEPS + 1)
            opt.get_last_lr()
    return model, optimizers, schedulers


def _batches(rank: int, world: int):
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        x, y = torch.randn(8 * world, 6, generator=gen), torch.randn(8 * world, 3, generator=gen)
        out.append((x[rank::world], y[rank::world]))
    return out


def _steps(impl, model, optimizers, schedulers, batches, start, end, lrs):
    for i in range(start, end):
        x, y = batches[i]
        optimizers.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        lrs.append(float(optimizers.optimizers[0].param_groups[0]["lr"]))
        optimizers.step()
        if impl != "table":
            schedulers.step()


def _checkpoint_state(model, optimizers, schedulers):
    return {
        "model": model.module.state_dict(),
        "optimizer": optimizers.state_dict(),
        "lr_scheduler": schedulers.state_dict(),
    }


def _train(rank: int, world: int, impl: str, ckpt: str) -> dict:
    import torch.distributed.checkpoint as dcp

    batches = _batches(rank, world)
    model, optimizers, schedulers = _build(impl)
    lrs: list[float] = []
    _steps(impl, model, optimizers, schedulers, batches, 0, SAVE_AT, lrs)
    dcp.save(_checkpoint_state(model, optimizers, schedulers), checkpoint_id=ckpt)
    _steps(impl, model, optimizers, schedulers, batches, SAVE_AT, STEPS, lrs)

    # a new process's view: fresh model, containers; load the checkpoint; continue
    model2, optimizers2, schedulers2 = _build(impl)
    state = _checkpoint_state(model2, optimizers2, schedulers2)
    dcp.load(state, checkpoint_id=ckpt)
    model2.module.load_state_dict(state["model"])
    optimizers2.load_state_dict(state["optimizer"])
    schedulers2.load_state_dict(state["lr_scheduler"])
    resumed_lrs: list[float] = []
    _steps(impl, model2, optimizers2, schedulers2, batches, SAVE_AT, STEPS, resumed_lrs)
    return {
        "lrs": lrs,
        "resumed_lrs": resumed_lrs,
        "weights": [p.detach().clone() for p in model.parameters()],
        "resumed_weights": [p.detach().clone() for p in model2.parameters()],
        "type": type(optimizers.optimizers[0]).__name__ + "." + type(optimizers.optimizers[0]).__module__,
    }


def run(rank: int, world: int, init_file: str, impl: str, ckpt: str, out_path: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _train(rank, world, impl, ckpt)
        if rank == 0:
            torch.save(result, out_path)
        dist.barrier()  # both ranks leave together (see dist_worker.run)
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
