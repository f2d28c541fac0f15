"""``clr-fused bench``: the optimizer step against stock torch.optim + lr_scheduler.

In one process, on the same parameter sets: torch's ``foreach`` and ``fused``
optimizers with ``CyclicLR`` stepped on the host after every step (what users
run today), torch's ``fused=True, capturable=True`` with a tensor LR, and
clr_fused with every backend that works here, eager and (on CUDA) graph
captured; plus the full mixed-precision step (unscale + inf check + clip +
schedule + update).  Figures: median ms/step (CUDA events on a GPU,
perf_counter on the CPU), host ms per ``step()`` call, achieved GB/s from the
bytes a step must move against a copy of the same traffic measured beside
it (bench/report.py: "fits in cache" where the step's bytes do), ratios to
each torch provider, peak memory, the machine's load.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf

from .. import backends
from . import report
from .param_sets import numel, param_sets
from .traffic import bytes_per_param, footprint_per_param

BASE_LR, MAX_LR, STEP_UP = 1e-4, 1e-3, 2000


@dataclass
class Row:
    param_set: str
    algo: str
    dtype: str
    provider: str
    ms: float
    host_ms: float
    gbps: float
    copy_gbps: float  # a copy moving this step's bytes, measured beside it (report.copy_bandwidth)
    pct_copy_bw: float | None  # None: the step's bytes fit in the last-level cache
    peak_mib: float | None
    n_params: int
    n_tensors: int
    model_ms: float | None = None  # on a GPU: the H100 roofline MODEL's prediction for this provider (bench/model.py)
    interleaved: bool = True  # timed interleaved with the case's other providers (False: one at a time, memory)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_one(fn: Callable[[], None], device) -> tuple[float, float]:
    """(device ms, host ms) of one call: CUDA events on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - t0) * 1e3
        end.record()
        end.synchronize()
        return start.elapsed_time(end), host
    t0 = time.perf_counter()
    fn()
    host = (time.perf_counter() - t0) * 1e3
    return host, host


def _time_interleaved(
    steps: dict[str, Callable[[], None]], device, warmup: int, reps: int
) -> dict[str, tuple[float, float]]:
    """Median (device ms, host ms) per call of each step; every round times one
    call of each, in a rotating order, so a machine's drift or a neighbour's
    load hits all providers alike (the ratios are of these medians)."""
    names = list(steps)
    for n in names:
        for _ in range(warmup):
            steps[n]()
    _sync(device)
    dev: dict[str, list[float]] = {n: [] for n in names}
    host: dict[str, list[float]] = {n: [] for n in names}
    for order in report.rotations(names, reps):
        for n in order:
            d, h = _time_one(steps[n], device)
            dev[n].append(d)
            host[n].append(h)
    return {n: (statistics.median(dev[n]), statistics.median(host[n])) for n in names}


def _params(shapes, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32).to(device, dtype))
        p.grad = torch.randn(s, generator=gen, dtype=torch.float32).to(device, dtype) * 1e-3
        ps.append(p)
    return ps


def _torch_opt(algo, params, **kw):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[algo]
    extra = dict(momentum=0.9) if algo == "sgd" else {}
    return cls(params, lr=MAX_LR, **extra, **kw)


def _cf_opt(algo, params, backend, **kw):
    cls = {"sgd": cf.SGD, "adam": cf.Adam, "adamw": cf.AdamW}[algo]
    extra = dict(momentum=0.9) if algo == "sgd" else {}
    spec = cf.CyclicLR(BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False)
    return cls(params, lr=spec, backend=backend, **extra, **kw)


def _captured(step, device):
    """``step`` captured in a CUDA graph after warm-up; returns the replay."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def providers(algo: str, params, device, include_amp: bool):
    """name -> zero-arg step function, built lazily (each builds its own state)."""
    cuda = device.type == "cuda"
    out: dict[str, Callable[[], Callable[[], None]]] = {}

    def torch_with_host_clr(**kw):
        def build():
            opt = _torch_opt(algo, params, **kw)
            sched = L.CyclicLR(opt, BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False)
            return lambda: (opt.step(), sched.step())

        return build

    out["torch-foreach+CyclicLR"] = torch_with_host_clr(foreach=True)
    out["torch-fused+CyclicLR"] = torch_with_host_clr(fused=True)
    if cuda and algo != "sgd":

        def capturable():
            opt = _torch_opt(algo, params, fused=True, capturable=True)
            opt.param_groups[0]["lr"] = torch.tensor(MAX_LR, device=device)
            sched = L.CyclicLR(opt, BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False)
            return lambda: (opt.step(), sched.step())

        out["torch-fused-capturable+CyclicLR"] = capturable
    for backend in ("torch", "triton", "cuda", "cpu"):
        if backends.why_unavailable(backend, device) is not None:
            continue
        if device.type == "cpu" and backend == "triton":
            continue  # TRITON_INTERPRET runs kernels as numpy: a correctness tool, not a benchmark
        out[f"cf-{backend}"] = (lambda b: lambda: _cf_opt(algo, params, b).step)(backend)
        if cuda and backend != "torch":
            out[f"cf-{backend}-graph"] = (lambda b: lambda: _captured(_cf_opt(algo, params, b).step, device))(backend)
    if include_amp and cuda:
        out.update(_amp_providers(algo, params, device))
    return out


def _amp_providers(algo, params, device):
    """The full mixed-precision step: unscale + inf check + clip + schedule + update."""

    def torch_amp():
        opt = _torch_opt(algo, params, fused=True)
        sched = L.CyclicLR(opt, BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False)
        scaler = torch.amp.GradScaler("cuda", init_scale=1.0, growth_interval=10**9)

        def step():
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            scaler.step(opt)
            scaler.update()
            sched.step()

        return step

    def cf_amp(backend):
        def build():
            opt = _cf_opt(algo, params, backend, max_grad_norm=1.0)
            scaler = torch.amp.GradScaler("cuda", init_scale=1.0, growth_interval=10**9)
            return lambda: (scaler.step(opt), scaler.update())

        return build

    out = {"amp:torch-fused+clip+CyclicLR": torch_amp}
    for backend in ("triton", "cuda"):
        if backends.why_unavailable(backend, device) is None:
            out[f"amp:cf-{backend}"] = cf_amp(backend)
    return out


def run(
    device: torch.device,
    full: bool,
    algos=("adam", "sgd"),
    dtypes=(torch.float32, torch.bfloat16),
    warmup=None,
    reps=None,
):
    cuda = device.type == "cuda"
    warmup = warmup or (10 if cuda else 2)
    reps = reps or (50 if cuda else 5)
    from tqdm.auto import tqdm

    cache = report.cache_bytes(device)
    rows: list[Row] = []
    sets = param_sets(full)
    dts = dtypes if cuda else (torch.float32,)
    bar = tqdm(total=len(sets) * len(dts) * len(algos), desc="clr-fused bench", unit="case")
    for set_name, shapes in sets.items():
        n = numel(shapes)
        for dtype in dts:
            params = _params(shapes, dtype, device)
            base_mem = torch.cuda.memory_allocated(device) if cuda else 0  # parameters and gradients
            for algo in algos:
                bar.set_postfix_str(f"{set_name} {algo} {str(dtype).replace('torch.', '')}")
                bar.update(1)
                model = model_prediction(set_name, shapes, algo, dtype) if cuda else None
                step_bytes, footprint = n * bytes_per_param(algo, dtype), n * footprint_per_param(algo, dtype)
                copy_bw = report.copy_bandwidth(device, footprint)
                makers = providers(algo, params, device, include_amp=dtype == torch.float32)
                state_bytes = n * (footprint_per_param(algo, dtype) - 2 * torch.empty((), dtype=dtype).element_size())
                together = _fits_together(device, len(makers) * state_bytes)
                built: dict[str, Callable[[], None]] = {}
                peaks: dict[str, float | None] = {}
                timed: dict[str, tuple[float, float]] = {}
                for name, build in makers.items():
                    before = torch.cuda.memory_allocated(device) if cuda else 0
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        built[name] = build()
                        built[name]()  # it runs here, or it is reported
                    except Exception as exc:  # a provider that cannot run here is reported, not fatal
                        built.pop(name, None)
                        print(f"  {set_name} {algo} {name}: skipped ({type(exc).__name__}: {exc})")
                        continue
                    # its own peak: parameters, gradients and what it allocated (not the other providers' states)
                    peaks[name] = (
                        (torch.cuda.max_memory_allocated(device) - before + base_mem) / 2**20 if cuda else None
                    )
                    if not together:  # too big to hold every provider's states at once: one at a time
                        timed.update(_time_interleaved({name: built.pop(name)}, device, warmup, reps))
                        if cuda:
                            torch.cuda.empty_cache()
                if together:
                    timed = _time_interleaved(built, device, warmup, reps)
                for name, (ms, host_ms) in timed.items():
                    gbps = step_bytes / (ms * 1e-3) / 1e9
                    rows.append(Row(set_name, algo, str(dtype).replace("torch.", ""), name, ms, host_ms, gbps, copy_bw,
                                    report.pct_of_copy(gbps, copy_bw, footprint, cache), peaks[name], n,
                                    len(shapes), None if model is None else predicted_ms(name, model), together))  # fmt: skip
                del built, timed
            del params
            if cuda:
                torch.cuda.empty_cache()
    bar.close()
    return cache, rows


def _fits_together(device, nbytes: int) -> bool:
    """Whether every provider's states fit in memory at once (with room to
    spare), so their steps can be timed interleaved."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return True
    return nbytes * 1.25 < 0.6 * free


def model_prediction(set_name: str, shapes, algo: str, dtype: torch.dtype) -> dict:
    """The roofline MODEL's H100 row for one case (bench/model.py), once per case."""
    from .model import predict

    return predict(set_name, shapes, "adam" if algo.startswith("adam") else "sgd-momentum", dtype)


def predicted_ms(provider: str, model: dict) -> float | None:
    """The model's time for the device work of a provider that it models
    (torch fused; our fused kernels, eager or graph), else None."""
    if provider.startswith("torch-fused"):
        return model["torch_fused_ms"]
    if provider.startswith(("cf-cuda", "cf-triton")):
        return model["ours_ms"]
    return None


def _commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _ratios(rows: list[Row]) -> dict[tuple, dict[str, float]]:
    """provider ms / torch provider ms, per (set, algo, dtype)."""
    out = {}
    for r in rows:
        key = (r.param_set, r.algo, r.dtype)
        base = {
            b.provider: b.ms
            for b in rows
            if (b.param_set, b.algo, b.dtype) == key and b.provider.startswith(("torch-", "amp:torch"))
        }
        out[(key, r.provider)] = {
            f"vs {k}": r.ms / v for k, v in base.items() if (k.startswith("amp:") == r.provider.startswith("amp:"))
        }
    return out


def markdown(device_name: str, cache: int, rows: list[Row], load: str = "") -> str:
    ratios = _ratios(rows)
    modelled = any(r.model_ms is not None for r in rows)  # on a GPU: the model's column
    lines = [
        f"Device: {device_name}; {torch.get_num_threads()} threads; last-level cache {cache / 2**20:.0f} MiB; torch {torch.__version__}; "
        f"CyclicLR stepped on the host for torch providers. 'copy GB/s': a copy over the step's memory "
        f"(parameters, gradients, states; at most {report.copy_cap(cache) >> 20} MiB), "
        "same threads, best of 5, measured beside the case; 'fits in cache': that memory fits in the last-level cache. "
        "A case's providers are timed interleaved (one call each per round, rotating order); ratios are of medians."
        + report.above_copy_note(r.pct_copy_bw for r in rows)
        + ("" if all(r.interleaved for r in rows) else " Rows marked 'alone' were timed one provider at a time "
           "(every provider's states together did not fit in memory).")
        + load
        + (" 'H100 model ms' is the roofline MODEL's prediction (`clr-fused bench --model h100`), not a measurement."
           if modelled else ""),
        "",
        "| set | algo | dtype | provider | ms/step | host ms/call | GB/s | copy GB/s | % of copy | vs torch-fused+CyclicLR | peak MiB |"
        + (" H100 model ms |" if modelled else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if modelled else ""),
    ]  # fmt: skip
    for r in rows:
        rel = ratios[((r.param_set, r.algo, r.dtype), r.provider)]
        vs = rel.get("vs torch-fused+CyclicLR", rel.get("vs amp:torch-fused+clip+CyclicLR"))
        lines.append(
            f"| {r.param_set} | {r.algo} | {r.dtype} | {r.provider}{'' if r.interleaved else ' (alone)'} | {r.ms:.4g} | {r.host_ms:.4g} | {r.gbps:.3g} | {r.copy_gbps:.3g} | "
            f"{report.pct_text(r.pct_copy_bw)} | {'' if vs is None else report.speed_text(vs)} | {'' if r.peak_mib is None else f'{r.peak_mib:.0f}'} |"
            + ("" if not modelled else f" {'' if r.model_ms is None else f'{r.model_ms:.3f} (model)'} |")
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.param_set, r.algo, r.dtype) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.2 * len(groups)), squeeze=False)
    for ax, key in zip(axes[:, 0], groups):
        sel = [r for r in rows if (r.param_set, r.algo, r.dtype) == key]
        ax.barh(
            [r.provider for r in sel],
            [r.ms for r in sel],
            color=["tab:gray" if r.provider.startswith(("torch", "amp:torch")) else "tab:blue" for r in sel],
        )
        ax.set_title(" / ".join(key), fontsize=9)
        ax.set_xlabel("ms per step (median)")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool = False, out_dir: str = "clr-fused-bench") -> int:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    device_name = (
        torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    if not cuda:
        print(
            "No CUDA device: CPU-sized sets; torch providers, clr_fused's torch and cpu backends. GPU figures need a GPU: run `clr-fused bench` there."
        )
    load_before = report.machine_load()
    cache, rows = run(device, full=cuda and not quick, algos=("adam",) if quick else ("adam", "sgd"))
    load_after = report.machine_load()
    table = markdown(device_name, cache, rows, report.load_note(load_before, load_after))
    print(table)
    os.makedirs(out_dir, exist_ok=True)
    date = datetime.date.today().isoformat()
    slug = "".join(c if c.isalnum() else "-" for c in device_name.split(" (")[0].lower()).strip("-")
    stem = os.path.join(out_dir, f"{slug}-{date}")
    meta = {
        "device": device_name,
        "date": date,
        "commit": _commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "last_level_cache_bytes": cache,
        "load": {"before": load_before, "after": load_after},
        "quick": quick,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    ratios = _ratios(rows)
    with open(stem + ".json", "w") as f:
        json.dump(
            {
                **meta,
                "rows": [{**asdict(r), "ratios": ratios[((r.param_set, r.algo, r.dtype), r.provider)]} for r in rows],
            },
            f,
            indent=1,
        )
    with open(stem + ".md", "w") as f:
        f.write(table)
    plot(rows, stem + ".png")
    print(f"wrote {stem}.json, {stem}.md, {stem}.png")
    return 0
