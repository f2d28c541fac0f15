"""The one definition of every learning-rate schedule's closed form.

Each schedule spec (see ``schedules.py``) is encoded as a flat row of numbers:
``[start_step, kind, p0, p1, ..., p13]`` (``ROW_WIDTH`` floats).  A schedule is
one or more such rows ("segments"); ``SequentialLR`` is the only spec with more
than one.  :func:`evaluate_rows` below turns rows and a step into ``(lr,
momentum)``; it is written once against a tiny math namespace so the same
lines serve:

* Python ints  -> Python floats (float64 math), via :data:`PY_OPS`;
* int64 tensors -> float64 tensors on the step's device, via :data:`TORCH_OPS`
  (tensor ops only: no ``.item()``, no host sync).

Every path evaluates in float64 (the parameters in the rows are float64
too: ``gamma`` never goes through float32) and rounds once, at the end, to
the float32 LR / momentum an update applies; so ``gamma**k`` does not drift
at 1e7 steps and the paths agree to within one float32 ulp (in practice bit
for bit: they differ only where libm's last float64 bit decides a float32
rounding).

The Triton and CUDA kernels read the same rows from device memory and mirror
these functions line by line; the tests check all paths against
``torch.optim.lr_scheduler``.  The kinds registered with :func:`closed_form`
(written with the ops alone, below the hand-mirrored ones) have no hand-written
copy: ``schedule_codegen.py`` traces them into the C++ and Triton functions
the kernels call, so a new kind is its code, its closed form here and its
spec class in ``schedules.py``.

Integer arithmetic (which cycle, position inside it, milestones passed) stays
in int64 so steps far past 2**24 land in the right place; only the fraction
inside a cycle goes through floating point.  Every integer (lengths,
milestones, ``T_mult``, the step) is at most ``MAX_INT = 2**53`` (exact in
float64; validated by the specs and the optimizers), so no int64 product or
sum below can overflow and no loop runs more than 64 times.
"""

from __future__ import annotations

import math

import torch

ROW_WIDTH = 16  # start_step, kind, then NUM_PARAMS parameters
NUM_PARAMS = ROW_WIDTH - 2
MAX_SEGMENTS = 8  # rows per schedule (SequentialLR pieces after flattening)
MAX_MILESTONES = NUM_PARAMS - 3  # MultiStepLR: base_lr, gamma, count, milestones...
MAX_INT = 2**53  # largest length, milestone, T_mult or step counter accepted

# Kind codes: the one definition.  Kernels switch on these numbers: never renumber, only append.
KIND_CONSTANT = 0  # [lr]
KIND_CYCLIC = 1  # [base_lr, max_lr, up, down, mode, gamma, base_m, max_m]
KIND_ONE_CYCLE = 2  # [initial_lr, max_lr, min_lr, end1, end2, three_phase, linear, base_m, max_m, total]
KIND_COSINE = 3  # [base_lr, T_max, eta_min]
KIND_WARM_RESTARTS = 4  # [base_lr, T_0, T_mult, eta_min]
KIND_EXPONENTIAL = 5  # [base_lr, gamma]
KIND_STEP = 6  # [base_lr, step_size, gamma]
KIND_MULTI_STEP = 7  # [base_lr, gamma, count, m_0, ..., m_{count-1}]
KIND_POLYNOMIAL = 8  # [base_lr, total_iters, power]
KIND_LINEAR = 9  # [base_lr, start_factor, end_factor, total_iters]
KIND_CONSTANT_FACTOR = 10  # [base_lr, factor, total_iters]
KIND_PLATEAU = 11  # [base_lr]; the live LR is device state, passed as plateau_lr
KIND_TABLE = 12  # [base_lr, n, offset]: base_lr * table[min(k, n - 1)], the table `offset` floats after this row
KIND_TABLE_DATA = 13  # ends the segment rows; the tables' float64 values follow it, ROW_WIDTH per row
KIND_WARMUP_COSINE = 14  # [base_lr, W, T, num_cycles, min_rate, shifted, warmup_rate]: transformers' cosine family
KIND_INVERSE_SQRT = 15  # [base_lr, W, timescale]: transformers' inverse_sqrt
KIND_WARMUP_LINEAR = 16  # [base_lr, W, T]: transformers' linear (generated: see closed_form)

#: every kind by name (``KIND_<NAME>``): the C++ build's table (csrc/schedule_kinds.h,
#: exported as ``_C.SCHEDULE_KINDS``) must equal it, or the extension is refused
#: (``_ext.py``); the Triton kernels read the codes as constexprs from here.
KINDS = {name[len("KIND_") :]: code for name, code in dict(globals()).items() if name.startswith("KIND_")}

# A table (LambdaLR) holds at most this many steps: 2**24 float64 = 128 MiB.
MAX_TABLE = 2**24

CYCLIC_TRIANGULAR, CYCLIC_TRIANGULAR2, CYCLIC_EXP_RANGE = 0, 1, 2


class _PyOps:
    """Python scalars: float64 math, exact Python ints."""

    pi = math.pi

    @staticmethod
    def f64(p, i: int):
        return float(p[i])

    @staticmethod
    def i64(p, i: int):
        return int(p[i])

    @staticmethod
    def where(cond, a, b):
        return a if cond else b

    @staticmethod
    def select(cond, then, otherwise):
        """``where(cond, then(), otherwise())`` evaluating one branch only where
        ``cond`` is known (a row's parameter): the Python and torch paths stay as
        cheap as a hand-written branch; the kernels' copies evaluate both."""
        return then() if cond else otherwise()

    @staticmethod
    def to_float(x):
        return float(x)

    @staticmethod
    def cos(x):
        return math.cos(x)

    @staticmethod
    def sqrt(x):
        return math.sqrt(x)

    @staticmethod
    def pow(base: float, exponent):
        # base**exponent for base > 0, else 0 (as the kernels' pow_pos / _pow)
        return float(base) ** float(exponent) if base > 0 else 0.0

    @staticmethod
    def minimum(a, b):
        return min(a, b)

    @staticmethod
    def maximum(a, b):
        return max(a, b)

    @staticmethod
    def restart_cycle(k: int, t_0: int, t_mult: int):
        """(position inside the SGDR cycle holding step k, that cycle's length)."""
        starts, lengths = restart_table(t_0, t_mult)
        n = sum(1 for s in starts if s <= k) - 1
        return k - starts[n], lengths[n]


class _TorchOps:
    """int64 / float64 tensors on the step's device; no host sync."""

    pi = math.pi
    f64 = staticmethod(_PyOps.f64)  # the rows are host numbers on every path
    i64 = staticmethod(_PyOps.i64)

    @staticmethod
    def where(cond, a, b):
        if not isinstance(cond, torch.Tensor):
            return a if cond else b
        # Python's types: a float operand makes the result float64 (torch.where
        # would take the default dtype, float32, for Python floats and ints mixed)
        if any(isinstance(v, float) or (isinstance(v, torch.Tensor) and v.is_floating_point()) for v in (a, b)):
            a, b = (torch.as_tensor(v, dtype=torch.float64, device=cond.device) for v in (a, b))
        return torch.where(cond, a, b)

    @staticmethod
    def select(cond, then, otherwise):
        if not isinstance(cond, torch.Tensor):
            return then() if cond else otherwise()
        a, b = then(), otherwise()
        if isinstance(a, tuple):
            return tuple(_TorchOps.where(cond, x, y) for x, y in zip(a, b))
        return _TorchOps.where(cond, a, b)

    @staticmethod
    def to_float(x):
        return x.to(torch.float64) if isinstance(x, torch.Tensor) else float(x)

    @staticmethod
    def cos(x):
        return torch.cos(x)

    @staticmethod
    def sqrt(x):
        return torch.sqrt(x)

    @staticmethod
    def pow(base, exponent):
        if not isinstance(base, torch.Tensor):
            if not isinstance(exponent, torch.Tensor):
                return _PyOps.pow(base, exponent)
            if base <= 0.0:
                return torch.zeros_like(exponent, dtype=torch.float64)
            return torch.pow(base, exponent.to(torch.float64))
        b = base.to(torch.float64)
        e = exponent.to(torch.float64) if isinstance(exponent, torch.Tensor) else float(exponent)
        return torch.where(b > 0, torch.pow(torch.where(b > 0, b, 1.0), e), 0.0)

    # Python's min(a, b) / max(a, b): a unless b is strictly beyond it, with
    # where's types (float64 as soon as one operand is a float).
    @staticmethod
    def minimum(a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return min(a, b)
        return _TorchOps.where(b < a, b, a)

    @staticmethod
    def maximum(a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return max(a, b)
        return _TorchOps.where(b > a, b, a)

    @staticmethod
    def restart_cycle(k, t_0: int, t_mult: int):
        starts, lengths = _restart_tensors(t_0, t_mult, k.device)
        n = torch.bucketize(k, starts, right=True) - 1  # the last start <= k
        return k - starts[n], lengths[n]


PY_OPS = _PyOps()
TORCH_OPS = _TorchOps()


def restart_table(t_0: int, t_mult: int) -> tuple[list[int], list[float]]:
    """SGDR's cycle starts ``T_0 * (T_mult**n - 1) / (T_mult - 1)`` up to
    ``MAX_INT`` and their lengths (exact Python ints; at most 54 cycles)."""
    starts, lengths = [0], [t_0]
    while starts[-1] + lengths[-1] <= MAX_INT:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * t_mult)
    return starts, [float(n) for n in lengths]


_RESTART_TENSORS: dict[tuple, tuple] = {}


def _restart_tensors(t_0: int, t_mult: int, device: torch.device):
    key = (t_0, t_mult, device)
    out = _RESTART_TENSORS.get(key)
    if out is None:
        starts, lengths = restart_table(t_0, t_mult)
        out = (
            torch.tensor(starts, dtype=torch.int64, device=device),
            torch.tensor(lengths, dtype=torch.float64, device=device),
        )
        _RESTART_TENSORS[key] = out
    return out


def _cos_weight(frac, ops):
    """``(1 + cos(pi * frac)) / 2`` written as ``cos(pi * frac / 2)**2``: the same
    number, without float32's cancellation as the cosine nears -1."""
    c = ops.cos((ops.pi / 2.0) * frac)
    return c * c


def _warm_restarts(p, k, ops):
    base_lr, t_0, t_mult, eta_min = p[:4]
    t_0, t_mult = int(t_0), int(t_mult)
    if t_mult == 1:
        t_cur, t_i = k % t_0, t_0
    else:
        # Cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1) and lasts T_0 * T_mult**n.
        t_cur, t_i = ops.restart_cycle(k, t_0, t_mult)
    return eta_min + (base_lr - eta_min) * _cos_weight(ops.to_float(t_cur) / ops.to_float(t_i), ops)


# The generated kinds: code -> closed form (lr, or (lr, momentum)).  Each is
# written with the ops alone (ops.f64 / ops.i64 read the row; arithmetic,
# comparisons, where, select, minimum, maximum, to_float, cos, sqrt, pow), so it
# runs on PY_OPS and
# TORCH_OPS as it stands and schedule_codegen.py traces it into the C++ and
# Triton kernels' copies.  Every operand is evaluated there (straight-line
# code): guard the divisions of the branch not taken.
GENERATED: dict = {}
CYCLES_MOMENTUM: set = set()  # the generated kinds whose closed form returns (lr, momentum)


def closed_form(code: int, momentum: bool = False):
    """Register a generated kind's closed form ``fn(p, k, ops) -> lr`` (``->
    (lr, momentum)`` with ``momentum=True``)."""

    def register(fn):
        GENERATED[code] = fn
        if momentum:
            CYCLES_MOMENTUM.add(code)
        return fn

    return register


@closed_form(KIND_CYCLIC, momentum=True)
def _cyclic(p, k, ops):
    base_lr, max_lr, gamma, base_m, max_m = ops.f64(p, 0), ops.f64(p, 1), ops.f64(p, 5), ops.f64(p, 6), ops.f64(p, 7)
    up, down, mode = ops.maximum(1, ops.i64(p, 2)), ops.maximum(1, ops.i64(p, 3)), ops.i64(p, 4)
    total = up + down
    cycle = k // total + 1  # int64: the 1-based cycle index
    pos = k % total  # int64: position inside the cycle
    posf = ops.to_float(pos)
    # Rising for pos <= up (pos/up), falling after ((total - pos)/down).
    scale = ops.where(pos <= up, posf / ops.to_float(up), (ops.to_float(total) - posf) / ops.to_float(down))
    # triangular: 1; triangular2: 0.5**(cycle - 1); exp_range: gamma**step, counted
    # from the start of training as torch's
    amp = ops.select(
        mode == CYCLIC_TRIANGULAR2,
        lambda: ops.pow(0.5, cycle - 1),
        lambda: ops.select(mode == CYCLIC_EXP_RANGE, lambda: ops.pow(gamma, k), lambda: 1.0),
    )
    lr = base_lr + (max_lr - base_lr) * scale * amp
    momentum = max_m - (max_m - base_m) * scale * amp
    return lr, momentum


def _anneal(start, end, pct, linear, ops):
    # Weighted forms (not start + (end - start) * pct) so pct == 1 lands on
    # ``end`` exactly in float32 too.
    return end + (start - end) * ops.select(linear, lambda: 1.0 - pct, lambda: _cos_weight(pct, ops))


@closed_form(KIND_ONE_CYCLE, momentum=True)
def _one_cycle(p, k, ops):
    initial_lr, max_lr, min_lr = ops.f64(p, 0), ops.f64(p, 1), ops.f64(p, 2)
    end1, end2, three_phase, linear = ops.f64(p, 3), ops.f64(p, 4), ops.f64(p, 5) != 0.0, ops.f64(p, 6) != 0.0
    base_m, max_m, total = ops.f64(p, 7), ops.f64(p, 8), ops.maximum(2, ops.i64(p, 9))
    # Past the last step it holds the final LR (torch would raise instead).
    kf = ops.to_float(ops.minimum(k, total - 1))
    last = ops.to_float(total - 1)
    # (the specs guarantee 0 < end1 < end2 <= last, < last with three phases; the
    # guards keep the formulas of the other phase count finite where the
    # kernels' copies evaluate both)
    pct1 = kf / ops.where(end1 != 0.0, end1, 1.0)

    def two_phases():  # up to end1, then down to the last step
        pct2 = (kf - end1) / ops.where(last != end1, last - end1, 1.0)
        lr = ops.where(
            kf <= end1, _anneal(initial_lr, max_lr, pct1, linear, ops), _anneal(max_lr, min_lr, pct2, linear, ops)
        )
        mom = ops.where(
            kf <= end1, _anneal(max_m, base_m, pct1, linear, ops), _anneal(base_m, max_m, pct2, linear, ops)
        )
        return lr, mom

    def three_phases():  # up, back down to initial_lr by end2, then down to min_lr
        pct2 = (kf - end1) / ops.where(end2 != end1, end2 - end1, 1.0)
        pct3 = (kf - end2) / ops.where(last != end2, last - end2, 1.0)
        lr = ops.where(
            kf <= end1,
            _anneal(initial_lr, max_lr, pct1, linear, ops),
            ops.where(
                kf <= end2,
                _anneal(max_lr, initial_lr, pct2, linear, ops),
                _anneal(initial_lr, min_lr, pct3, linear, ops),
            ),
        )
        mom = ops.where(
            kf <= end1,
            _anneal(max_m, base_m, pct1, linear, ops),
            ops.where(kf <= end2, _anneal(base_m, max_m, pct2, linear, ops), max_m),
        )
        return lr, mom

    return ops.select(three_phase, three_phases, two_phases)


@closed_form(KIND_COSINE)
def _cosine(p, k, ops):
    base_lr, t_max, eta_min = ops.f64(p, 0), ops.maximum(1, ops.i64(p, 1)), ops.f64(p, 2)
    # torch's recursion continues the cosine past T_max with period 2*T_max.
    pos = k % (2 * t_max)
    return eta_min + (base_lr - eta_min) * _cos_weight(ops.to_float(pos) / ops.to_float(t_max), ops)


@closed_form(KIND_EXPONENTIAL)
def _exponential(p, k, ops):
    return ops.f64(p, 0) * ops.pow(ops.f64(p, 1), k)


@closed_form(KIND_STEP)
def _step(p, k, ops):
    base_lr, step_size, gamma = ops.f64(p, 0), ops.i64(p, 1), ops.f64(p, 2)
    return base_lr * ops.pow(gamma, k // ops.maximum(1, step_size))


@closed_form(KIND_MULTI_STEP)
def _multi_step(p, k, ops):
    base_lr, gamma, count = ops.f64(p, 0), ops.f64(p, 1), ops.i64(p, 2)
    passed = 0
    for i in range(MAX_MILESTONES):  # unrolled; the row's unused milestones are masked by count
        passed = ops.select(
            count > i, lambda i=i, n=passed: n + ops.where(k >= ops.i64(p, 3 + i), 1, 0), lambda n=passed: n
        )
    return base_lr * ops.pow(gamma, passed)


@closed_form(KIND_POLYNOMIAL)
def _polynomial(p, k, ops):
    base_lr, total_iters, power = ops.f64(p, 0), ops.maximum(1, ops.i64(p, 1)), ops.f64(p, 2)
    frac = 1.0 - ops.to_float(ops.minimum(k, total_iters)) / ops.to_float(total_iters)
    # frac**power, with Python's 0.0**power (1 for power 0, else 0)
    return base_lr * ops.where(frac > 0.0, ops.pow(frac, power), ops.where(power == 0.0, 1.0, 0.0))


@closed_form(KIND_LINEAR)
def _linear(p, k, ops):
    base_lr, start_factor, end_factor = ops.f64(p, 0), ops.f64(p, 1), ops.f64(p, 2)
    total_iters = ops.maximum(1, ops.i64(p, 3))
    frac = ops.to_float(ops.minimum(k, total_iters)) / ops.to_float(total_iters)
    return base_lr * (start_factor + (end_factor - start_factor) * frac)


@closed_form(KIND_CONSTANT_FACTOR)
def _constant_factor(p, k, ops):
    base_lr, factor, total_iters = ops.f64(p, 0), ops.f64(p, 1), ops.i64(p, 2)
    return base_lr * ops.where(k < total_iters, factor, 1.0)


@closed_form(KIND_WARMUP_COSINE)
def _warmup_cosine(p, k, ops):
    """transformers' cosine / cosine_with_min_lr (shifted 0) and
    cosine_warmup_with_min_lr (shifted 1) lambdas, their float64 operations in
    their order, times base_lr; past T the cosine continues, as theirs does."""
    base_lr, w, t, num_cycles = ops.f64(p, 0), ops.i64(p, 1), ops.i64(p, 2), ops.f64(p, 3)
    min_rate, shifted, warm = ops.f64(p, 4), ops.f64(p, 5) != 0.0, ops.f64(p, 6)
    kf, wf, tf = ops.to_float(k), ops.to_float(w), ops.to_float(t)
    # shifted: from step + 1, or from warmup_lr_rate (warm >= 0)
    warmup, progress = ops.select(
        shifted,
        lambda: (
            ops.select(
                warm < 0.0,
                lambda: (kf + 1.0) / ops.maximum(1.0, wf),
                lambda: warm + (1.0 - warm) * kf / ops.to_float(ops.maximum(1, w - 1)),
            ),
            (kf - wf + 1.0) / ops.maximum(1.0, tf - wf),
        ),
        lambda: (kf / ops.to_float(ops.maximum(1, w)), ops.to_float(k - w) / ops.to_float(ops.maximum(1, t - w))),
    )
    factor = 0.5 * (1.0 + ops.cos(math.pi * num_cycles * 2.0 * progress))
    factor = ops.maximum(factor * (1 - min_rate) + min_rate, 0.0)
    return base_lr * ops.where(k < w, warmup, factor)


@closed_form(KIND_INVERSE_SQRT)
def _inverse_sqrt(p, k, ops):
    """transformers' inverse_sqrt: k / W during warm-up, then 1 / sqrt((k + shift) / timescale)."""
    base_lr, w, timescale = ops.f64(p, 0), ops.i64(p, 1), ops.maximum(1, ops.i64(p, 2))
    # (k + shift >= timescale >= 1 wherever the decay applies; the clamp only keeps the
    # unused warm-up branch finite when a timescale below W makes it negative)
    decay = 1.0 / ops.sqrt(ops.maximum(ops.to_float(k + (timescale - w)), 1.0) / ops.to_float(timescale))
    return base_lr * ops.where(k < w, ops.to_float(k) / ops.to_float(ops.maximum(1, w)), decay)


@closed_form(KIND_WARMUP_LINEAR)
def _warmup_linear(p, k, ops):
    """transformers' linear: k / W during warm-up, then (T - k) / (T - W) down
    to 0 at T (and 0 after), its float64 operations in its order, times base_lr."""
    base_lr, w, t = ops.f64(p, 0), ops.i64(p, 1), ops.i64(p, 2)
    warmup = ops.to_float(k) / ops.to_float(ops.maximum(1, w))
    decay = ops.maximum(0.0, ops.to_float(t - k) / ops.to_float(ops.maximum(1, t - w)))
    return base_lr * ops.where(k < w, warmup, decay)


def pack(segments: list[tuple[list[float], list[float] | tuple[float, ...] | None]]) -> list[list[float]]:
    """Rows of a schedule from its segments ``(row, table or None)``: the
    segment rows, then, if any segment is a table, a ``KIND_TABLE_DATA`` row
    and the tables' values, ``ROW_WIDTH`` per row (zero padded).  Each table
    row's ``offset`` (its parameter 2) is where its values start, counted in
    floats from the table row itself, so a kernel reads ``row[offset + j]``."""
    rows = [list(row) for row, _ in segments]
    tables = [(i, t) for i, (_, t) in enumerate(segments) if t is not None]
    if not tables:
        return rows
    rows.append([float(MAX_INT), float(KIND_TABLE_DATA)] + [0.0] * NUM_PARAMS)
    flat: list[float] = []
    base = len(rows) * ROW_WIDTH
    for i, table in tables:
        rows[i][4] = float(base + len(flat) - i * ROW_WIDTH)
        flat.extend(table)
    flat.extend([0.0] * (-len(flat) % ROW_WIDTH))
    rows.extend(flat[j : j + ROW_WIDTH] for j in range(0, len(flat), ROW_WIDTH))
    return rows


def segment_count(rows) -> int:
    """How many of ``rows`` are segments (the rest: a table's terminator and values)."""
    for i, row in enumerate(rows):
        if int(row[1]) == KIND_TABLE_DATA:
            return i
    return len(rows)


def _table(p, k, ops, fetch):
    # [base_lr, n, offset]; past the table: its last value
    j = ops.minimum(k, int(p[1]) - 1)
    return p[0] * fetch(int(p[2]), j)


def evaluate_row(row, k, ops, plateau_lr=None, fetch=None):
    """``(lr, momentum)`` of one segment at local step ``k >= 0``.

    ``momentum`` is ``None`` for kinds that do not cycle it.  ``fetch(offset,
    j)``: a table's ``j``-th value, ``offset`` floats after this row.
    """
    kind, p = int(row[1]), row[2:]
    if kind == KIND_TABLE:
        return _table(p, k, ops, fetch), None
    if kind in GENERATED:
        out = GENERATED[kind](p, k, ops)
        return out if kind in CYCLES_MOMENTUM else (out, None)
    if kind == KIND_WARM_RESTARTS:
        return _warm_restarts(p, k, ops), None
    if kind == KIND_PLATEAU and plateau_lr is not None:
        return plateau_lr, None
    if kind in (KIND_CONSTANT, KIND_PLATEAU):  # (a plateau without its live value: the static one)
        return p[0] + 0.0 * ops.to_float(k), None
    raise KeyError(kind)


def _fetcher(rows, s: int, ops, table):
    """fetch(offset, j) for segment ``s``: flat element ``s * ROW_WIDTH + offset + j``
    of the rows (``table``: the same rows as a float64 tensor on the step's device)."""
    if ops is PY_OPS:

        def fetch(offset, j):
            i = s * ROW_WIDTH + offset + j
            return rows[i // ROW_WIDTH][i % ROW_WIDTH]

        return fetch

    def fetch_t(offset, j):
        # (only table segments call this: other schedules never upload their rows here)
        flat = (torch.tensor(rows, dtype=torch.float64) if table is None else table).reshape(-1).to(j.device)
        return flat[j + (s * ROW_WIDTH + offset)]

    return fetch_t


def evaluate_rows(rows, k, ops, plateau_lr=None, table=None):
    """``(lr, momentum)`` of a schedule (its segment rows) at global step ``k``.

    The segment with the largest ``start_step <= k`` applies, at local step
    ``k - start_step``.  Every segment is evaluated and selected branch-free,
    which is what the kernels do too.  ``table``: the rows as a float64 tensor
    on the step's device, where the torch ops read a table's values (a
    ``LambdaLR``); without it they are uploaded for the call.
    """
    n = segment_count(rows)
    lr, mom = evaluate_row(rows[0], k, ops, plateau_lr, _fetcher(rows, 0, ops, table))
    for s in range(1, n):
        row = rows[s]
        start = int(row[0])
        local = ops.maximum(k - start, 0)
        seg_lr, _ = evaluate_row(row, local, ops, plateau_lr, _fetcher(rows, s, ops, table))
        lr = ops.where(k >= start, seg_lr, lr)
    # The momentum is the first segment's, on every path (the kernels read only
    # its row): SequentialLR refuses segments that cycle momentum.
    return lr, mom
