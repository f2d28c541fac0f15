"""Schedule-free SGD / AdamW on the CPU: cf.SGDScheduleFree /
cf.AdamWScheduleFree (``cpu`` backend) against the ``schedulefree`` package's
own foreach step, with torch's fused AdamW beside them, on the parameter
shapes of ResNet-50 and GPT-2 small (fp32).

    python benchmarks/schedule_free.py [--threads 1] [--rounds 5] [--steps 5] [--out FILE.json]

The providers run interleaved in one process (round-robin, ``steps`` steps
each per round); the figure is each provider's median ms per step over the
rounds, and the ratios are of medians.  Gradients are fixed random tensors
(set once): only ``step()`` is timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import schedulefree
import torch

import clr_fused as cf
from clr_fused.bench.param_sets import resnet50, transformer


def _params(shapes):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return ps


def _providers(kind: str, shapes):
    if kind == "adamw":
        kw = dict(lr=1e-3, weight_decay=0.01, warmup_steps=100)
        out = {
            "schedulefree (foreach)": schedulefree.AdamWScheduleFree(_params(shapes), **kw),
            "clr_fused cpu": cf.AdamWScheduleFree(_params(shapes), backend="cpu", **kw),
            "torch fused AdamW": torch.optim.AdamW(_params(shapes), lr=1e-3, weight_decay=0.01, fused=True),
        }
    else:
        kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, warmup_steps=100)
        out = {
            "schedulefree (foreach)": schedulefree.SGDScheduleFree(_params(shapes), **kw),
            "clr_fused cpu": cf.SGDScheduleFree(_params(shapes), backend="cpu", **kw),
            "torch fused SGD": torch.optim.SGD(_params(shapes), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True),
        }
    for opt in out.values():
        if hasattr(opt, "train") and callable(opt.train):
            opt.train()
        opt.step()  # states created outside the timing
    return out


def _interleaved(opts, rounds: int, steps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            t = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = {"resnet50": resnet50(), "gpt2-small": transformer(768, 12)}
    rows = []
    for set_name, shapes in sets.items():
        n = sum(torch.Size(s).numel() for s in shapes)
        for kind in ("adamw", "sgd"):
            med = _interleaved(_providers(kind, shapes), args.rounds, args.steps)
            ref = med["schedulefree (foreach)"]
            for name, ms in med.items():
                rows.append(dict(set=set_name, params=n, tensors=len(shapes), algo=kind, provider=name,
                                 ms_per_step=ms, ratio_to_schedulefree=ms / ref))  # fmt: skip
                print(f"{set_name:11s} {kind:6s} {name:24s} {ms:9.2f} ms  {ms / ref:5.2f}x of schedulefree")
    result = dict(
        date=datetime.date.today().isoformat(), torch=torch.__version__, threads=args.threads,
        schedulefree=getattr(schedulefree, "__version__", "installed"), load_avg=os.getloadavg()[0],
        rounds=args.rounds, steps=args.steps, rows=rows,
    )  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
