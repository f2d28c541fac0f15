"""Triton device functions: the schedule closed forms of ``schedule_math.py``.

The generated kinds' functions are traced from their closed forms there
(``schedule_codegen``, compiled below at import); the others (CyclicLR,
OneCycleLR, SGDR, a table, the plateau) mirror their namesakes there line by
line.  The rows come from a
float64 device table (``[n_segments, ROW_WIDTH]``) and the step from the
device counter (int64).  Integer parts stay int64, the rest is float64 (the
program that evaluates it runs once per step); the caller rounds once to the
float32 value it stores.
Every kind is evaluated branch-free and selected with ``tl.where``, which
keeps the code uniform and costs a few hundred scalar flops per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import schedule_codegen
from .. import schedule_math as sm

# The kind codes, read from their one definition (schedule_math.py) as
# constexprs.  Float constants stay literals: the interpreter (Triton 3.8)
# cannot pass a constexpr-derived value to tl.cos.
_CYCLIC = tl.constexpr(sm.KIND_CYCLIC)
_ONE_CYCLE = tl.constexpr(sm.KIND_ONE_CYCLE)
_WARM_RESTARTS = tl.constexpr(sm.KIND_WARM_RESTARTS)
_PLATEAU = tl.constexpr(sm.KIND_PLATEAU)
_TABLE = tl.constexpr(sm.KIND_TABLE)
assert sm.ROW_WIDTH == 16, "evaluate_rows strides rows by 16"


@triton.jit
def _f64(ptr, i):
    return tl.load(ptr + i).to(tl.float64)


@triton.jit
def _i64(ptr, i):
    return tl.load(ptr + i).to(tl.int64)


@triton.jit
def _pow(base, exponent):
    # base**exponent for base > 0 (base <= 0 gives 0), as TORCH_OPS.pow.
    safe = tl.where(base > 0.0, base, 1.0)
    return tl.where(base > 0.0, tl.exp2(exponent * tl.log2(safe)), 0.0)


@triton.jit
def _cos_weight(frac):
    c = tl.cos(frac * 1.5707963267948966)  # pi / 2
    return c * c


@triton.jit
def _anneal(start, end, pct, linear):
    w = tl.where(linear, 1.0 - pct, _cos_weight(pct))
    return end + (start - end) * w


@triton.jit
def _cyclic(p, k):
    base_lr = _f64(p, 0)
    max_lr = _f64(p, 1)
    up = tl.maximum(_i64(p, 2), 1)
    down = tl.maximum(_i64(p, 3), 1)
    mode = _i64(p, 4)
    gamma = _f64(p, 5)
    base_m = _f64(p, 6)
    max_m = _f64(p, 7)
    total = up + down
    cycle = k // total + 1
    pos = k % total
    posf = pos.to(tl.float64)
    scale = tl.where(pos <= up, posf / up.to(tl.float64), (total.to(tl.float64) - posf) / down.to(tl.float64))
    amp = tl.where(mode == 1, tl.exp2(-(cycle - 1).to(tl.float64)), 1.0)  # 0.5**(cycle-1)
    amp = tl.where(mode == 2, _pow(gamma, k.to(tl.float64)), amp)
    lr = base_lr + (max_lr - base_lr) * scale * amp
    mom = max_m - (max_m - base_m) * scale * amp
    return lr, mom


@triton.jit
def _one_cycle(p, k):
    initial_lr = _f64(p, 0)
    max_lr = _f64(p, 1)
    min_lr = _f64(p, 2)
    end1 = _f64(p, 3)
    end2 = _f64(p, 4)
    three_phase = _f64(p, 5) != 0.0
    linear = _f64(p, 6) != 0.0
    base_m = _f64(p, 7)
    max_m = _f64(p, 8)
    total = tl.maximum(_i64(p, 9), 2)
    kf = tl.minimum(k, total - 1).to(tl.float64)
    last = (total - 1).to(tl.float64)
    pct1 = kf / tl.where(end1 != 0.0, end1, 1.0)
    # two phases: [0, end1] up, then down to the last step
    two_pct2 = (kf - end1) / (last - end1)
    lr2 = tl.where(kf <= end1, _anneal(initial_lr, max_lr, pct1, linear), _anneal(max_lr, min_lr, two_pct2, linear))
    mom2 = tl.where(kf <= end1, _anneal(max_m, base_m, pct1, linear), _anneal(base_m, max_m, two_pct2, linear))
    # three phases: up, back down to initial by end2, then down to min
    pct2 = (kf - end1) / tl.where(end2 != end1, end2 - end1, 1.0)
    pct3 = (kf - end2) / tl.where(last != end2, last - end2, 1.0)
    lr3 = tl.where(
        kf <= end1,
        _anneal(initial_lr, max_lr, pct1, linear),
        tl.where(kf <= end2, _anneal(max_lr, initial_lr, pct2, linear), _anneal(initial_lr, min_lr, pct3, linear)),
    )
    mom3 = tl.where(
        kf <= end1,
        _anneal(max_m, base_m, pct1, linear),
        tl.where(kf <= end2, _anneal(base_m, max_m, pct2, linear), max_m),
    )
    return tl.where(three_phase, lr3, lr2), tl.where(three_phase, mom3, mom2)


@triton.jit
def _warm_restarts(p, k):
    base_lr = _f64(p, 0)
    t_0 = tl.maximum(_i64(p, 1), 1)
    t_mult = tl.maximum(_i64(p, 2), 1)
    eta_min = _f64(p, 3)
    # Walk the cycles as schedule_math.restart_table / schedule.cuh do: exact
    # int64, no overflow (every integer <= 2**53), at most 64 iterations.
    start = k * 0
    length = t_0 + k * 0
    t_i = length.to(tl.float64)
    last = t_mult == 1
    while (last == 0) & (start + length <= k):
        start = start + length
        big = length > 9007199254740992 // t_mult  # 2**53: the next cycle would start past any step
        last = big
        grown = length * tl.where(big, 1, t_mult)  # (no int64 overflow in the discarded branch)
        t_i = tl.where(big, length.to(tl.float64) * t_mult.to(tl.float64), grown.to(tl.float64))
        length = grown
    t_cur = tl.where(t_mult == 1, k % t_0, k - start)
    t_i = tl.where(t_mult == 1, t_0.to(tl.float64), t_i)
    return eta_min + (base_lr - eta_min) * _cos_weight(t_cur.to(tl.float64) / t_i)


@triton.jit
def _py_floordiv(a, b):
    # Python's // on int64 (floor; 0 for a zero divisor, as schedule.cuh's py_floordiv)
    safe = tl.where(b == 0, 1, b)
    q = a // safe
    r = a - q * safe
    q = tl.where((r != 0) & ((r < 0) != (safe < 0)), q - 1, q)
    return tl.where(b == 0, 0, q)


@triton.jit
def _py_mod(a, b):
    return tl.where(b == 0, 0, a - _py_floordiv(a, b) * b)


# The generated kinds' functions and _generated_lr(kind, p, k, lr), traced from
# schedule_math's closed forms (schedule_codegen).
schedule_codegen.exec_source(schedule_codegen.triton_source(sm), globals())


@triton.jit
def evaluate_row(row, k, plateau_lr, HAS_PLATEAU: tl.constexpr):
    """``(lr, momentum)`` of the segment at ``row`` (float64*) at local step k."""
    kind = _i64(row, 1)
    p = row + 2
    lr = _f64(p, 0)  # KIND_CONSTANT and KIND_PLATEAU's static value
    lr = _generated_lr(kind, p, k, lr)  # noqa: F821 - defined by exec_source above
    if kind == _WARM_RESTARTS:
        lr = _warm_restarts(p, k)
    if kind == _TABLE:  # LambdaLR table [base_lr, n, offset]: row[offset + min(k, n - 1)]
        j = tl.minimum(k, _i64(p, 1) - 1)
        lr = _f64(p, 0) * tl.load(row + _i64(p, 2) + j)
    cyc_lr, cyc_mom = _cyclic(p, k)
    one_lr, one_mom = _one_cycle(p, k)
    lr = tl.where(kind == _CYCLIC, cyc_lr, lr)
    lr = tl.where(kind == _ONE_CYCLE, one_lr, lr)
    if HAS_PLATEAU:
        lr = tl.where(kind == _PLATEAU, tl.load(plateau_lr).to(tl.float64), lr)
    mom = tl.where(kind == _CYCLIC, cyc_mom, one_mom)
    return lr, mom


@triton.jit
def evaluate_rows(rows, n_rows, k, plateau_lr, HAS_PLATEAU: tl.constexpr):
    """``(lr, momentum)`` at step ``k`` (int64), as ``schedule_math.evaluate_rows``
    (``n_rows``: the segment rows; a table's values follow them)."""
    lr, mom = evaluate_row(rows, k, plateau_lr, HAS_PLATEAU)
    for s in range(1, n_rows):
        row = rows + s * 16  # ROW_WIDTH
        start = _i64(row, 0)
        seg_lr, _ = evaluate_row(row, tl.maximum(k - start, 0), plateau_lr, HAS_PLATEAU)
        lr = tl.where(k >= start, seg_lr, lr)
    return lr, mom
