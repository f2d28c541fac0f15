"""The schedules large models train with, on the device: every
``get_schedule`` name against ``transformers.get_scheduler`` step for step,
through the optimizers on every backend; LambdaLR tables through state dicts
and copies; a nanoGPT loop's hand-written ``get_lr(it)`` as a table."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import clr_fused as cf

from .helpers import transformers_lr_trace

transformers = pytest.importorskip("transformers")

BASE, WARMUP, TOTAL = 3e-3, 7, 60
CASES = [
    ("linear", {}),
    ("cosine", {}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-5}),
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("inverse_sqrt", {}),
    ("cosine_with_min_lr", {"min_lr": 1e-5}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("warmup_stable_decay", {"num_decay_steps": 20, "decay_type": "1-sqrt", "min_lr_ratio": 0.05}),
]
CLOSED_FORMS = {"constant": "Constant", "linear": "WarmupLinear", "cosine": "WarmupCosine", "cosine_with_min_lr": "WarmupCosine",
                "cosine_warmup_with_min_lr": "WarmupCosine", "inverse_sqrt": "InverseSqrt"}  # fmt: skip


def _hf_lrs(name, kw, n):
    return transformers_lr_trace(name, BASE, WARMUP, TOTAL, kw, n)


def test_every_step_driven_name_is_covered():
    names = {t.value for t in transformers.SchedulerType}
    from clr_fused.hf_schedules import METRIC_DRIVEN, NAMES

    assert names == set(NAMES) | set(METRIC_DRIVEN)
    assert {c for c, _ in CASES} == set(NAMES)
    with pytest.raises(ValueError, match="known"):
        cf.get_schedule("cosine_typo", BASE, 1, 10)
    with pytest.raises(ValueError, match="metric"):
        cf.get_schedule("reduce_lr_on_plateau", BASE)


@pytest.mark.parametrize("name,kw", CASES, ids=[c for c, _ in CASES])
def test_applied_lr_is_float32_of_transformers_lr(name, kw, backend):
    """The LR each update applies (SGD, gradient of ones: the update is -lr)
    equals float32(transformers' LR) at every step, past num_training_steps
    too (the closed forms continue where transformers' formulas keep moving;
    the tables hold where its values hold)."""
    n = 2 * TOTAL + 15
    spec = cf.get_schedule(name, BASE, WARMUP, TOTAL, kw)
    assert type(spec).__name__ == CLOSED_FORMS.get(
        name, "WarmupStableDecay" if name == "warmup_stable_decay" else "LambdaLR"
    )
    ref = _hf_lrs(name, kw, n)
    p = torch.nn.Parameter(torch.zeros(4))
    opt = cf.SGD([p], lr=cf.get_schedule(name, BASE, WARMUP, TOTAL, kw), backend=backend)
    applied = []
    for _ in range(n):
        lr_before = opt.param_groups[0]["lr"]
        applied.append(torch.as_tensor(lr_before, dtype=torch.float32).clone())
        p.grad = torch.ones_like(p)
        with torch.no_grad():
            p.zero_()
        opt.step()
        assert torch.equal(-p.detach(), applied[-1].expand(4))  # 0 - lr * 1: the LR applied, exactly
    for k in range(n):
        assert applied[k].item() == torch.tensor(ref[k], dtype=torch.float32).item(), f"{name} step {k}"


def test_table_round_trips_through_state_dict_and_copies(backend):
    spec = cf.SequentialLR([cf.LinearLR(0.01, 0.1, 1.0, 3), cf.LambdaLR(0.01, lambda k: 0.97**k, 40)], [4])

    def run(opt, ps, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (3, 130)]
    opt = cf.AdamW(ps, lr=spec, backend=backend)
    run(opt, ps, 9, 1)
    sd = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(opt)
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    fresh = cf.AdamW(ps2, lr=0.5, backend=backend)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["schedule"] == spec
    run(opt, ps, 50, 2)  # past the table's end
    run(twin, twin.param_groups[0]["params"], 50, 2)
    run(fresh, ps2, 50, 2)
    for a, b, c in zip(ps, twin.param_groups[0]["params"], ps2):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert opt.get_last_lr() == twin.get_last_lr() == fresh.get_last_lr()
    assert opt.get_last_lr()[0] == pytest.approx(0.01 * 0.97**39, rel=1e-7)


def get_lr(it: int) -> float:
    """nanoGPT's get_lr."""
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 6e-4, 6e-5, 10, 80
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_nanogpt_loop_writes_and_its_table_agree(backend):
    """The loop that writes get_lr(it) into every group, and the same loop with
    cf.LambdaLR(base, lambda it: get_lr(it) / base, total) on the device: the
    same LRs (within an ulp: x / base * base is not always x) and weights."""
    total = 100

    def train(table: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        lr = cf.LambdaLR(6e-4, lambda it: get_lr(it) / 6e-4, total) if table else 6e-4
        opt = cf.AdamW(model.parameters(), lr=lr, weight_decay=0.1, backend=backend)
        g = torch.Generator().manual_seed(3)
        lrs = []
        for it in range(total + 5):
            if not table:
                for group in opt.param_groups:
                    group["lr"] = get_lr(it)
            lrs.append(float(opt.param_groups[0]["lr"]))
            x = torch.randn(16, 8, generator=g)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return lrs, [p.detach() for p in model.parameters()]

    lrs_w, ps_w = train(False)
    lrs_t, ps_t = train(True)
    for it, (a, b) in enumerate(zip(lrs_w, lrs_t)):
        a32, b32 = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
        assert abs(a32.view(torch.int32).item() - b32.view(torch.int32).item()) <= 1, it
    for a, b in zip(ps_w, ps_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lambda_table_arguments_are_checked():
    with pytest.raises(ValueError, match="total_steps"):
        cf.LambdaLR(0.1, lambda k: 1.0, 0)
    with pytest.raises(ValueError, match="total_steps"):
        cf.LambdaLR(0.1, lambda k: 1.0, 2**24 + 1)
    with pytest.raises(ValueError, match=r"lr_lambda\(3\)"):
        cf.LambdaLR(0.1, lambda k: 1.0 if k != 3 else float("nan"), 5)
    with pytest.raises(ValueError, match="lr_lambda"):
        cf.LambdaLR(0.1, [1.0, 0.5], 3)
    with pytest.raises(ValueError, match="warmup_type"):
        cf.WarmupStableDecay(0.1, 1, 1, 1, warmup_type="exp")
    spec = cf.LambdaLR(0.1, [1.0, 0.5, 0.25], 3)
    assert spec == cf.LambdaLR(0.1, lambda k: 0.5**k, 3) and "3 factors" in repr(spec)
