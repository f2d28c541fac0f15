"""Step in backward, measured: the peak memory of one training step of a
GPT-2-small-shaped model (124M parameters) with and without
``register_step_in_backward``, and the host cost per parameter hook.

    python benchmarks/step_in_backward.py [--threads N] [--out benchmarks/results/in-backward-DATE]

Peak memory is the process's resident high-water mark (``ru_maxrss``), each
mode in its own fresh process with a fixed glibc mmap threshold (see
``_MALLOC_ENV``): params + AdamW states + activations are the
same in both, so the difference is what the gradients held.  The host cost
is timed on 400 tiny parameters (arithmetic costs nothing), the step() path
beside the in-backward path, interleaved, median of rounds.  Under DDP: two
gloo ranks (one thread each) train an 8.4M-parameter MLP with DDP + step()
and DDP + the step in backward, interleaved, median of rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import clr_fused as cf


def gpt2_small(tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    d, layers, vocab, ctx = 768, 12, 50257, 1024

    class GPT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(ctx, d)
            layer = lambda: torch.nn.TransformerEncoderLayer(  # noqa: E731
                d, 12, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.blocks = torch.nn.ModuleList(layer() for _ in range(layers))
            self.ln = torch.nn.LayerNorm(d)
            self.head = None if tied else torch.nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t))
            mask = torch.nn.Transformer.generate_square_subsequent_mask(t)
            for b in self.blocks:
                x = b(x, src_mask=mask, is_causal=True)
            x = self.ln(x)
            return x @ self.wte.weight.T if self.head is None else self.head(x)

    return GPT()


def _peak_child(mode: str, steps: int) -> None:
    mode, _, shape = mode.partition(":")
    model = gpt2_small(tied=shape != "untied")
    opt = cf.AdamW(model.parameters(), lr=cf.OneCycleLR(3e-4, 100), weight_decay=0.1)
    if mode == "in-backward":
        opt.register_step_in_backward(model)
    idx = torch.randint(0, 50257, (1, 64))
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    dt = (time.perf_counter() - t0) / steps
    n = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (kB on Linux)
    print(json.dumps({"mode": mode, "model": shape, "params": n, "grad_bytes": 4 * n, "peak_rss": peak, "step_s": dt}))


# glibc's dynamic mmap threshold would keep freed gradient buffers in the heap (the
# resident size then stays high): a fixed threshold maps every tensor over 64 KiB
# and unmaps it when freed, so the resident high-water mark follows live memory.
_MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def peak_memory(steps: int, threads: int, shape: str) -> dict:
    """``shape``: "tied" (GPT-2's embedding shared with the head: its gradient
    is accumulated twice, by the head early in backward and by the embedding
    at its end, so it lives through the whole pass in either mode) or
    "untied"."""
    out = {}
    for mode in ("step", "in-backward"):
        run = subprocess.run(
            [sys.executable, __file__, "--child", f"{mode}:{shape}", "--steps", str(steps), "--threads", str(threads)],
            capture_output=True, text=True, check=True, env=_MALLOC_ENV,
        )  # fmt: skip
        out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    saved = out["step"]["peak_rss"] - out["in-backward"]["peak_rss"]
    out["saved_bytes"] = saved
    out["saved_fraction_of_grads"] = saved / out["step"]["grad_bytes"]
    return out


def host_cost(n_params: int = 400, rounds: int = 15, iters: int = 20) -> dict:
    """Per-iteration host time of backward + step() against backward with the
    updates in its hooks, on ``n_params`` tiny parameters (a chain of
    Linear(2, 2) layers: the backward itself is the same in both)."""

    def make():
        torch.manual_seed(0)
        m = torch.nn.Sequential(*[torch.nn.Linear(2, 2, bias=False) for _ in range(n_params)])
        return m, cf.AdamW(m.parameters(), lr=cf.OneCycleLR(1e-3, 10_000))

    m1, o1 = make()
    m2, o2 = make()
    o2.register_step_in_backward(m2)
    x = torch.randn(1, 2)

    def normal():
        m1(x).sum().backward()
        o1.step()
        o1.zero_grad()

    def in_bwd():
        m2(x).sum().backward()

    def plain_backward():  # the backward alone, for the hooks' share
        m1(x).sum().backward()
        m1.zero_grad()

    for f in (normal, in_bwd, plain_backward):
        for _ in range(3):
            f()
    times = {"step": [], "in-backward": [], "backward only": []}
    for _ in range(rounds):
        for name, f in (("step", normal), ("in-backward", in_bwd), ("backward only", plain_backward)):
            t0 = time.perf_counter()
            for _ in range(iters):
                f()
            times[name].append((time.perf_counter() - t0) / iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "n_params": n_params,
        "median_s": med,
        "ratio_in_backward_to_step": med["in-backward"] / med["step"],
        "per_hook_us": (med["in-backward"] - med["backward only"]) / n_params * 1e6,
        "step_call_us": (med["step"] - med["backward only"]) * 1e6,  # step() + zero_grad() for all of them
    }


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.Linear(1024, 1024), torch.nn.GELU())])


def _ddp_rank(rank: int, world: int, init: str, out: str, rounds: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        x, y = torch.randn(64, 1024), torch.randn(64, 1024)
        m1, m2 = _mlp(), _mlp()
        d1, d2 = DDP(m1), DDP(m2)
        o1 = cf.AdamW(m1.parameters(), lr=cf.OneCycleLR(1e-3, 10_000))
        o2 = cf.AdamW(m2.parameters(), lr=cf.OneCycleLR(1e-3, 10_000))
        o2.register_step_in_backward(d2)

        def normal():
            o1.zero_grad()
            torch.nn.functional.mse_loss(d1(x), y).backward()
            o1.step()

        def in_bwd():
            torch.nn.functional.mse_loss(d2(x), y).backward()

        for f in (normal, in_bwd, normal, in_bwd):
            f()
        times: dict[str, list[float]] = {"step": [], "in-backward": []}
        for _ in range(rounds):
            for name, f in (("step", normal), ("in-backward", in_bwd)):
                dist.barrier()
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        if rank == 0:
            with open(out, "w") as fh:
                json.dump({k: statistics.median(v) for k, v in times.items()}, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def ddp_cost(rounds: int = 15) -> dict:
    """DDP + step() against DDP + the step in backward: 2 gloo ranks on the
    CPU, one thread each, an 8.4M-parameter MLP (1024 wide, 8 layers)."""
    d = tempfile.mkdtemp()
    out = os.path.join(d, "ddp.json")
    mp.spawn(_ddp_rank, args=(2, os.path.join(d, "init"), out, rounds), nprocs=2, join=True)
    with open(out) as fh:
        med = json.load(fh)
    params = sum(p.numel() for p in _mlp().parameters())
    return {
        "ranks": 2,
        "params": params,
        "median_s": med,
        "ratio_in_backward_to_step": med["in-backward"] / med["step"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        _peak_child(a.child, a.steps)
        return
    res = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": a.threads,
        "peak_memory": {shape: peak_memory(a.steps, a.threads, shape) for shape in ("tied", "untied")},
        "host": host_cost(),
        "ddp": ddp_cost(),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out + ".json", "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
