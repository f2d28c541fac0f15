"""The paper's question on a language model: a tiny character-level GPT.

Data: the Python standard library's own source files, which every Python
installation ships (no download): the top-level ``*.py`` files of
``sysconfig.get_paths()["stdlib"]`` in name order, every 10th file held out
for validation (split by file, so validation text is never trained on).  The
text is read as UTF-8 bytes (a 256-symbol vocabulary).  The files differ
between Python versions, so results are comparable within one version.

Model: nanoGPT's shape at toy size (pre-norm blocks of causal self-attention
and a 4x GELU MLP, learned positions, tied input / output embeddings): 2
layers, 4 heads, width 96, context 64, about 0.25 M parameters.  AdamW
(betas 0.9 / 0.95, weight decay 0.1, gradient clipping at 1.0 fused into the
step), batch 16 x 64 characters.

Policies, all from one LR range test (``cf.range_test`` on the training
loss, exponential ramp): a constant LR (the best of a small grid, so the
baseline is fair), warm-up + cosine and WSD (``get_schedule`` /
``WarmupStableDecay`` peaking at the range test's ``max_lr``), 1-cycle with
that ``max_lr``, and CLR triangular2 between the range test's bounds.  Each
at the same iteration budget over several seeds; the validation loss is
measured every ``eval_every`` iterations on fixed held-out batches.
"""

from __future__ import annotations

import math
import os
import statistics
import sysconfig
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import schedules as S
from ..hf_schedules import get_schedule
from ..optim import AdamW
from ..range_test import RangeTestResult, range_test
from .digits import plot_policies

BLOCK, BATCH = 64, 16
CONSTANT_GRID = (1e-3, 3e-3)


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes
    val: torch.Tensor
    files: tuple[int, int]  # (train files, validation files)

    def batch(self, gen: torch.Generator, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, len(data) - BLOCK - 1, (BATCH,), generator=gen)
        chunk = torch.stack([data[s : s + BLOCK + 1] for s in starts.tolist()]).long()
        return chunk[:, :-1], chunk[:, 1:]


def load_stdlib(max_bytes: int | None = None) -> Corpus:
    """The standard library's top-level sources (see the module docstring)."""
    root = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    train, val = bytearray(), bytearray()
    counts = [0, 0]
    for i, name in enumerate(names):
        with open(os.path.join(root, name), "rb") as f:
            text = f.read()
        held_out = i % 10 == 9
        (val if held_out else train).extend(text)
        counts[held_out] += 1
        if max_bytes is not None and len(train) >= max_bytes and len(val) >= max_bytes // 10:
            break
    if max_bytes is not None:
        train, val = train[:max_bytes], val[: max(max_bytes // 10, BLOCK + 2)]
    return Corpus(
        torch.frombuffer(train, dtype=torch.uint8), torch.frombuffer(val, dtype=torch.uint8), (counts[0], counts[1])
    )


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, width: int = 96, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, width), nn.Embedding(BLOCK, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        for mod in self.modules():  # nanoGPT's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear):
                nn.init.zeros_(mod.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.ln(self.blocks(x)) @ self.tok.weight.T  # tied embeddings


def make_model(seed: int) -> CharGPT:
    torch.manual_seed(seed)
    return CharGPT()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_opt(model: nn.Module, lr: Any) -> AdamW:
    return AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, max_grad_norm=1.0)


@torch.no_grad()
def val_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    loss = torch.stack([lm_loss(model(x), y) for x, y in batches]).mean()
    model.train()
    return loss


def run_range_test(corpus: Corpus, *, num_steps: int, progress: bool = False) -> RangeTestResult:
    model = make_model(0)
    gen = torch.Generator().manual_seed(10_000)
    batches = [corpus.batch(gen) for _ in range(num_steps)]
    return range_test(model, lm_loss, batches, make_opt(model, 1e-3), start_lr=1e-5, end_lr=1.0, num_steps=num_steps,
                      progress=progress)  # fmt: skip


def train(corpus: Corpus, lr: Any, *, iterations: int, seed: int, eval_every: int, val_batches) -> list[float]:
    """Validation loss every ``eval_every`` iterations (read back once, at the end)."""
    model = make_model(seed)
    opt = make_opt(model, lr)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for it in range(1, iterations + 1):
        x, y = corpus.batch(gen)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
        if it % eval_every == 0:
            curve.append(val_loss(model, val_batches))
    return torch.stack(curve).tolist()


@dataclass
class Experiment:
    iterations: int
    seeds: tuple[int, ...]
    eval_every: int
    suggestion: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # policy -> per seed
    constant_grid: dict[float, float] = field(default_factory=dict)  # lr -> mean final validation loss

    def table(self) -> list[dict[str, Any]]:
        """Final validation loss per policy, and the first evaluation at which the
        seed-mean curve reaches the constant-LR baseline's final loss."""
        target = statistics.fmean(r[-1] for r in self.curves["constant"])
        rows = []
        for name, runs in self.curves.items():
            finals = [r[-1] for r in runs]
            mean = [statistics.fmean(r[i] for r in runs) for i in range(len(runs[0]))]
            reach = next(((i + 1) * self.eval_every for i, v in enumerate(mean) if v <= target), None)
            rows.append({
                "policy": name, "lr": repr(self.policies[name]), "final_mean": statistics.fmean(finals),
                "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0, "iterations_to_constant_final": reach,
            })  # fmt: skip
        return rows


def policies_from(rt: RangeTestResult, best_constant: float, iterations: int) -> dict[str, Any]:
    s = rt.suggest()
    warmup = max(1, iterations // 20)
    decay = max(1, iterations // 5)
    return {
        "constant": best_constant,
        "warmup_cosine": get_schedule("cosine", s.max_lr, warmup, iterations),
        "wsd": S.WarmupStableDecay(s.max_lr, warmup, iterations - warmup - decay, decay, decay_type="1-sqrt"),
        "onecycle": S.OneCycleLR(s.max_lr, iterations),  # torch's defaults: beta1 cycled 0.85-0.95
        "clr": S.CyclicLR(
            s.base_lr, s.max_lr, step_size_up=max(1, iterations // 8), mode="triangular2", cycle_momentum=False
        ),
    }


def run(corpus: Corpus, *, iterations: int = 1000, seeds=(0, 1, 2), eval_every: int = 50, range_steps: int = 200,
        progress: bool = True) -> Experiment:  # fmt: skip
    from tqdm import tqdm

    exp = Experiment(iterations, tuple(seeds), eval_every)
    val_gen = torch.Generator().manual_seed(20_000)
    val_batches = [corpus.batch(val_gen, "val") for _ in range(8)]
    rt = run_range_test(corpus, num_steps=range_steps)
    s = rt.suggest()
    exp.suggestion = {"base_lr": s.base_lr, "max_lr": s.max_lr, "reason": s.reason}
    bar = tqdm(total=(len(CONSTANT_GRID) + 4) * len(seeds), desc="charlm policies", unit="run", disable=not progress)
    grid = {}
    for lr in CONSTANT_GRID:
        grid[lr] = []
        for sd in seeds:
            grid[lr].append(
                train(corpus, lr, iterations=iterations, seed=sd, eval_every=eval_every, val_batches=val_batches)
            )
            bar.update(1)
        final = statistics.fmean(c[-1] for c in grid[lr])
        exp.constant_grid[lr] = final if math.isfinite(final) else math.inf
    best = min(exp.constant_grid, key=exp.constant_grid.get)
    exp.policies = policies_from(rt, best, iterations)
    exp.curves["constant"] = grid[best]
    for name, lr in exp.policies.items():
        if name == "constant":
            continue
        exp.curves[name] = []
        for sd in seeds:
            exp.curves[name].append(
                train(corpus, lr, iterations=iterations, seed=sd, eval_every=eval_every, val_batches=val_batches)
            )
            bar.update(1)
    bar.close()
    exp.range_test = rt  # type: ignore[attr-defined]
    return exp


def plot(exp: Experiment, path: str, *, title: str) -> None:
    """Mean validation loss vs iteration per policy, the LR underneath; the loss
    axis on the useful range (the first evaluations sit far above)."""
    best = min(statistics.fmean(r[-1] for r in runs) for runs in exp.curves.values())
    plot_policies(exp.curves, exp.policies, path, eval_every=exp.eval_every, iterations=exp.iterations, title=title,
                  ylabel=f"validation loss (nats/char, mean of {len(exp.seeds)} seeds)", ylim=(best * 0.95, best * 1.6))  # fmt: skip


def main(args) -> int:
    """`clr-fused demo --dataset charlm`: the report of :func:`run`."""
    import datetime
    import json
    import os
    import platform
    import sys
    import time

    import torch

    iterations, seeds = args.iterations or 600, tuple(range(args.seeds or 3))
    eval_every = max(1, iterations // 20)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    corpus = load_stdlib()
    exp = run(corpus, iterations=iterations, seeds=seeds, eval_every=eval_every)
    took = time.perf_counter() - t0
    s = exp.suggestion
    print(f"corpus: Python {platform.python_version()} standard library, {corpus.files[0]} files ({len(corpus.train):,} bytes) "
          f"train, {corpus.files[1]} files ({len(corpus.val):,} bytes) validation")  # fmt: skip
    print(f"range test: base_lr={s['base_lr']:.4g} max_lr={s['max_lr']:.4g} ({s['reason']})")
    print(
        "constant-LR grid (mean final validation loss): "
        + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in exp.constant_grid.items())
    )
    print(
        f"{iterations} iterations, seeds {list(seeds)}, {took:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)"
    )
    print("| policy | final validation loss (mean ± std) | iterations to the constant LR's final loss |")
    print("|---|---|---|")
    rows = exp.table()
    for r in rows:
        reach = r["iterations_to_constant_final"] if r["iterations_to_constant_final"] is not None else "not reached"
        print(f"| {r['policy']} | {r['final_mean']:.4f} ± {r['final_std']:.4f} | {reach} |")
    png = os.path.join(args.out, "charlm_policies.png")
    plot(exp, png, title=f"char-level GPT on the standard library, AdamW, {len(seeds)} seeds")
    exp.range_test.plot(os.path.join(args.out, "charlm_range_test.png"), title="LR range test, char-level GPT, AdamW")
    out = {
        "date": datetime.date.today().isoformat(), "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "python": sys.version.split()[0], "seconds": took, "iterations": iterations, "seeds": list(seeds),
        "suggestion": s, "constant_grid": exp.constant_grid, "table": rows, "curves": exp.curves, "eval_every": eval_every,
    }  # fmt: skip
    with open(os.path.join(args.out, "charlm.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {png} and {args.out}/charlm.json")
    return 0
