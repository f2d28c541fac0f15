"""The LR range test of Smith's CLR paper, driven by a device-side LR ramp.

Run a short training while the LR rises (exponentially or linearly) from
``start_lr`` to ``end_lr``; record the loss (and a metric such as held-out
accuracy) per step into device buffers; read them back only every
``CHECK_EVERY`` steps for the divergence check and at the end.  The model and
optimizer are restored afterwards, also when the run fails.
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .optim.base import FusedOptimizer
from .schedules import ExponentialLR, LinearLR, Schedule

CHECK_EVERY = 10  # steps between host reads of the loss buffer


@dataclass(frozen=True)
class Suggestion:
    base_lr: float
    max_lr: float
    reason: str


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    metrics: list[float] | None = None
    stopped_early: bool = False
    metric_name: str = "metric"

    def suggest(self) -> Suggestion:
        """CLR bounds from the curves.

        max_lr: with a metric, where the metric stops improving, as the paper
        reads its accuracy plot ("when the accuracy slows, becomes ragged, or
        starts to fall"): the first LR where a centred 5-step average of the
        metric has made 90% of its total rise; the raw peak sits at the edge
        of divergence.  Without a metric, the LR where the smoothed loss falls
        fastest against log(LR) (before its minimum).
        base_lr: the LR where the smoothed loss starts to fall (first drop of
        5% of the total fall) if that is within 10x below max_lr; otherwise
        max_lr / 4, the paper's rule of thumb.
        """
        n = len(self.lrs)
        if n < 3:
            raise ValueError(f"need at least 3 recorded steps to suggest bounds, got {n}")
        sm = [s for s in self.smoothed_losses]
        if not sm[0] - min(sm) > 0.01 * abs(sm[0]):
            # Only rose (or stayed flat): every point of such a curve is a guess.
            raise ValueError(
                f"the loss never fell during the range test (smoothed {sm[0]:.4g} at lr={self.lrs[0]:.3g} -> "
                f"{sm[-1]:.4g} at lr={self.lrs[-1]:.3g}): no usable CLR bounds; start lower (start_lr), "
                "take more steps, or check the model and data"
            )
        log_lr = [math.log10(lr) for lr in self.lrs]
        skip = max(1, n // 10)
        i_min = min(range(n), key=lambda i: sm[i])
        if self.metrics is not None and any(math.isfinite(m) for m in self.metrics):
            avg = _centred_average([m if math.isfinite(m) else -math.inf for m in self.metrics], 2)
            peak = max(avg)
            target = avg[0] + 0.9 * (peak - avg[0])
            i_max = next(i for i in range(n) if avg[i] >= target)
            how = f"metric made 90% of its rise (to {peak:.3g}) at lr={self.lrs[i_max]:.3g}"
        else:
            hi = max(i_min, skip + 1)
            grads = [(sm[i + 1] - sm[i - 1]) / (log_lr[i + 1] - log_lr[i - 1]) for i in range(1, n - 1)]
            candidates = range(max(1, skip), min(hi, n - 2) + 1)
            i_max = min(candidates, key=lambda i: grads[i - 1])
            how = f"smoothed loss falls fastest at lr={self.lrs[i_max]:.3g}"
        max_lr = self.lrs[i_max]
        fall = sm[0] - sm[i_min]
        i_start = next((i for i in range(n) if sm[i] < sm[0] - 0.05 * fall), None) if fall > 0 else None
        if i_start is not None and max_lr / 10 <= self.lrs[i_start] < max_lr:
            base_lr = self.lrs[i_start]
            why_base = f"loss starts to fall at lr={base_lr:.3g}"
        else:
            base_lr = max_lr / 4
            why_base = "base_lr = max_lr / 4 (the paper's rule of thumb)"
        return Suggestion(base_lr=base_lr, max_lr=max_lr, reason=f"{how}; {why_base}")

    def to_csv(self, path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["lr", "loss", "smoothed_loss", "metric"])
            for i, lr in enumerate(self.lrs):
                metric = "" if self.metrics is None else self.metrics[i]
                w.writerow([lr, self.losses[i], self.smoothed_losses[i], metric])

    def plot(self, path, *, title: str = "LR range test") -> None:
        """Loss (and metric) against LR on a log axis, suggested bounds marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(self.lrs, self.losses, color="tab:blue", alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed_losses, color="tab:blue", label="smoothed loss")
        ax.set_xscale("log")
        # The diverged tail would flatten the curve: scale to the loss before
        # it, raw loss included (its noise stays inside the axes).
        # The y-axis stops at a few times the best smoothed loss: a loss that
        # diverged early would otherwise flatten the useful part into a line.
        finite = [v for v in self.smoothed_losses if math.isfinite(v)]
        best = min(finite) if finite else 1.0
        body = [v for v in self.smoothed_losses + self.losses if math.isfinite(v) and v <= 4.0 * abs(best) + 1e-12] or [
            best
        ]
        lo, hi = min(body), max(body)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo) + 1e-12)
        if self.stopped_early and self.lrs:
            ax.axvline(self.lrs[-1], color="tab:red", linestyle=":", alpha=0.6)
            ax.text(
                self.lrs[-1],
                0.02,
                f" stopped: diverged at lr {self.lrs[-1]:.2g}",
                transform=ax.get_xaxis_transform(),
                color="tab:red",
                fontsize=8,
                ha="right",
                va="bottom",
            )
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss", color="tab:blue")
        handles, labels = ax.get_legend_handles_labels()
        if self.metrics is not None:
            ax2 = ax.twinx()
            ax2.plot(self.lrs, self.metrics, color="tab:green", label=self.metric_name)
            ax2.set_ylabel(self.metric_name, color="tab:green")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        try:
            s = self.suggest()
        except ValueError as exc:  # an unusable run is still worth looking at
            s = None
            ax.text(
                0.5,
                0.95,
                "no usable bounds: " + str(exc).split(":")[0],
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=8,
            )
        for lr, name, color in (
            () if s is None else ((s.base_lr, "base_lr", "tab:orange"), (s.max_lr, "max_lr", "tab:red"))
        ):
            handles.append(ax.axvline(lr, color=color, linestyle="--"))
            labels.append(f"{name} = {lr:.3g}")
        ax.legend(handles, labels, loc="upper left", fontsize=8)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _centred_average(values: list[float], half_width: int) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half_width) : i + half_width + 1]
        out.append(sum(window) / len(window))
    return out


def _ramp(start_lr: float, end_lr: float, num_steps: int, mode: str) -> Schedule:
    if mode == "exp":
        return ExponentialLR(start_lr, (end_lr / start_lr) ** (1.0 / (num_steps - 1)))
    return LinearLR(end_lr, start_lr / end_lr, 1.0, num_steps - 1)


def _validate(start_lr, end_lr, num_steps, mode, smooth, diverge_threshold, accumulation_steps):
    if not (isinstance(start_lr, (int, float)) and math.isfinite(start_lr) and start_lr > 0):
        raise ValueError(f"start_lr must be a finite number > 0, got {start_lr!r}")
    if not (isinstance(end_lr, (int, float)) and math.isfinite(end_lr) and end_lr > start_lr):
        raise ValueError(f"end_lr must be a finite number > start_lr ({start_lr}), got {end_lr!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 3:
        raise ValueError(f"num_steps must be an integer >= 3, got {num_steps!r}")
    if mode not in ("exp", "linear"):
        raise ValueError(f"mode must be one of ['exp', 'linear'], got {mode!r}")
    if not (isinstance(smooth, (int, float)) and 0 <= smooth < 1):
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    if not (isinstance(diverge_threshold, (int, float)) and diverge_threshold > 1):
        raise ValueError(f"diverge_threshold must be > 1, got {diverge_threshold!r}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")


def _batches(data: Iterable) -> Iterable:
    """Cycle through ``data`` as often as the test needs."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batches")


def _to(x, device):
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


def range_test(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    train_data: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 5.0,
    eval_fn: Callable[[torch.nn.Module], Any] | None = None,
    val_data: Iterable | None = None,
    accumulation_steps: int = 1,
    progress: bool = True,
    metric_name: str | None = None,
) -> RangeTestResult:
    """Ramp the LR from ``start_lr`` to ``end_lr`` over ``num_steps`` updates.

    ``train_data`` yields ``(inputs, targets)``; ``loss_fn(model(inputs),
    targets)`` is the training loss.  With ``val_data`` the recorded loss is
    the validation loss after each update; ``eval_fn(model)`` (e.g. held-out
    accuracy) is recorded as the metric (``metric_name`` labels it; default:
    the function's name).  Stops early once the smoothed loss exceeds
    ``diverge_threshold`` times its best.  The model's state and train/eval
    mode and the optimizer's state are restored at the end, also on failure.
    """
    _validate(start_lr, end_lr, num_steps, mode, smooth, diverge_threshold, accumulation_steps)
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]  # every submodule's own flag (a frozen m[1].eval() stays so)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    ramp = _ramp(float(start_lr), float(end_lr), num_steps, mode)
    fused = isinstance(optimizer, FusedOptimizer)
    losses = torch.zeros(num_steps, dtype=torch.float32, device=device)
    metrics = torch.zeros(num_steps, dtype=torch.float32, device=device) if eval_fn is not None else None
    done = 0
    stopped = False
    best = math.inf
    smoothed: list[float] = []
    host_losses: list[float] = []
    try:
        if fused:
            optimizer.schedule_step.zero_()  # the ramp starts at its step 0 (restored below)
            for g in optimizer.param_groups:
                g["lr"] = ramp
        batches = _batches(train_data)
        bar = tqdm(total=num_steps, disable=not progress, desc="LR range test", leave=False)
        for k in range(num_steps):
            if not fused:
                for g in optimizer.param_groups:
                    g["lr"] = ramp(k)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for x, y in itertools.islice(batches, accumulation_steps):
                loss = loss_fn(model(_to(x, device)), _to(y, device)) / accumulation_steps
                loss.backward()
                step_loss += loss.detach()
            optimizer.step()
            if val_data is not None:
                step_loss = _evaluate_loss(model, loss_fn, val_data, device)
            losses[k] = step_loss
            if metrics is not None:
                model.eval()
                with torch.no_grad():
                    metrics[k] = torch.as_tensor(eval_fn(model), dtype=torch.float32, device=device)
            done = k + 1
            bar.update(1)
            if done % CHECK_EVERY == 0 or done == num_steps:
                # One host read every CHECK_EVERY steps.
                for v in losses[len(host_losses) : done].tolist():
                    host_losses.append(v)
                    prev = smoothed[-1] if smoothed else v
                    s = v if not smoothed else smooth * v + (1 - smooth) * prev
                    smoothed.append(s)
                    best = min(best, s)
                if any(not math.isfinite(s) or s > diverge_threshold * best for s in smoothed):
                    stopped = True
                    break
        bar.close()
    finally:
        model.load_state_dict(saved_model)
        for m, mode in modes:
            m.training = mode
        optimizer.load_state_dict(saved_opt)  # ours: schedules and step counter too
    # Keep the run up to (and including) the first diverged step.
    cut = next(
        (
            i + 1
            for i, s in enumerate(smoothed)
            if not math.isfinite(s) or s > diverge_threshold * min(smoothed[: i + 1])
        ),
        done,
    )
    return RangeTestResult(
        lrs=[ramp(k) for k in range(cut)],
        losses=host_losses[:cut],
        smoothed_losses=smoothed[:cut],
        metrics=None if metrics is None else metrics[:cut].tolist(),
        stopped_early=stopped,
        metric_name=metric_name or _name_of(eval_fn),
    )


def _name_of(fn) -> str:
    name = getattr(fn, "__name__", "")
    return name if name and name != "<lambda>" else "metric"


@torch.no_grad()
def _evaluate_loss(model, loss_fn, data, device) -> torch.Tensor:
    model.eval()
    total = torch.zeros((), device=device)
    count = 0
    for x, y in data:
        total += loss_fn(model(_to(x, device)), _to(y, device)).detach()
        count += 1
    return total / max(count, 1)
