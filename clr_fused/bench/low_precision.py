"""``clr-fused bench --low-precision``: fewer bytes per step.

The CPU step at real sizes (ResNet-50, GPT-2 small) with fp32 / bf16 /
int8 optimizer states and with bf16 parameters (stochastic rounding, or
kahan_sum's compensation buffer), against
torch's fused step at the same parameter dtype (its states are the
parameter's dtype) and against the 8-bit AdamW of torchao and bitsandbytes
where they run on this machine; every optimizer with its LR schedule
(torch's CyclicLR stepped from Python for the others, on the device for
ours).  Providers of one parameter dtype run interleaved in one process
(they share the gradients); medians, ratios of medians.

Beside each measured row, the bytes a step must move per parameter and a
roofline MODEL of the same step on an H100 (``model.H100``: bytes over the
attained bandwidth; not a measurement).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import platform
from collections.abc import Callable

import torch
from torch.optim import lr_scheduler as L

import clr_fused as cf

from .. import _ext
from ..kernels import low_precision as lp
from . import counted, report
from .host import _interleaved
from .model import H100
from .param_sets import resnet50, transformer

BASE_LR, MAX_LR, STEP_UP = 1e-4, 1e-3, 2000


_STATE_BYTES = {"fp32": lambda p: 4.0, "bf16": lambda p: 2.0, "int8": lambda p: 1.0 + 4.0 / lp.QBLOCK, "param": float}


def bytes_per_param(algo: str, param: torch.dtype, state: str) -> float:
    """Bytes one step moves per parameter: the parameter read and written,
    the gradient read, each state read and written (Adam 2 states, SGD 1);
    int8 states also read and write one float32 scale per 128 elements."""
    p = torch.empty((), dtype=param).element_size()
    n_states = 2 if algo == "adamw" else 1
    return 3 * p + n_states * 2 * _STATE_BYTES[state](p)


def footprint_per_param(algo: str, param: torch.dtype, state: str) -> float:
    """Distinct bytes per parameter (an in-place update reads each once): the
    parameter, its gradient and each state (int8: with its share of a scale)."""
    p = torch.empty((), dtype=param).element_size()
    n_states = 2 if algo == "adamw" else 1
    return 2 * p + n_states * _STATE_BYTES[state](p)


def _bytes(provider: str, algo: str, param: torch.dtype, state: str) -> float:
    """Our rows: the bytes counted from the CUDA kernels' loads and stores (counted.py); others: the formula
    (kahan_sum: plus its compensation buffer, read and written, in the parameter's dtype)."""
    if "Kahan" in provider:
        return bytes_per_param(algo, param, state) + 2 * torch.empty((), dtype=param).element_size()
    if provider.startswith("clr_fused"):
        pname = str(param).replace("torch.", "")
        same = {"float32": "fp32", "bfloat16": "bf16"}.get(pname)
        got = counted.bytes_per_param(
            algo, pname, "param" if state == same else state, "stochastic rounding" in provider
        )
        if got is not None:
            return got
    return bytes_per_param(algo, param, state)


def _params(shapes, dtype, grads):
    ps = []
    for s, g in zip(shapes, grads):
        p = torch.nn.Parameter(torch.randn(s, dtype=torch.float32).to(dtype))
        p.grad = g if g.dtype == dtype else g.to(dtype)
        ps.append(p)
    return ps


def _with_cyclic(opt) -> Callable[[], None]:
    sched = L.CyclicLR(opt, BASE_LR, MAX_LR, step_size_up=STEP_UP, cycle_momentum=False)

    def step():
        opt.step()
        sched.step()

    return step


def _ours(algo: str, params, **kw) -> Callable[[], None]:
    cls, extra = (cf.AdamW, {}) if algo == "adamw" else (cf.SGD, dict(momentum=0.9))
    opt = cls(params, lr=cf.CyclicLR(BASE_LR, MAX_LR, STEP_UP, cycle_momentum=False), backend="cpu", **extra, **kw)
    return opt.step


def _torch(algo: str, params) -> Callable[[], None]:
    if algo == "adamw":
        return _with_cyclic(torch.optim.AdamW(params, lr=MAX_LR, fused=True))
    return _with_cyclic(torch.optim.SGD(params, lr=MAX_LR, momentum=0.9, fused=True))


def _peers(algo: str, shapes, grads, dtype) -> tuple[dict, dict]:
    """torchao's and bitsandbytes' 8-bit AdamW, where they import and run here."""
    found, missing = {}, {}
    if algo != "adamw":
        return found, missing
    makers = {}
    try:
        from torchao.optim import AdamW8bit as AoAdamW8bit

        makers["torchao AdamW8bit"] = lambda ps: AoAdamW8bit(ps, lr=MAX_LR)
    except Exception as e:  # noqa: BLE001  (any import failure: reported as such)
        missing["torchao AdamW8bit"] = f"import failed: {type(e).__name__}: {e}"
    try:
        import bitsandbytes as bnb

        makers["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=MAX_LR)
    except Exception as e:  # noqa: BLE001
        missing["bitsandbytes AdamW8bit"] = f"import failed: {type(e).__name__}: {e}"
    for name, make in makers.items():
        try:
            fn = _with_cyclic(make(_params(shapes, dtype, grads)))
            fn()  # it runs on this device, or it is reported
            found[name] = fn
        except Exception as e:  # noqa: BLE001
            missing[name] = f"does not run here: {type(e).__name__}: {str(e)[:200]}"
    return found, missing


def run_set(set_name: str, shapes, rounds: int, steps: int, progress) -> tuple[list[dict], dict]:
    n = sum(math.prod(s) for s in shapes)
    cpu, cache = torch.device("cpu"), report.cache_bytes(torch.device("cpu"))
    rows, missing_all = [], {}
    gen = torch.Generator().manual_seed(0)
    grads32 = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    for algo in ("adamw", "sgd-momentum"):
        for pdt in (torch.float32, torch.bfloat16):
            grads = grads32 if pdt == torch.float32 else [g.to(pdt) for g in grads32]
            ref_name = f"torch fused ({'fp32' if pdt == torch.float32 else 'bf16'} states)"
            providers = {ref_name: (_torch(algo, _params(shapes, pdt, grads)), "param")}
            if pdt == torch.float32:
                for state, sdt in (("fp32", None), ("bf16", torch.bfloat16), ("int8", "int8")):
                    providers[f"clr_fused cpu, {state} states"] = (
                        _ours(algo, _params(shapes, pdt, grads), state_dtype=sdt),
                        state,
                    )
            else:
                for state, sdt in (("bf16", None), ("int8", "int8")):
                    providers[f"clr_fused cpu, {state} states, stochastic rounding"] = (
                        _ours(algo, _params(shapes, pdt, grads), state_dtype=sdt, stochastic_rounding=True), state)  # fmt: skip
                    providers[f"clr_fused cpu, {state} states, Kahan"] = (
                        _ours(algo, _params(shapes, pdt, grads), state_dtype=sdt, kahan_sum=True), state)  # fmt: skip
            peers, missing = _peers(algo, shapes, grads, pdt)
            for name, fn in peers.items():
                providers[name] = (fn, "int8")
            missing_all.update({f"{k} ({set_name}, {pdt})": v for k, v in missing.items()})
            copy_bw = report.copy_bandwidth(cpu, footprint_per_param(algo, pdt, "param") * n)
            med = _interleaved({k: (fn, contextlib.nullcontext) for k, (fn, _) in providers.items()}, steps, rounds)
            ref = med[ref_name]
            for name, ms in med.items():
                state = providers[name][1]
                b = _bytes(name, algo, pdt, state)
                gbps = b * n / (ms / 1e3) / 1e9
                model_ms = b * n / H100.bandwidth * 1e3
                rows.append(dict(set=set_name, params=n, algo=algo, param_dtype=str(pdt).replace("torch.", ""),
                                 provider=name, state=state, bytes_per_param=b, ms_per_step=ms, ratio_to_torch_fused=ms / ref,
                                 gbps=gbps, copy_gbps=copy_bw, pct_copy_bw=report.pct_of_copy(gbps, copy_bw, footprint_per_param(algo, pdt, state) * n, cache), h100_model_ms=model_ms,
                                 h100_model_ratio=b / bytes_per_param(algo, pdt, "param")))  # fmt: skip
            del providers, peers
            progress.update(1)
    return rows, missing_all


def main(out_dir: str, quick: bool = False) -> int:
    from tqdm import tqdm

    if _ext.load() is None:
        print(f"clr-fused bench --low-precision needs the compiled extension: {_ext.error()}")
        return 1
    sets = {"resnet50": resnet50(), "gpt2-small": transformer(768, 12)}
    rounds, steps = 5, 2
    if quick:
        sets = {"small": [(256, 200), (1000,), (3, 3, 64, 64), (17,)]}
        rounds, steps = 3, 1
    load_before = report.machine_load()
    rows, missing = [], {}
    with tqdm(total=len(sets) * 4, desc="bench --low-precision", unit="case") as bar:
        for name, shapes in sets.items():
            r, m = run_set(name, shapes, rounds, steps, bar)
            rows += r
            missing.update(m)
    meta = dict(
        date=datetime.date.today().isoformat(), device=f"cpu ({platform.processor() or platform.machine()})",
        threads=torch.get_num_threads(), torch=torch.__version__, quick=quick,
        last_level_cache_bytes=report.cache_bytes(torch.device("cpu")), load=dict(before=load_before, after=report.machine_load()),
        isa=_ext.load().cpu_isa() if hasattr(_ext.load(), "cpu_isa") else None, peers_missing=missing,
    )  # fmt: skip
    report.write_results(out_dir, "low-precision", meta, dict(rows=rows), markdown(meta, rows))
    return 0


def markdown(meta, rows) -> str:
    lines = [f"# Low-precision states, CPU step, {meta['date']}, {meta['device']}, {meta['threads']} threads, "
             f"torch {meta['torch']}, last-level cache {meta['last_level_cache_bytes'] / 2**20:.0f} MiB", "",
             "Median ms per step (optimizer + LR schedule), providers of one parameter dtype interleaved; ratio to "
             "torch fused at the same parameter dtype. B/param: bytes a step moves per parameter (clr_fused rows: counted from "
             "the CUDA kernels' own loads and stores by the CUDA emulator, tests/gpu_sim). H100 columns: a "
             "roofline MODEL (bytes / 3.0 TB/s), not a measurement. copy GB/s: a copy over the memory of torch's step at this "
             "parameter dtype, same threads, best of 5, beside the case; 'fits in cache': the row's parameters, gradients and "
             "states fit in the last-level cache." + report.above_copy_note(r["pct_copy_bw"] for r in rows) + report.load_note(meta["load"]["before"], meta["load"]["after"]), "",
             "| set | algo | params | provider | B/param | ms/step | vs torch fused | GB/s | copy GB/s | % of copy | H100 model ms | model ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['set']} | {r['algo']} | {r['param_dtype']} | {r['provider']} | {r['bytes_per_param']:.2f} | "
                     f"{r['ms_per_step']:.4g} | {report.speed_text(r['ratio_to_torch_fused'])} | {r['gbps']:.3g} | {r['copy_gbps']:.3g} | {report.pct_text(r['pct_copy_bw'])} | "
                     f"{r['h100_model_ms']:.3f} | {r['h100_model_ratio']:.3f} |")  # fmt: skip
    if meta["peers_missing"]:
        lines += ["", "Peers that did not run here:", ""] + [f"- {k}: {v}" for k, v in meta["peers_missing"].items()]
    return "\n".join(lines) + "\n"
