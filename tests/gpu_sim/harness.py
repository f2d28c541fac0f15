"""Runs clr_fused optimizers with their kernels launched on the CUDA emulator
and compares every output byte with the same optimizer on the compiled CPU
kernels.

The emulated optimizer is an ordinary ``backend="cpu"`` optimizer whose
buckets take the op path with Python-built tables (the path the CUDA
backend's DTensor / non-dense buckets take): ``tensor_tables.py`` builds the
address, element-count and chunk tables, ``csrc/step_entry.h`` checks and
packs them, and only the grid runs on the emulator.  The reference runs the
CPU kernels' FMA copy (AVX2 / AVX-512), which rounds as the GPU build does
(``kFma``, nvcc ``-fmad=false``), so the two must agree bit for bit.

Also runnable as a script (a subprocess with another build or a sanitizer
runtime): ``python -m tests.gpu_sim.harness LIB [CASE-SET [ORDER,ORDER.. [WORKERS]]]``
prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

import clr_fused as cf

CHUNK = 16384
# Awkward sizes: below, at and above a vector, a quantization block, a chunk; several chunks.
SIZES = [1, 3, 127, 128, 129, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5]
ORDERS = {"forward": 0, "reversed": 1, "shuffled": 2}
CATEGORIES = ["params", "grads", "state0", "state1", "state2", "scale0", "scale1", "scale2", "address tables", "numels",
              "chunk_tensor", "chunk_start", "schedule rows", "scalars", "step table", "steps", "fresh", "betas"]  # fmt: skip
WIDTHS = [1, 2, 4, 8, 16]
ELEMENT = CATEGORIES[:8]  # the element data: params, grads, state lists, int8 scales


def load(lib: str):
    torch.ops.load_library(lib)
    return torch.ops.clr_fused_sim


@contextlib.contextmanager
def on_emulator(ops):
    """Steps taken inside launch their kernels on the emulator (see the module doc)."""
    from clr_fused.kernels import compiled
    from clr_fused.optim import plan

    saved = compiled._ops, plan._checkable
    compiled._ops = lambda: ops
    plan._checkable = lambda bucket, i: False
    try:
        yield
    finally:
        compiled._ops, plan._checkable = saved


@dataclass
class Case:
    """One optimizer configuration: run ``steps`` steps on both paths."""

    name: str
    cls: str
    kw: dict[str, Any] = field(default_factory=dict)
    spec: Any = 0.01
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    dtype: torch.dtype = torch.float32
    steps: int = 3
    misalign: bool = True  # every third parameter starts one element into its storage
    scaler: bool = False  # grad_scale / found_inf read from the device (GradScaler's protocol); step 1 skipped
    start_step: int = 0  # the schedule counter before the first step (a run resumed far along)


def _params(case: Case, seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(case.sizes):
        off = 1 if case.misalign and i % 3 == 2 else 0
        base = torch.randn(n + off, generator=gen).to(case.dtype)
        out.append(torch.nn.Parameter(base[off:] if off else base))
    return out


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8) if t.dim() else t.detach().reshape(1).view(torch.uint8)


def _diff(a: Any, b: Any) -> int:
    """Differing bytes between two values (tensors by bits, numbers exactly)."""
    if isinstance(a, torch.Tensor):
        x, y = _bytes(a), _bytes(b)
        if x.shape != y.shape:
            return max(x.numel(), y.numel())
        return int((x != y).sum())
    if isinstance(a, (tuple, list)):
        return sum(_diff(u, v) for u, v in zip(a, b)) + abs(len(a) - len(b))
    return 0 if a == b else 1


@contextlib.contextmanager
def cpu_rounding_as_cuda():
    """The CPU build rounds every element as the CUDA kernels do: without the
    scalar-tail form torch's fused CPU Adam gives the last n % 8 elements of a
    tensor (csrc/cpu_ops.cpp, CLR_FUSED_CPU_TORCH_TAIL)."""
    old = os.environ.get("CLR_FUSED_CPU_TORCH_TAIL")
    os.environ["CLR_FUSED_CPU_TORCH_TAIL"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["CLR_FUSED_CPU_TORCH_TAIL"]
        else:
            os.environ["CLR_FUSED_CPU_TORCH_TAIL"] = old


def run_case(ops, case: Case) -> dict[str, Any]:
    """Differing bytes between the emulated and the CPU run, and what was compared."""
    a, b = _params(case, 0), _params(case, 0)
    cls = getattr(cf, case.cls)
    ref = cls(a, lr=case.spec, backend="cpu", **case.kw)
    sim = cls(b, lr=case.spec, backend="cpu", **case.kw)
    for opt in (ref, sim):
        if hasattr(opt, "train"):  # schedule-free: steps in train mode
            opt.train()
    if case.start_step:
        for opt in (ref, sim):
            opt.schedule_step.fill_(case.start_step)
    gen = torch.Generator().manual_seed(1)
    for step in range(case.steps):
        grads = [torch.randn(p.shape, generator=gen).to(case.dtype) for p in a]
        skip = case.scaler and step == 1
        for ps, opt in ((a, ref), (b, sim)):
            for p, g in zip(ps, grads):
                p.grad = (g * 4.0 if case.scaler else g).clone()
                if skip:
                    p.grad.view(-1)[0] = float("inf")
            if case.scaler:
                opt.grad_scale = torch.tensor(4.0)
                opt.found_inf = torch.tensor(float(skip))
            if opt is sim:
                with on_emulator(ops):
                    opt.step()
            else:
                with cpu_rounding_as_cuda():
                    opt.step()
            if step % 2 == 1:
                opt.report(torch.tensor(1.0))  # ReduceLROnPlateau: no improvement
    diffs: dict[str, int] = {}
    compared = 0
    for i, (pa, pb) in enumerate(zip(a, b)):
        diffs[f"param{i}"] = _diff(pa, pb)
        compared += _bytes(pa).numel()
        for key, va in ref.state[pa].items():
            vb = sim.state[pb][key]
            diffs[f"param{i}.{key}"] = _diff(va, vb)
            compared += _bytes(va).numel() if isinstance(va, torch.Tensor) else 1
    for gi, (ga, gb) in enumerate(zip(ref.param_groups, sim.param_groups)):
        for key in ("lr", "momentum", "betas", "lr_max", "weight_sum"):
            if key in ga:
                diffs[f"group{gi}.{key}"] = _diff(ga[key], gb[key])
    diffs["schedule_step"] = _diff(ref.schedule_step, sim.schedule_step)
    assert sim._plan is not None and all(bk.native_index < 0 for bk in sim._plan.buckets), (
        "the emulated run took the native path"
    )
    tickets = [int(bk.ticket.sum()) for bk in sim._plan.buckets]
    bad = {k: v for k, v in diffs.items() if v}
    return {"case": case.name, "differing_bytes": sum(bad.values()), "where": bad, "compared_bytes": compared,
            "tickets": tickets, "schedule_step": int(sim.schedule_step)}  # fmt: skip


def counted_bytes(
    ops, cls: str, kw: dict[str, Any], dtype: torch.dtype, n: int = 4 * CHUNK, steps: int = 2
) -> dict[str, Any]:
    """Bytes the kernel moves per parameter per step in the element data
    (``ELEMENT``), by category (distinct bytes per launch: what DRAM moves
    when each byte crosses once; and every thread's accesses) and access
    width (per thread), counted by the emulator's access hooks on one
    aligned tensor of ``n`` elements."""
    p = torch.nn.Parameter(torch.randn(n).to(dtype))
    opt = getattr(cf, cls)([p], lr=cf.CyclicLR(0.001, 0.01, 2), backend="cpu", **kw)
    p.grad = torch.randn(n).to(dtype)
    with on_emulator(ops):
        opt.step()  # creates the states (the first step's fresh momentum buffer included)
        ops.reset_counts()
        for _ in range(steps):
            opt.step()
    # per category (sim_bridge.h): read bytes, written bytes, reads by width, writes by width, distinct read / written
    c = ops.counts()
    assert c.shape == (len(CATEGORIES), 2 + 2 * len(WIDTHS) + 2), c.shape
    out: dict[str, Any] = {"per_param": {}, "thread_accesses_per_param": {}, "widths": {}}
    for i, name in enumerate(ELEMENT):
        rd, wr = int(c[i, 0]), int(c[i, 1])
        if rd or wr:
            out["thread_accesses_per_param"][name] = (rd + wr) / (n * steps)
            out["per_param"][name] = (int(c[i, 12]) + int(c[i, 13])) / (n * steps)
            out["widths"][name] = {"loads": {w: int(c[i, 2 + k]) for k, w in enumerate(WIDTHS) if c[i, 2 + k]},
                                   "stores": {w: int(c[i, 7 + k]) for k, w in enumerate(WIDTHS) if c[i, 7 + k]}}  # fmt: skip
    out["element_bytes_per_param"] = sum(out["per_param"].values())
    return out


_DTYPES = {"float": torch.float32, "bfloat16": torch.bfloat16, "half": torch.float16}


def variant_case(name: str) -> Case:
    """A case that launches kernel instantiation ``name`` ('adam<bfloat16,int8,NS=3,sr=1>',
    as the emulator build names them), with flags varied by the name's hash."""
    algo, rest = name.split("<")
    p, s, ns, sr = rest.rstrip(">").split(",")
    ns, sr = int(ns.split("=")[1]), sr == "sr=1"
    dtype = _DTYPES[p]
    kw: dict[str, Any] = {"stochastic_rounding": True} if sr else {}
    if s != p:
        kw["state_dtype"] = "int8" if s == "int8" else _DTYPES[s]
    odd = sum(map(ord, name)) % 2 == 1
    if algo in GENERIC:
        return generic_case(f"variant-{name}", algo, dtype, kw, odd)
    if algo == "sgd":
        kw.update(momentum=0.9 if ns else 0.0, weight_decay=0.01 if odd else 0.0, nesterov=bool(ns) and odd)
        # (a schedule that cycles momentum makes SGD keep a buffer: NS=0 needs one that does not)
        return Case(f"variant-{name}", "SGD", kw, cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=bool(ns)), dtype=dtype)
    kw.update(amsgrad=ns == 3, eps=1e-4 if dtype != torch.float32 else 1e-8, weight_decay=0.05 if odd else 0.0)
    return Case(
        f"variant-{name}",
        "AdamW" if odd else "Adam",
        kw,
        cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=odd),
        dtype=dtype,
    )


GENERIC = ("Lion", "SGDScheduleFree", "AdamWScheduleFree")  # csrc/algorithms.h's algorithms


def generic_case(name: str, algo: str, dtype: torch.dtype, kw: dict[str, Any], odd: bool, **case_kw) -> Case:
    """A case of an algorithm on the generic step (its flags varied by ``odd``; ``kw`` wins)."""
    if algo == "Lion":
        kw = dict(weight_decay=0.1 if odd else 0.0, betas=(0.9, 0.99) if odd else (0.95, 0.98)) | kw
        return Case(name, algo, kw, cf.CyclicLR(1e-4, 1e-3, 3, 2, cycle_momentum=odd), dtype=dtype, **case_kw)
    # schedule-free: a warm-up shorter than the run, the averaging's r and weight_lr_power, decay at y
    kw = dict(warmup_steps=2, r=0.5 if odd else 0.0, weight_lr_power=2.0 if odd else 1.0,
              weight_decay=0.01 if odd else 0.0) | kw  # fmt: skip
    if algo == "AdamWScheduleFree" and dtype != torch.float32:
        kw["eps"] = 1e-4
    spec = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=False) if odd else 0.01
    return Case(name, algo, kw, spec, dtype=dtype, **case_kw)


def case_sets(variants: list[str] = ()) -> dict[str, list[Case]]:
    """The cases by name: 'all' covers ``variants`` (every kernel instantiation
    the build can launch), every flag, schedule kind and input path; 'core' a
    few for the order sweeps."""
    from tests.test_triton import ADAM_FLAGS, SCHEDULES, SGD_FLAGS

    cyc = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=True, base_momentum=0.7, max_momentum=0.9)
    fixed = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=False)
    flags = [Case(f"SGD-{i}", "SGD", f, cyc if f["momentum"] else fixed) for i, f in enumerate(SGD_FLAGS)]
    flags += [Case(f"{c}-{i}", c, f, cyc) for c in ("Adam", "AdamW") for i, f in enumerate(ADAM_FLAGS)]
    bf16, fp16 = torch.bfloat16, torch.float16
    lowp = [
        Case("SGD-bf16", "SGD", dict(momentum=0.9, weight_decay=1e-3), cyc, dtype=bf16),
        Case("SGD-bf16-fp32state", "SGD", dict(momentum=0.9, state_dtype=torch.float32), cyc, dtype=bf16),
        Case("SGD-fp16", "SGD", dict(momentum=0.9, nesterov=True), cyc, dtype=fp16),
        Case("SGD-fp16-fp32state", "SGD", dict(momentum=0.9, state_dtype=torch.float32), cyc, dtype=fp16),
        Case("SGD-nomom-bf16-sr", "SGD", dict(stochastic_rounding=True), 0.01, dtype=bf16),
        Case("Adam-bf16", "Adam", dict(eps=1e-4), cyc, dtype=bf16),
        Case("AdamW-bf16-fp32state", "AdamW", dict(eps=1e-4, state_dtype=torch.float32), cyc, dtype=bf16),
        Case("Adam-fp16", "Adam", dict(eps=1e-4, amsgrad=True), cyc, dtype=fp16),
        Case("Adam-fp16-fp32state", "Adam", dict(eps=1e-4, state_dtype=torch.float32), cyc, dtype=fp16),
        Case("Adam-fp32-bf16state", "Adam", dict(state_dtype=bf16), cyc),
        Case("SGD-fp32-bf16state", "SGD", dict(momentum=0.9, state_dtype=bf16), cyc),
        Case("SGD-int8", "SGD", dict(momentum=0.9, state_dtype="int8", weight_decay=0.01), cyc, misalign=False),
        Case("SGD-int8-nesterov", "SGD", dict(momentum=0.9, nesterov=True, state_dtype="int8"), cyc),
        Case("Adam-int8", "Adam", dict(state_dtype="int8"), cyc, misalign=False),
        Case("AdamW-int8-amsgrad", "AdamW", dict(state_dtype="int8", amsgrad=True, weight_decay=0.1), cyc),
        Case("AdamW-bf16-int8-sr", "AdamW", dict(state_dtype="int8", stochastic_rounding=True), cyc, dtype=bf16),
        Case(
            "SGD-bf16-int8-sr", "SGD", dict(momentum=0.9, state_dtype="int8", stochastic_rounding=True), cyc, dtype=bf16
        ),
        Case("Adam-bf16-sr", "Adam", dict(stochastic_rounding=True), cyc, dtype=bf16),
        Case(
            "AdamW-bf16-bf16state-sr",
            "AdamW",
            dict(state_dtype=bf16, stochastic_rounding=True, amsgrad=True),
            cyc,
            dtype=bf16,
        ),
        Case("Adam-fp32-bf16state-sr", "Adam", dict(state_dtype=bf16, stochastic_rounding=True), cyc),
        # kahan_sum: the compensated copies of the element loops (plain and int8 blocks, aligned or not)
        Case("SGD-bf16-kahan", "SGD", dict(momentum=0.9, weight_decay=1e-3, kahan_sum=True), cyc, dtype=bf16),
        Case(
            "SGD-fp16-kahan-fp32state",
            "SGD",
            dict(momentum=0.9, state_dtype=torch.float32, kahan_sum=True),
            cyc,
            dtype=fp16,
        ),
        Case("AdamW-bf16-kahan-fp32state", "AdamW", dict(state_dtype=torch.float32, kahan_sum=True), cyc, dtype=bf16),
        Case("AdamW-bf16-kahan-int8", "AdamW", dict(state_dtype="int8", kahan_sum=True, amsgrad=True), cyc, dtype=bf16),
        Case(
            "SGD-bf16-kahan-int8",
            "SGD",
            dict(momentum=0.9, state_dtype="int8", kahan_sum=True),
            cyc,
            dtype=bf16,
            misalign=False,
        ),
        Case("Lion-bf16-kahan", "Lion", dict(weight_decay=0.1, kahan_sum=True), cyc, dtype=bf16),
        Case(
            "SGD-bf16-fp32state-sr",
            "SGD",
            dict(momentum=0.9, state_dtype=torch.float32, stochastic_rounding=True),
            cyc,
            dtype=bf16,
        ),
    ]
    small = [1, 129, CHUNK + 1]
    scheds = [Case(f"sched-{'sgd' if c == 'SGD' else 'adam'}-{i}-{type(s).__name__}", c, k, s, sizes=small, steps=7)
              for i, s in enumerate(SCHEDULES) for c, k in (("SGD", dict(momentum=0.9)), ("Adam", {}))]  # fmt: skip
    # kinds and branches the schedule list above leaves out: SGDR with T_mult 1, a constant, and a
    # warm-restart cycle past 2**50 steps (the walk's overflow guard), reached by a counter far along
    scheds += [Case("sched-sgdr-tmult1", "SGD", dict(momentum=0.9), cf.CosineAnnealingWarmRestarts(0.01, 2, 1, 0.001), sizes=small, steps=5),
               Case("sched-constant", "Adam", {}, cf.get_schedule("constant", 0.01), sizes=small, steps=3),
               Case("sched-sgdr-far", "Adam", {}, cf.CosineAnnealingWarmRestarts(0.01, 2**51 + 3, 8), sizes=small, steps=3,
                    start_step=2**52)]  # fmt: skip
    extra = [
        Case("Adam-scaler", "Adam", dict(amsgrad=True), cyc, scaler=True, steps=4),
        Case("SGD-scaler-int8", "SGD", dict(momentum=0.9, state_dtype="int8"), cyc, scaler=True, steps=4),
        Case("SGD-clip", "SGD", dict(momentum=0.9, max_grad_norm=0.5), cyc),
        Case("AdamW-clip-int8", "AdamW", dict(max_grad_norm=1.0, state_dtype="int8"), cyc),
        Case("Adam-tensor-betas", "Adam", dict(betas=(torch.tensor(0.85), torch.tensor(0.99))), 0.003),
    ]
    # the generic step: GradScaler's skip (the schedule-free running scalars stay), clipping, longer runs
    extra += [generic_case(f"{a}-scaler", a, torch.float32, {}, True, scaler=True, steps=4) for a in GENERIC]
    extra += [generic_case(f"{a}-clip", a, torch.float32, dict(max_grad_norm=0.5), False, steps=5) for a in GENERIC]
    # equal weights (r = 0, weight_lr_power = 0): the averaging weight 1 / (k + 1) falls below 0.5, with decay
    extra += [generic_case(f"{a}-equal-weights", a, torch.float32, dict(r=0.0, weight_lr_power=0.0), True, steps=5)
              for a in GENERIC[1:]]  # fmt: skip
    core = [
        Case("core-AdamW", "AdamW", dict(weight_decay=0.1), cyc),
        Case("core-SGD-nesterov", "SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01), cyc),
        Case("core-Adam-int8", "Adam", dict(state_dtype="int8", amsgrad=True), cyc),
        Case(
            "core-SGD-bf16-int8-sr",
            "SGD",
            dict(momentum=0.9, state_dtype="int8", stochastic_rounding=True),
            cyc,
            dtype=bf16,
        ),
    ]
    return {"all": [variant_case(v) for v in variants] + flags + lowp + scheds + extra, "core": core, "fp32": [c for c in core if c.dtype == torch.float32],
            "adamw": core[:1], "sgd": core[1:2], "int8": core[2:3]}  # fmt: skip


def run_set(ops, name: str, order: str = "forward", workers: int = 1, seed: int = 1) -> dict[str, Any]:
    ops.configure(ORDERS[order], seed, workers)
    results, errors = [], []
    for case in case_sets(ops.all_variants() if name == "all" else ())[name]:
        try:
            results.append(run_case(ops, case))
        except RuntimeError as e:  # the emulator's reports arrive as the op's RuntimeError
            errors.append({"case": case.name, "error": str(e).splitlines()[0][:600]})
    return {"order": order, "workers": workers, "results": results, "errors": errors,
            "differing_bytes": sum(r["differing_bytes"] for r in results),
            "compared_bytes": sum(r["compared_bytes"] for r in results)}  # fmt: skip


if __name__ == "__main__":
    lib, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fp32"
    orders = (sys.argv[3] if len(sys.argv) > 3 else "forward").split(",")
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    ops = load(lib)
    print(json.dumps([run_set(ops, name, order, workers) for order in orders]))
