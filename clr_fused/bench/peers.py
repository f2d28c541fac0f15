"""``clr-fused bench --peers``: our step beside the other libraries' on the same parameter sets.

For every algorithm we ship, the optimizers users would otherwise reach for:
torch's fused AdamW / SGD, optimi, ``lion_pytorch``, ``schedulefree``,
bitsandbytes' and torchao's 8-bit AdamW / Lion, DeepSpeed's CPUAdam, each
where it is installed and runs on this device, and a row saying why not
otherwise.  Every provider steps the same gradients on the same shapes (its
own copy of the parameters), interleaved in one process (rotating order),
medians, ratios of medians to the algorithm's reference (the first row).
Schedulable optimizers run a triangular CLR: ours on the device, the others
with torch's ``CyclicLR`` stepped from Python; the schedule-free ones run
their own warm-up.

On the CPU ours is the ``cpu`` backend; on a GPU the default one, and every
provider's step there ends with a device synchronisation (timed per step).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf

from . import report
from .host import _interleaved
from .param_sets import resnet50, transformer

BASE_LR, MAX_LR, STEP_UP = 1e-4, 1e-3, 2000
SF_WARMUP = 100  # schedule-free runs: warm-up steps (theirs and ours)


@dataclass(frozen=True)
class Peer:
    """One provider: ``make(params)`` builds its optimizer; ``module`` must import."""

    name: str
    module: str | None  # None: torch or clr_fused, always there
    make: Callable[[list], torch.optim.Optimizer]
    cyclic: bool = True  # step torch's CyclicLR after it (False: its schedule is on the device, or it has none)


def _imp(module: str):
    return importlib.import_module(module)


def _ours_backend(device: torch.device) -> str:
    """The CPU kernels on a CPU (what the bench measures there); the default choice elsewhere."""
    return "cpu" if device.type == "cpu" else "auto"


def algorithms(device: torch.device) -> dict[str, list[Peer]]:
    """The algorithms and their providers, the reference first."""
    be = _ours_backend(device)
    clr = dict(lr=cf.CyclicLR(BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False), backend=be)
    on_gpu = device.type == "cuda"
    return {
        "adamw": [
            Peer("torch fused AdamW", None, lambda ps: torch.optim.AdamW(ps, lr=MAX_LR, weight_decay=0.01, fused=True)),
            Peer("clr_fused AdamW", None, lambda ps: cf.AdamW(ps, weight_decay=0.01, **clr), cyclic=False),
            Peer("optimi AdamW (foreach)", "optimi", lambda ps: _imp("optimi").AdamW(ps, lr=MAX_LR, weight_decay=0.01, decouple_lr=False, foreach=True)),
            Peer("torchao AdamW8bit", "torchao.optim", lambda ps: _imp("torchao.optim").AdamW8bit(ps, lr=MAX_LR, weight_decay=0.01)),
            Peer("bitsandbytes AdamW8bit", "bitsandbytes", lambda ps: _imp("bitsandbytes").optim.AdamW8bit(ps, lr=MAX_LR, weight_decay=0.01)),
            Peer("DeepSpeed CPUAdam" if not on_gpu else "DeepSpeed FusedAdam", "deepspeed",
                 lambda ps: _deepspeed_adam(ps, on_gpu)),
        ],
        "sgd-momentum": [
            Peer("torch fused SGD", None, lambda ps: torch.optim.SGD(ps, lr=MAX_LR, momentum=0.9, fused=True)),
            Peer("clr_fused SGD", None, lambda ps: cf.SGD(ps, momentum=0.9, **clr), cyclic=False),
            Peer("optimi SGD (foreach)", "optimi", lambda ps: _imp("optimi").SGD(ps, lr=MAX_LR, momentum=0.9, foreach=True)),
        ],
        "lion": [
            Peer("lion_pytorch Lion", "lion_pytorch", lambda ps: _imp("lion_pytorch").Lion(ps, lr=MAX_LR / 10, weight_decay=0.1)),
            Peer("clr_fused Lion", None, lambda ps: cf.Lion(ps, lr=cf.CyclicLR(BASE_LR / 10, MAX_LR / 10, STEP_UP, cycle_momentum=False),
                                                            weight_decay=0.1, backend=be), cyclic=False),
            Peer("optimi Lion (foreach)", "optimi", lambda ps: _imp("optimi").Lion(ps, lr=MAX_LR / 10, weight_decay=0.1, decouple_lr=False, foreach=True)),
            Peer("bitsandbytes Lion8bit", "bitsandbytes", lambda ps: _imp("bitsandbytes").optim.Lion8bit(ps, lr=MAX_LR / 10, weight_decay=0.1)),
        ],
        "adamw-schedule-free": [
            Peer("schedulefree AdamWScheduleFree", "schedulefree", lambda ps: _train(_imp("schedulefree").AdamWScheduleFree(
                ps, lr=MAX_LR, weight_decay=0.01, warmup_steps=SF_WARMUP)), cyclic=False),
            Peer("clr_fused AdamWScheduleFree", None, lambda ps: _train(cf.AdamWScheduleFree(
                ps, lr=MAX_LR, weight_decay=0.01, warmup_steps=SF_WARMUP, backend=be)), cyclic=False),
        ],
        "sgd-schedule-free": [
            Peer("schedulefree SGDScheduleFree", "schedulefree", lambda ps: _train(_imp("schedulefree").SGDScheduleFree(
                ps, lr=MAX_LR, momentum=0.9, warmup_steps=SF_WARMUP)), cyclic=False),
            Peer("clr_fused SGDScheduleFree", None, lambda ps: _train(cf.SGDScheduleFree(
                ps, lr=MAX_LR, momentum=0.9, warmup_steps=SF_WARMUP, backend=be)), cyclic=False),
        ],
    }  # fmt: skip


def _train(opt):
    opt.train()
    return opt


def _deepspeed_adam(ps, on_gpu: bool):
    if on_gpu:
        return _imp("deepspeed.ops.adam").FusedAdam(ps, lr=MAX_LR, weight_decay=0.01, adam_w_mode=True)
    return _imp("deepspeed.ops.adam").DeepSpeedCPUAdam(ps, lr=MAX_LR, weight_decay=0.01, adamw_mode=True)


def _stepper(peer: Peer, params) -> Callable[[], None]:
    """One optimizer step (and torch's CyclicLR step where the peer needs one); on a GPU it
    waits for the device, so that the timings are the steps' and not their launches'."""
    opt = peer.make(params)
    sched = L.CyclicLR(opt, BASE_LR, MAX_LR, step_size_up=STEP_UP, cycle_momentum=False) if peer.cyclic else None
    cuda = params[0].is_cuda

    def step():
        opt.step()
        if sched is not None:
            sched.step()
        if cuda:
            torch.cuda.synchronize()

    return step


def _params(shapes, grads, device):
    ps = []
    for s, g in zip(shapes, grads):
        p = torch.nn.Parameter(torch.randn(s, device=device))
        p.grad = g.clone()
        ps.append(p)
    return ps


def _installed(module: str | None) -> str | None:
    """None when the module imports, else why not."""
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (any import failure is a "not installed" row)
        return f"not installed ({type(e).__name__}: {str(e)[:120]})"
    return None


def run_set(set_name: str, shapes, device: torch.device, rounds: int, steps: int, progress) -> list[dict]:
    n = sum(math.prod(s) for s in shapes)
    gen = torch.Generator().manual_seed(0)
    grads = [(torch.randn(s, generator=gen) * 1e-3).to(device) for s in shapes]
    rows = []
    for algo, peers in algorithms(device).items():
        providers, absent = {}, {}
        for peer in peers:
            why = _installed(peer.module)
            if why is None:
                try:
                    fn = _stepper(peer, _params(shapes, grads, device))
                    fn()  # it runs on this device (states created outside the timing), or it is reported
                    providers[peer.name] = fn
                except Exception as e:  # noqa: BLE001
                    why = f"does not run on this device ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
            if why is not None:
                absent[peer.name] = why
        reference = peers[0].name
        med = (
            _interleaved({k: (fn, contextlib.nullcontext) for k, fn in providers.items()}, steps, rounds)
            if providers
            else {}
        )
        for peer in peers:
            row = dict(set=set_name, params=n, tensors=len(shapes), algo=algo, provider=peer.name, reference=reference)
            if peer.name in med:
                ms, ref = med[peer.name], med.get(reference)
                row.update(ms_per_step=ms, ratio_to_reference=(ms / ref) if ref else None, status="ran")
            else:
                row.update(ms_per_step=None, ratio_to_reference=None, status=absent[peer.name])
            rows.append(row)
        del providers
        progress.update(1)
    return rows


def main(out_dir: str, quick: bool = False) -> int:
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = {"resnet50": resnet50(), "gpt2-small": transformer(768, 12)}
    rounds, steps = 5, 3
    if quick:
        sets = {"small": [(256, 200), (1000,), (3, 3, 64, 64), (17,)]}
        rounds, steps = 3, 1
    load_before = report.machine_load()
    rows = []
    with tqdm(total=len(sets) * len(algorithms(device)), desc="bench --peers", unit="case") as bar:
        for name, shapes in sets.items():
            rows += run_set(name, shapes, device, rounds, steps, bar)
    meta = dict(
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        threads=torch.get_num_threads(), torch=torch.__version__, quick=quick, rounds=rounds, steps=steps,
        load=dict(before=load_before, after=report.machine_load()), versions=_versions(),
    )  # fmt: skip
    report.write_results(out_dir, "peers", meta, dict(rows=rows), markdown(meta, rows))
    return 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in (
        "torch",
        "clr_fused",
        "torch-optimi",
        "lion-pytorch",
        "schedulefree",
        "bitsandbytes",
        "torchao",
        "deepspeed",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def markdown(meta, rows) -> str:
    lines = [f"# Peers, {meta['date']}, {meta['device']}, {meta['threads']} threads, torch {meta['torch']}", "",
             "Median ms per step (optimizer + LR schedule: a triangular CLR, on the device for clr_fused, torch's "
             "CyclicLR from Python for the others; schedule-free: their own warm-up), the providers of one algorithm "
             "interleaved on the same shapes and gradients; ratio to the algorithm's first row."
             + report.load_note(meta["load"]["before"], meta["load"]["after"]), "",
             "| set | algo | provider | ms/step | vs reference |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["ms_per_step"] is None:
            lines.append(f"| {r['set']} | {r['algo']} | {r['provider']} | {r['status']} | |")
        else:
            ratio = r["ratio_to_reference"]
            lines.append(f"| {r['set']} | {r['algo']} | {r['provider']} | {r['ms_per_step']:.4g} | "
                         f"{report.speed_text(ratio) if ratio is not None else 'reference did not run'} |")  # fmt: skip
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())]
    return "\n".join(lines) + "\n"
