"""Large-model trainers' optimizer and schedule plumbing with our optimizers,
each run beside the same trainer code with the torch.optim optimizer it
replaces (same seeds): timm (its optimizer registry and a scheduler writing
floats), torchtune (``config.instantiate`` and its cosine-with-warm-up
``LambdaLR``), and each trainer's schedule moved onto the device as a
``cf.LambdaLR`` table.  (Hugging Face and Lightning: tests/test_trainers.py;
nanoGPT's loop: tests/test_llm_schedules.py.)"""

from __future__ import annotations

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext

BACKEND = "cpu" if _ext.load() is not None else "torch"
STEPS = 24


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.LayerNorm(24), torch.nn.GELU(), torch.nn.Linear(24, 5))


def _train(model, opt, per_step=None, steps=STEPS):
    """A plain loop; ``per_step(it)`` runs after each optimizer step (a scheduler)."""
    g = torch.Generator().manual_seed(7)
    lrs = []
    for it in range(steps):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        lrs.append([float(group["lr"]) for group in opt.param_groups])
        opt.step()
        if per_step is not None:
            per_step(it)
    return lrs, [p.detach().clone() for p in model.parameters()]


def _same_weights(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _f32(v):
    return torch.tensor(v, dtype=torch.float32).item()


# ---------------------------------------------------------------- timm
def test_timm_registry_and_its_scheduler(monkeypatch):
    """Our AdamW registered in timm's optimizer registry and built by
    create_optimizer_v2 (timm's weight-decay param groups), driven by timm's
    CosineLRScheduler.step_update writing floats into the groups; then the same
    run with timm's schedule replaced by a device table of timm's own values."""
    timm_optim = pytest.importorskip("timm.optim")
    from timm.optim._optim_factory import OptimInfo, default_registry
    from timm.scheduler import CosineLRScheduler

    # (timm reads "a_b" as prefix a + optimizer b: the name has no underscore)
    if "cfadamw" not in default_registry.list_optimizers():
        default_registry.register(OptimInfo(name="cfadamw", opt_class=cf.AdamW, has_betas=True,
                                            description="clr_fused.AdamW"))  # fmt: skip

    def run(name, device_table=False):
        model = _model()
        opt = timm_optim.create_optimizer_v2(model, opt=name, lr=2e-3, weight_decay=0.05)
        sched = CosineLRScheduler(opt, t_initial=STEPS, warmup_t=4, warmup_lr_init=1e-4, lr_min=1e-5, t_in_epochs=False)
        if device_table:  # timm's values, sampled once onto the device; no host scheduler in the loop
            for gi, group in enumerate(opt.param_groups):
                group["lr"] = cf.LambdaLR(2e-3, lambda t, gi=gi: sched._get_lr(t)[gi] / 2e-3, STEPS)
            opt.get_last_lr()  # installs the specs now (else at the next step): group["lr"] reads as the live LR
            return opt, _train(model, opt)
        return opt, _train(model, opt, lambda it: sched.step_update(it + 1))

    opt, (lrs, weights) = run("cfadamw")
    assert isinstance(opt, cf.AdamW) and len(opt.param_groups) == 2  # timm's decay / no-decay groups
    ref_opt, (ref_lrs, ref_weights) = run("adamw")
    assert isinstance(ref_opt, torch.optim.AdamW)
    assert lrs == ref_lrs  # the floats timm wrote, read back as given
    _same_weights(weights, ref_weights)
    _, (dev_lrs, dev_weights) = run("cfadamw", device_table=True)
    assert [[_f32(v) for v in row] for row in dev_lrs] == [[_f32(v) for v in row] for row in ref_lrs]
    _same_weights(dev_weights, ref_weights)


# ---------------------------------------------------------------- torchtune
def _torchtune():
    pytest.importorskip("torchao")
    try:
        from torchtune import config
        from torchtune.training.lr_schedulers import get_cosine_schedule_with_warmup
    except ImportError as e:  # torchtune pins a torchao release; say which import broke
        pytest.fail(f"torchtune does not import here: {e}")
    return config, get_cosine_schedule_with_warmup


def test_torchtune_instantiate_and_its_cosine_with_warmup():
    """torchtune's config.instantiate builds our AdamW from a recipe's optimizer
    section; its get_cosine_schedule_with_warmup (a torch LambdaLR) drives it as
    it drives torch's AdamW; then the same lambda as a device table."""
    from omegaconf import OmegaConf

    config, cosine_with_warmup = _torchtune()

    def run(component, device_table=False):
        model = _model(1)
        cfg = OmegaConf.create({"_component_": component, "lr": 3e-3, "weight_decay": 0.01, "fused": True})
        opt = config.instantiate(cfg, model.parameters())
        sched = cosine_with_warmup(opt, num_warmup_steps=5, num_training_steps=STEPS)
        if device_table:
            lam = sched.lr_lambdas[0]
            opt = cf.AdamW(model.parameters(), lr=cf.LambdaLR(3e-3, lam, STEPS), weight_decay=0.01, backend=BACKEND)
            return opt, _train(model, opt)
        return opt, _train(model, opt, lambda it: sched.step())

    opt, (lrs, weights) = run("clr_fused.AdamW")
    assert isinstance(opt, cf.AdamW)
    ref_opt, (ref_lrs, ref_weights) = run("torch.optim.AdamW")
    assert isinstance(ref_opt, torch.optim.AdamW)
    assert lrs == ref_lrs
    _same_weights(weights, ref_weights)
    _, (dev_lrs, dev_weights) = run("clr_fused.AdamW", device_table=True)
    assert [[_f32(v) for v in row] for row in dev_lrs] == [[_f32(v) for v in row] for row in ref_lrs]
    _same_weights(dev_weights, ref_weights)


# ---------------------------------------------------------------- torchtitan
def _titan(impl, tmp_path):
    import torch.multiprocessing as mp

    from . import titan_worker

    out = tmp_path / f"{impl}.pt"
    mp.spawn(titan_worker.run, args=(2, str(tmp_path / f"init-{impl}"), impl, str(tmp_path / f"dcp-{impl}"), str(out)),
             nprocs=2, join=True)  # fmt: skip
    return torch.load(out)


def test_torchtitan_containers_and_distributed_checkpoint(tmp_path):
    """torchtitan's OptimizersContainer (subclassed to name our AdamW),
    LRSchedulersContainer (its warm-up / stable / cosine LambdaLR) and a
    torch.distributed.checkpoint save mid-run, on 2 gloo ranks under DDP:
    the same LRs and weights as torchtitan with torch's AdamW; the resumed
    run continues the uninterrupted one bit for bit; and the same with
    torchtitan's lambda as a device table (no scheduler stepped)."""
    pytest.importorskip("torchtitan")
    ref = _titan("torch", tmp_path)
    ours = _titan("ours", tmp_path)
    table = _titan("table", tmp_path)
    assert ours["type"] == "AdamW.clr_fused.optim.adam" and ref["type"] == "AdamW.torch.optim.adamw"
    for run in (ref, ours, table):
        assert run["lrs"][7:] == run["resumed_lrs"]
        for a, b in zip(run["weights"], run["resumed_weights"]):
            assert torch.equal(a, b)
    assert ours["lrs"] == ref["lrs"]  # the floats torchtitan's LambdaLR wrote
    assert [_f32(v) for v in table["lrs"]] == [_f32(v) for v in ref["lrs"]]
    _same_weights(ours["weights"], ref["weights"])
    _same_weights(table["weights"], ref["weights"])
