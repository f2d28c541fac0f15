"""The paper's experiments in miniature, on scikit-learn's bundled digits.

``clr-fused range-test --demo`` runs the LR range test; ``clr-fused demo``
compares a fixed LR, exponential decay and CLR triangular2 under equal
iteration budgets, over several seeds.  No download: ``load_digits`` ships
with scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import schedules as S
from ..optim import SGD
from ..range_test import RangeTestResult, range_test


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def batches(self, batch_size: int, seed: int):
        """One epoch of shuffled mini-batches."""
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.x_train), generator=gen)
        return [(self.x_train[i], self.y_train[i]) for i in order.split(batch_size)]


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction correct, as a device tensor (no host read)."""
    return (model(x).argmax(dim=1) == y).float().mean()


def run_range_test(data: Digits, *, num_steps: int = 100, seed: int = 0, progress: bool = False,
                   make_opt=None, start_lr: float = 1e-4, end_lr: float = 10.0) -> RangeTestResult:  # fmt: skip
    """The range test of the digits MLP (``make_opt(params)``: the optimizer; SGD-momentum by default)."""
    model = make_model(seed)
    opt = (make_opt or (lambda ps: SGD(ps, lr=0.01, momentum=0.9)))(model.parameters())
    batches = data.batches(64, seed)
    return range_test(
        model,
        torch.nn.functional.cross_entropy,
        batches,
        opt,
        start_lr=start_lr,
        end_lr=end_lr,
        num_steps=num_steps,
        eval_fn=lambda m: accuracy(m, data.x_test, data.y_test),
        metric_name="held-out accuracy",
        progress=progress,
    )


def train(data: Digits, lr, *, iterations: int, seed: int = 0, eval_every: int = 20, momentum: float = 0.9):
    """Train the digits network; returns held-out accuracy every ``eval_every`` iterations."""
    return train_curve(make_model(seed), lambda e: data.batches(64, e), lambda m: accuracy(m, data.x_test, data.y_test),
                       lr, iterations=iterations, seed=seed, eval_every=eval_every, momentum=momentum)  # fmt: skip


def train_curve(model, epoch_batches, evaluate, lr, *, iterations: int, seed: int, eval_every: int, momentum: float = 0.9,
                opt_kw: dict | None = None, opt_cls=None):  # fmt: skip
    """SGD-momentum training (``opt_cls``: another optimizer class, without
    the momentum) for ``iterations`` steps over ``epoch_batches(e)`` (one
    shuffled epoch per call); ``evaluate(model)`` (a device scalar) every
    ``eval_every`` steps, read back once at the end.  Shared by the demos
    (``opt_kw``: more optimizer keywords, e.g. ``state_dtype``)."""
    if opt_cls is None:
        opt = SGD(model.parameters(), lr=lr, momentum=momentum, **(opt_kw or {}))
    else:
        opt = opt_cls(model.parameters(), lr=lr, **(opt_kw or {}))
    curve = []
    it = 0
    epoch = 0
    while it < iterations:
        for x, y in epoch_batches(seed * 1000 + epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            it += 1
            if it % eval_every == 0:
                curve.append(evaluate(model))
            if it >= iterations:
                break
        epoch += 1
    return torch.stack(curve).tolist()


def iterations_per_epoch(data: Digits, batch_size: int = 64) -> int:
    return math.ceil(len(data.x_train) / batch_size)


def compare_policies(
    data: Digits, *, iterations: int = 1200, seeds=(0, 1, 2), eval_every: int = 20, target: float = 0.95
):
    """The paper's comparison: fixed LR, exponential decay and CLR triangular2."""
    rt = run_range_test(data, seed=0)
    s = rt.suggest()
    epoch = iterations_per_epoch(data)
    policies = {
        "fixed": s.max_lr / 2,
        "exp_decay": S.ExponentialLR(s.max_lr, 0.1 ** (1.0 / iterations)),
        "clr_triangular2": S.CyclicLR(
            s.base_lr, s.max_lr, step_size_up=4 * epoch, mode="triangular2", cycle_momentum=False
        ),
    }
    from tqdm.auto import tqdm

    curves = {}
    with tqdm(total=len(policies) * len(seeds), desc="digits policies", unit="run") as bar:
        for name, lr in policies.items():
            curves[name] = []
            for sd in seeds:
                curves[name].append(train(data, lr, iterations=iterations, seed=sd, eval_every=eval_every))
                bar.update(1)
    table = []
    for name, runs in curves.items():
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(len(runs[0]))]
        reach = next(((i + 1) * eval_every for i, a in enumerate(mean) if a >= target), None)
        table.append({"policy": name, "final_accuracy": mean[-1], f"iterations_to_{target:.0%}": reach})
    return rt, policies, curves, table


def plot_curves(curves, path, *, eval_every: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(len(runs[0]))]
        ax.plot([(i + 1) * eval_every for i in range(len(mean))], mean, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy (mean over seeds)")
    ax.set_ylim(0.8, 1.0)
    ax.legend()
    ax.set_title("digits: fixed LR vs exponential decay vs CLR triangular2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_policies(
    curves, policies, path, *, eval_every: int, iterations: int, title: str, ylabel: str, ylim=None
) -> None:
    """Seed-mean curve per policy (``curves``: policy -> per-seed lists, one
    value every ``eval_every`` iterations), each policy's LR underneath."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axlr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    xs = [(i + 1) * eval_every for i in range(len(next(iter(curves.values()))[0]))]
    grid = range(0, iterations, max(1, iterations // 300))
    for name, runs in curves.items():
        mean = [statistics.fmean(r[i] for r in runs) for i in range(len(xs))]
        (line,) = ax.plot(xs, mean, label=name)
        lr = policies[name]
        axlr.plot(
            list(grid), [lr(k) if isinstance(lr, S.Schedule) else float(lr) for k in grid], color=line.get_color()
        )
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title)
    axlr.set_yscale("log")
    axlr.set_ylabel("learning rate")
    axlr.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    """`clr-fused demo` (digits): fixed LR, exponential decay and CLR after a range test."""
    import json
    import os

    args.iterations = args.iterations or 1200
    args.seeds = args.seeds or 3
    os.makedirs(args.out, exist_ok=True)
    data = load_digits_data()
    seeds = tuple(range(args.seeds))
    rt, policies, curves, table = compare_policies(data, iterations=args.iterations, seeds=seeds, target=args.target)
    s = rt.suggest()
    print(
        f"range test: base_lr={s.base_lr:.4g} max_lr={s.max_lr:.4g}; {args.iterations} iterations, seeds {list(seeds)}"
    )
    key = f"iterations_to_{args.target:.0%}"
    print(f"| policy | final accuracy | {key} |")
    print("|---|---|---|")
    for row in table:
        print(
            f"| {row['policy']} | {row['final_accuracy']:.4f} | {row[key] if row[key] is not None else 'not reached'} |"
        )
    plot_curves(curves, os.path.join(args.out, "demo_accuracy.png"), eval_every=20)
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(
            {"suggestion": s.__dict__, "table": table, "policies": {k: repr(v) for k, v in policies.items()}},
            f,
            indent=2,
        )
    print(f"wrote {args.out}/demo_accuracy.png and {args.out}/demo.json")
    return 0


def range_test_main(args) -> int:
    """`clr-fused range-test --demo`: the range test on the digits MLP."""
    import os

    os.makedirs(args.out, exist_ok=True)
    data = load_digits_data()
    result = run_range_test(data, num_steps=args.steps, progress=True)
    s = result.suggest()
    print(f"range test on digits: {len(result.lrs)} steps, stopped early: {result.stopped_early}")
    print(f"suggested base_lr={s.base_lr:.4g} max_lr={s.max_lr:.4g} ({s.reason})")
    png, csv_path = os.path.join(args.out, "range_test.png"), os.path.join(args.out, "range_test.csv")
    result.plot(png, title="LR range test, digits MLP, SGD momentum 0.9")
    result.to_csv(csv_path)
    print(f"wrote {png} and {csv_path}")
    return 0
