"""Triton device functions: the schedule closed forms of ``schedule_math.py``.

The generated kinds' functions are traced from their closed forms there
(``schedule_codegen``, compiled below at import); the others (SGDR, a table,
the plateau, the constant) mirror their namesakes there line by line.  The
rows come from a
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


# The generated kinds' functions and _generated(kind, p, k, lr, mom), traced from
# schedule_math's closed forms (schedule_codegen).
schedule_codegen.exec_source(schedule_codegen.triton_source(sm), globals())


@triton.jit
def evaluate_row(row, k, plateau_lr, HAS_PLATEAU: tl.constexpr):
    """``(lr, momentum)`` of the segment at ``row`` (float64*) at local step k."""
    kind = _i64(row, 1)
    p = row + 2
    lr = _f64(p, 0)  # KIND_CONSTANT and KIND_PLATEAU's static value
    mom = lr * 0.0  # (a kind that does not cycle the momentum: never read)
    lr, mom = _generated(kind, p, k, lr, mom)  # noqa: F821 - defined by exec_source above
    if kind == _WARM_RESTARTS:
        lr = _warm_restarts(p, k)
    if kind == _TABLE:  # LambdaLR table [base_lr, n, offset]: row[offset + min(k, n - 1)]
        j = tl.minimum(k, _i64(p, 1) - 1)
        lr = _f64(p, 0) * tl.load(row + _i64(p, 2) + j)
    if HAS_PLATEAU:
        lr = tl.where(kind == _PLATEAU, tl.load(plateau_lr).to(tl.float64), lr)
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
