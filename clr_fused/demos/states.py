"""``clr-fused demo --dataset states``: what low-precision optimizer state costs in quality.

The same training runs (same seeds, same data order, same schedule) with
fp32 states, bf16 states, int8 block-quantized states, and bf16 parameters
without an fp32 master copy (rounded to nearest, stochastically, or with a
Kahan compensation buffer, ``kahan_sum``; with bf16 or int8 states), on
three tasks of the other demos:

- digits (scikit-learn's bundled set): the MLP, SGD-momentum, CLR
  triangular2 between the range test's bounds (``demo.py``);
- MNIST-1D: the 1-D CNN, SGD-momentum, CLR triangular2 from its range test
  (``demos/mnist1d.py``; needs the ``mnist1d`` package, skipped without it);
- the character-level GPT on the standard library's sources: AdamW, warm-up
  + cosine (``demos/charlm.py``).

``optimizer="lion"`` (``--optimizer lion``) trains every task with
``cf.Lion`` instead: on digits and MNIST-1D with the CLR bounds of Lion's own
range test, on the char-LM with AdamW's schedule at a third of its peak LR
and three times its weight decay (Chen et al.'s advice for moving from AdamW).

Reports, per task and variant, the final held-out accuracy (loss for the
LM) as mean and standard deviation over the seeds, and the curves.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import schedules as S
from ..hf_schedules import get_schedule
from ..optim import AdamW
from ..optim.lion import Lion

#: variant -> (parameter dtype, optimizer keywords)
VARIANTS: dict[str, tuple[torch.dtype, dict[str, Any]]] = {
    "fp32": (torch.float32, {}),
    "bf16 states": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "int8 states": (torch.float32, dict(state_dtype="int8")),
    "bf16 params, nearest": (torch.bfloat16, {}),
    "bf16 params + SR": (torch.bfloat16, dict(stochastic_rounding=True)),
    "bf16 params + SR, int8 states": (torch.bfloat16, dict(stochastic_rounding=True, state_dtype="int8")),
    "bf16 params + Kahan": (torch.bfloat16, dict(kahan_sum=True)),
    "bf16 params + Kahan, int8 states": (torch.bfloat16, dict(kahan_sum=True, state_dtype="int8")),
}

#: --variants: every variant, or the bf16-parameter ones beside fp32 (how bf16 weights are kept)
VARIANT_SETS: dict[str, tuple[str, ...]] = {
    "all": tuple(VARIANTS),
    "bf16-params": ("fp32", "bf16 params, nearest", "bf16 params + SR", "bf16 params + Kahan",
                    "bf16 params + Kahan, int8 states"),
}  # fmt: skip

#: --optimizer: "default" (SGD-momentum on digits / MNIST-1D, AdamW on the char-LM) or "lion" (cf.Lion everywhere)
OPTIMIZERS = ("default", "lion")
LION_BETAS = (0.9, 0.99)
# Lion's range test: its updates are sign vectors (size lr per element), so its useful LRs sit
# far below SGD's; the ramp covers 1e-6 .. 1
LION_RANGE = dict(start_lr=1e-6, end_lr=1.0)


def _lion(params, lr=1e-4, **kw):
    return Lion(params, lr=lr, betas=LION_BETAS, **kw)


def _range_test_kw(optimizer: str) -> dict[str, Any]:
    """The demos' run_range_test keywords for ``optimizer`` (none: their SGD-momentum test)."""
    return dict(make_opt=_lion, **LION_RANGE) if optimizer == "lion" else {}


class InDtype(nn.Module):
    """``model`` with its parameters in ``dtype``: inputs cast in, float
    outputs cast back to float32 (the loss in float32, as autocast does)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype) if x.is_floating_point() else x)
        return out.float()


@dataclass
class Task:
    name: str
    metric: str  # "accuracy" (higher is better) or "loss"
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    eval_every: int = 1
    setup: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for variant, runs in self.curves.items():
            finals = [r[-1] for r in runs]
            rows.append(dict(task=self.name, variant=variant, metric=self.metric, mean=statistics.fmean(finals),
                             std=statistics.stdev(finals) if len(finals) > 1 else 0.0, finals=finals))  # fmt: skip
        return rows


def _sgd_task(name: str, make_model: Callable[[int], nn.Module], epoch_batches, evaluate, lr, *, iterations: int,
              seeds, eval_every: int, bar, optimizer: str = "default", variants=VARIANTS) -> Task:  # fmt: skip
    from .digits import train_curve

    task = Task(name, "accuracy", eval_every=eval_every)
    opt_cls = _lion if optimizer == "lion" else None
    for variant, (dtype, kw) in variants.items():
        task.curves[variant] = []
        for sd in seeds:
            model = InDtype(make_model(sd), dtype)
            task.curves[variant].append(train_curve(model, epoch_batches, evaluate, lr, iterations=iterations, seed=sd,
                                                    eval_every=eval_every, opt_kw=kw, opt_cls=opt_cls))  # fmt: skip
            bar.update(1)
    return task


def _optimizer_name(optimizer: str) -> str:
    return f"Lion {LION_BETAS[0]}/{LION_BETAS[1]}" if optimizer == "lion" else "SGD momentum 0.9"


def digits_task(*, iterations: int, seeds, bar, optimizer: str = "default", variants=VARIANTS) -> Task:
    from . import digits as demo

    data = demo.load_digits_data()
    s = demo.run_range_test(data, seed=0, **_range_test_kw(optimizer)).suggest()
    lr = S.CyclicLR(s.base_lr, s.max_lr, step_size_up=4 * demo.iterations_per_epoch(data), mode="triangular2",
                    cycle_momentum=False)  # fmt: skip
    task = _sgd_task("digits", demo.make_model, lambda e: data.batches(64, e),
                     lambda m: demo.accuracy(m, data.x_test, data.y_test), lr, iterations=iterations, seeds=seeds,
                     eval_every=max(1, iterations // 30), bar=bar, optimizer=optimizer, variants=variants)  # fmt: skip
    task.setup = dict(optimizer=_optimizer_name(optimizer), schedule=f"CLR triangular2 {s.base_lr:.3g}-{s.max_lr:.3g}",
                      iterations=iterations)  # fmt: skip
    return task


def mnist1d_task(*, iterations: int, seeds, bar, optimizer: str = "default", variants=VARIANTS) -> Task:
    from . import mnist1d as m

    data = m.load_mnist1d()
    rt = m.run_range_test(data, num_steps=200, **_range_test_kw(optimizer))
    lr = S.CyclicLR.from_range_test(rt, iters_per_epoch=m.iters_per_epoch(), mode="triangular2", cycle_momentum=False)
    task = _sgd_task("mnist1d", m.make_model, data.batches, lambda mod: m.accuracy(mod, data.x_test, data.y_test), lr,
                     iterations=iterations, seeds=seeds, eval_every=max(1, iterations // 30), bar=bar,
                     optimizer=optimizer, variants=variants)  # fmt: skip
    s = rt.suggest()
    task.setup = dict(optimizer=_optimizer_name(optimizer), schedule=f"CLR triangular2 {s.base_lr:.3g}-{s.max_lr:.3g}",
                      iterations=iterations)  # fmt: skip
    return task


def charlm_task(*, iterations: int, seeds, bar, peak_lr: float = 1e-3, max_bytes: int | None = None,
                optimizer: str = "default", variants=VARIANTS) -> Task:  # fmt: skip
    from . import charlm as c

    corpus = c.load_stdlib(max_bytes)
    gen = torch.Generator().manual_seed(123)
    val = [corpus.batch(gen, "val") for _ in range(8)]
    eval_every = max(1, iterations // 20)
    task = Task("charlm", "loss", eval_every=eval_every)
    lion = optimizer == "lion"
    if lion:  # Chen et al.: from AdamW, a 3-10x smaller LR and a 3-10x larger decoupled weight decay
        peak_lr = peak_lr / 3
    for variant, (dtype, kw) in variants.items():
        task.curves[variant] = []
        for sd in seeds:
            model = InDtype(c.make_model(sd), dtype)
            sched = get_schedule("cosine", peak_lr, num_warmup_steps=iterations // 10, num_training_steps=iterations)
            if lion:
                opt = Lion(model.parameters(), lr=sched, betas=LION_BETAS, weight_decay=0.3, max_grad_norm=1.0, **kw)
            else:
                opt = AdamW(model.parameters(), lr=sched, betas=(0.9, 0.95), weight_decay=0.1, max_grad_norm=1.0, **kw)
            g = torch.Generator().manual_seed(sd)
            curve = []
            for it in range(1, iterations + 1):
                x, y = corpus.batch(g)
                opt.zero_grad()
                c.lm_loss(model(x), y).backward()
                opt.step()
                if it % eval_every == 0:
                    curve.append(c.val_loss(model, val))
            task.curves[variant].append(torch.stack(curve).tolist())
            bar.update(1)
    task.setup = dict(
        optimizer=f"Lion {LION_BETAS[0]}/{LION_BETAS[1]}, wd 0.3, clip 1.0"
        if lion
        else "AdamW 0.9/0.95, wd 0.1, clip 1.0",
        schedule=f"warm-up + cosine, peak {peak_lr:g}",
        iterations=iterations,
    )
    return task


def run(*, iterations: dict[str, int], seeds=(0, 1, 2), tasks=("digits", "mnist1d", "charlm"), progress: bool = True,
        charlm_bytes: int | None = None, optimizer: str = "default",
        variant_set: str = "all") -> tuple[list[Task], dict[str, str]]:  # fmt: skip
    """The tasks that can run here (each with the variants of ``variant_set``), and why the others did not."""
    from tqdm import tqdm

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if variant_set not in VARIANT_SETS:
        raise ValueError(f"variant_set must be one of {tuple(VARIANT_SETS)}, got {variant_set!r}")
    variants = {k: VARIANTS[k] for k in VARIANT_SETS[variant_set]}

    skipped = {}
    if "mnist1d" in tasks and importlib.util.find_spec("mnist1d") is None:
        skipped["mnist1d"] = "the mnist1d package is not installed (pip install -e '.[demo]')"
        tasks = tuple(t for t in tasks if t != "mnist1d")
    out = []
    with tqdm(
        total=len(tasks) * len(variants) * len(seeds), desc="states demo", unit="run", disable=not progress
    ) as bar:
        for t in tasks:
            if t == "digits":
                out.append(digits_task(iterations=iterations["digits"], seeds=seeds, bar=bar, optimizer=optimizer,
                                       variants=variants))  # fmt: skip
            elif t == "mnist1d":
                out.append(mnist1d_task(iterations=iterations["mnist1d"], seeds=seeds, bar=bar, optimizer=optimizer,
                                        variants=variants))  # fmt: skip
            elif t == "charlm":
                out.append(charlm_task(iterations=iterations["charlm"], seeds=seeds, bar=bar, max_bytes=charlm_bytes,
                                       optimizer=optimizer, variants=variants))  # fmt: skip
    return out, skipped


def plot(tasks: list[Task], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, runs in task.curves.items():
            n = len(runs[0])
            mean = [statistics.fmean(r[i] for r in runs) for i in range(n)]
            xs = [(i + 1) * task.eval_every for i in range(n)]
            ax.plot(xs, mean, label=variant, linestyle="--" if "nearest" in variant else "-")
        ax.set_title(f"{task.name}: {task.setup.get('schedule', '')}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("held-out accuracy" if task.metric == "accuracy" else "validation loss")
        if task.metric == "accuracy":
            lo = min(min(r[len(r) // 3 :]) for runs in task.curves.values() for r in runs)
            ax.set_ylim(max(0.0, lo - 0.02), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    """`clr-fused demo --dataset states`: the report of :func:`run`."""
    import datetime
    import json
    import os
    import platform
    import time

    import torch

    # the char-LM with bf16 parameters is ~8x slower on a CPU without bf16 matmul units: fewer iterations there
    its = {"digits": 600, "mnist1d": 1500, "charlm": 200}
    if args.iterations:
        its = {k: args.iterations for k in its}
    seeds = tuple(range(args.seeds or 3))
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    optimizer = getattr(args, "optimizer", None) or "default"
    names = tuple(getattr(args, "tasks", None) or ("digits", "mnist1d", "charlm"))
    variant_set = getattr(args, "variants", None) or "all"
    tasks, skipped = run(iterations=its, seeds=seeds, tasks=names, optimizer=optimizer, variant_set=variant_set)
    stem = "states" if optimizer == "default" else f"states-{optimizer}"
    if variant_set != "all":
        stem += f"-{variant_set}"
    took = time.perf_counter() - t0
    print(f"{len(seeds)} seeds, {took:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    rows = [r for t in tasks for r in t.table()]
    print("| task | variant | final (mean ± std over seeds) |")
    print("|---|---|---|")
    for r in rows:
        unit = "accuracy" if r["metric"] == "accuracy" else "validation loss"
        print(f"| {r['task']} | {r['variant']} | {unit} {r['mean']:.4f} ± {r['std']:.4f} |")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    png = os.path.join(args.out, f"{stem}.png")
    plot(tasks, png)
    out = {
        "date": datetime.date.today().isoformat(), "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "seconds": took, "seeds": list(seeds), "skipped": skipped, "table": rows,
        "tasks": [{"name": t.name, "metric": t.metric, "setup": t.setup, "eval_every": t.eval_every, "curves": t.curves} for t in tasks],
    }  # fmt: skip
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {png} and {args.out}/{stem}.json")
    return 0
