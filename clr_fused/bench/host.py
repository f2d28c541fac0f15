"""``clr-fused bench --host``: the host side of a step, and the CPU backend.

1. Host cost.  On a GPU an eager optimizer step over a real model is bound by
   host work (Python, argument packing, launches) until the model is large.
   That work can be measured anywhere: give every tensor of a real parameter
   set (the real tensor COUNT) 1-16 elements, so the arithmetic costs
   nothing, and time ``step()``.  Providers, interleaved in one process:
   torch ``foreach`` and ``fused`` + ``CyclicLR.step()``, fused also with its
   kernels stubbed out (no-op ``torch._fused_*``) to isolate the host cost,
   against clr_fused's compiled path (the ``cpu``
   backend here: the same Python, plan check and op call as ``cuda``) with
   its kernels and with them stubbed (``_C.set_kernels_stubbed``).
2. The CPU backend at the real sizes (ResNet-50, GPT-2 small, a 5,000 small
   tensor set; fp32 and bf16) against torch fused + ``CyclicLR`` on the CPU,
   with achieved GB/s against a copy bandwidth measured in the same run.

Medians of interleaved rounds, ratios of medians.  JSON + markdown under
``out_dir``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf

from .. import _ext
from . import report
from .param_sets import many_small, resnet50, transformer
from .run import _params as run_params
from .traffic import bytes_per_param, footprint_per_param

BASE_LR, MAX_LR, STEP_UP = 1e-4, 1e-3, 2000
ALGOS = {"sgd-momentum": ("SGD", dict(momentum=0.9)), "adam": ("Adam", {})}


@contextlib.contextmanager
def _torch_fused_stubbed():
    """torch's fused update kernels replaced by no-ops: what remains is its host
    cost.  (foreach has no single kernel to stub: its Python reads the results
    of its own ops; with 1-16 elements per tensor its kernels cost little.)"""
    names = ["_fused_adam_", "_fused_adamw_", "_fused_sgd_"]
    saved = {n: getattr(torch, n) for n in names}
    try:
        for n in names:
            setattr(torch, n, lambda *args, **kwargs: None)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch, n, f)


@contextlib.contextmanager
def _ours_stubbed():
    mod = _ext.load()
    mod.set_kernels_stubbed(True)
    try:
        yield
    finally:
        mod.set_kernels_stubbed(False)


def _torch_provider(algo: str, params, impl: str) -> Callable[[], None]:
    cls, kw = ALGOS[algo]
    flag = {"fused": True} if impl == "fused" else {"foreach": True}
    opt = getattr(torch.optim, cls)(params, lr=BASE_LR, **kw, **flag)
    sched = L.CyclicLR(opt, BASE_LR, MAX_LR, STEP_UP, cycle_momentum=cls == "SGD")

    def step():
        opt.step()
        sched.step()

    return step


def _ours_provider(algo: str, params) -> Callable[[], None]:
    cls, kw = ALGOS[algo]
    opt = getattr(cf, cls)(
        params, lr=cf.CyclicLR(BASE_LR, MAX_LR, STEP_UP, cycle_momentum=cls == "SGD"), backend="cpu", **kw
    )
    return opt.step


def _ours_table_provider(algo: str, params) -> Callable[[], None]:
    """The same CyclicLR's values as a LambdaLR table (the kernels read one entry per step)."""
    cls, kw = ALGOS[algo]
    cyc = cf.CyclicLR(BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False)
    table = cf.LambdaLR(BASE_LR, lambda k: cyc(k) / BASE_LR, 4 * STEP_UP)
    return getattr(cf, cls)(params, lr=table, backend="cpu", **kw).step


def _write_then_step(opt) -> Callable[[], None]:
    """nanoGPT's loop: a new float written to every group's lr, then step()."""
    it = [0]

    def step():
        it[0] += 1
        lr = BASE_LR * (1.0 + (it[0] % 1000) / 1000.0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()

    return step


def _write_providers(algo: str, shapes) -> dict:
    """torch fused with a float lr written each step (its kernels stubbed) against ours."""
    cls, kw = ALGOS[algo]
    torch_opt = getattr(torch.optim, cls)(_params(shapes, tiny=True), lr=BASE_LR, fused=True, **kw)
    ours = getattr(cf, cls)(_params(shapes, tiny=True), lr=BASE_LR, backend="cpu", **kw)
    return {
        "torch fused + float lr write, kernels stubbed": (_write_then_step(torch_opt), _torch_fused_stubbed),
        "clr_fused cpu + float lr write, kernels stubbed": (_write_then_step(ours), _ours_stubbed),
    }


def _params(shapes, dtype=torch.float32, tiny=False):
    """run.py's parameters with gradients; ``tiny``: 1-16 elements each, same count."""
    if tiny:
        shapes = [(min(16, math.prod(s)),) for s in shapes]
    return run_params(shapes, dtype, torch.device("cpu"))


def _interleaved(providers: dict[str, tuple[Callable[[], None], Callable[[], contextlib.AbstractContextManager]]],
                 steps: int, rounds: int) -> dict[str, float]:  # fmt: skip
    """Median ms per step of each provider; rounds interleave the providers
    (rotating the order) so drift hits all of them alike."""
    names = list(providers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for fn, ctx in providers.values():  # warm-up (plans, state, caches)
        with ctx():
            fn()
            fn()
    for order in report.rotations(names, rounds):
        for n in order:
            fn, ctx = providers[n]
            with ctx():
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[n].append((time.perf_counter() - t0) * 1e3 / steps)
    return {n: statistics.median(v) for n, v in times.items()}


def host_cost(sets: dict[str, list], rounds: int, progress) -> list[dict]:
    rows = []
    for set_name, shapes in sets.items():
        steps = max(5, min(300, 40000 // len(shapes)))
        for algo in ALGOS:
            providers = {}
            for impl in ("foreach", "fused"):
                providers[f"torch {impl} + CyclicLR"] = (
                    _torch_provider(algo, _params(shapes, tiny=True), impl),
                    contextlib.nullcontext,
                )
            providers["torch fused + CyclicLR, kernels stubbed"] = (
                _torch_provider(algo, _params(shapes, tiny=True), "fused"),
                _torch_fused_stubbed,
            )
            providers["clr_fused cpu"] = (_ours_provider(algo, _params(shapes, tiny=True)), contextlib.nullcontext)
            providers["clr_fused cpu, kernels stubbed"] = (
                _ours_provider(algo, _params(shapes, tiny=True)),
                _ours_stubbed,
            )
            providers["clr_fused cpu + LambdaLR table, kernels stubbed"] = (
                _ours_table_provider(algo, _params(shapes, tiny=True)),
                _ours_stubbed,
            )
            providers.update(_write_providers(algo, shapes))
            med = _interleaved(providers, steps, rounds)
            ref = med["torch fused + CyclicLR, kernels stubbed"]
            ref_write = med["torch fused + float lr write, kernels stubbed"]
            for name, ms in med.items():
                # the write-then-step loops against torch's write-then-step loop
                base = ref_write if "float lr write" in name else ref
                rows.append(dict(set=set_name, tensors=len(shapes), algo=algo, provider=name, us_per_step=ms * 1e3,
                                 ratio_to_torch_fused_host=ms / base))  # fmt: skip
            progress.update(1)
    return rows


def cpu_backend(sets: dict[str, list], rounds: int, steps: int, progress) -> list[dict]:
    cpu, cache = torch.device("cpu"), report.cache_bytes(torch.device("cpu"))
    rows = []
    for set_name, shapes in sets.items():
        n = sum(math.prod(s) for s in shapes)
        for dtype in (torch.float32, torch.bfloat16):
            for algo in ALGOS:
                providers = {
                    "torch fused + CyclicLR": (
                        _torch_provider(algo, _params(shapes, dtype), "fused"),
                        contextlib.nullcontext,
                    ),
                    "clr_fused cpu": (_ours_provider(algo, _params(shapes, dtype)), contextlib.nullcontext),
                }
                step_bytes, footprint = bytes_per_param(algo, dtype) * n, footprint_per_param(algo, dtype) * n
                copy_bw = report.copy_bandwidth(cpu, footprint)
                med = _interleaved(providers, steps, rounds)
                ref = med["torch fused + CyclicLR"]
                for name, ms in med.items():
                    gbps = step_bytes / (ms / 1e3) / 1e9
                    rows.append(dict(set=set_name, params=n, tensors=len(shapes), dtype=str(dtype).replace("torch.", ""),
                                     algo=algo, provider=name, ms_per_step=ms, ratio_to_torch_fused=ms / ref,
                                     gbps=gbps, copy_gbps=copy_bw, pct_copy_bw=report.pct_of_copy(gbps, copy_bw, footprint, cache)))  # fmt: skip
                del providers
                progress.update(1)
    return rows


def main(out_dir: str, quick: bool = False) -> int:
    from tqdm import tqdm

    if _ext.load() is None:
        print(f"clr-fused bench --host needs the compiled extension: {_ext.error()}")
        return 1
    host_sets = {"resnet50": resnet50(), "gpt2-small": transformer(768, 12), "many-small-5000": many_small(5000),
                 "many-small-20000": many_small(20000, seed=1)}  # fmt: skip
    size_sets = {"resnet50": resnet50(), "gpt2-small": transformer(768, 12), "many-small-5000": many_small(5000)}
    rounds, steps = 7, 3
    if quick:
        host_sets = {"resnet50": resnet50()}
        size_sets = {"many-small-1000": many_small(1000)}
        rounds, steps = 3, 2
    total = len(host_sets) * len(ALGOS) + len(size_sets) * 2 * len(ALGOS)
    load_before = report.machine_load()
    with tqdm(total=total, desc="bench --host", unit="case") as bar:
        host_rows = host_cost(host_sets, rounds, bar)
        size_rows = cpu_backend(size_sets, max(3, rounds // 2), steps, bar)
    meta = dict(
        date=datetime.date.today().isoformat(), device=f"cpu ({platform.processor() or platform.machine()})",
        threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
        last_level_cache_bytes=report.cache_bytes(torch.device("cpu")), quick=quick,
        load=dict(before=load_before, after=report.machine_load()),
    )  # fmt: skip
    report.write_results(out_dir, "host", meta, dict(host_cost=host_rows, cpu_backend=size_rows),
                         _markdown(meta, host_rows, size_rows))  # fmt: skip
    return 0


def _markdown(meta, host_rows, size_rows) -> str:
    lines = [
        f"# Host cost and CPU backend, {meta['date']}, {meta['device']}, {meta['threads']} threads, torch {meta['torch']}",
        "",
    ]
    note = report.load_note(meta["load"]["before"], meta["load"]["after"]).strip()
    lines += [note, ""] if note else []
    lines += [
        "## Host cost per step (tensors of 1-16 elements, real tensor counts; median us, ratio to torch fused + CyclicLR with its kernels stubbed; the float lr write rows: a new float written to group[lr] before every step, ratio to torch fused doing the same)",
        "",
    ]
    lines += ["| set | tensors | algo | provider | us/step | ratio |", "|---|---|---|---|---|---|"]
    for r in host_rows:
        lines.append(
            f"| {r['set']} | {r['tensors']} | {r['algo']} | {r['provider']} | {r['us_per_step']:.1f} | {report.speed_text(r['ratio_to_torch_fused_host'])} |"
        )
    lines += [
        "",
        f"## CPU backend at real sizes (median ms/step; copy GB/s: a copy over the step's memory, same threads, "
        f"best of 5, beside the case; 'fits in cache': that memory fits in the last-level cache of {meta['last_level_cache_bytes'] / 2**20:.0f} MiB)"
        + report.above_copy_note(r["pct_copy_bw"] for r in size_rows),
        "",
    ]
    lines += [
        "| set | params | dtype | algo | provider | ms/step | vs torch fused | GB/s | copy GB/s | % of copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in size_rows:
        lines.append(
            f"| {r['set']} | {r['params']:,} | {r['dtype']} | {r['algo']} | {r['provider']} | {r['ms_per_step']:.4g} | "
            f"{report.speed_text(r['ratio_to_torch_fused'])} | {r['gbps']:.3g} | {r['copy_gbps']:.3g} | {report.pct_text(r['pct_copy_bw'])} |"
        )
    return "\n".join(lines) + "\n"
