"""The ``triton`` backend: fused multi-tensor SGD and Adam/AdamW.

One launch updates every tensor of a (param group, device, dtype) bucket.
Each program takes one chunk of one tensor (device tables, see
``tensor_tables.py``), reads the LR (and cycled momentum / beta1) this
update uses from device scalars (the group's live values, which
``param_groups[g]["lr"]`` holds), ``grad_scale`` / clip (folded into
``grad_mul``) and ``skip``, and updates in float32 with one rounding to the
storage dtype.  Nothing is written on a skipped step.

Advancing counters without a race: every program reads the schedule step,
the live LR and the tensors' Adam steps first; at its end it takes a ticket
with an acq_rel atomic.  The program that draws the last ticket knows all
others have read, and only it advances the counters, evaluates the schedule
at the advanced step (``triton_schedule.py``) into the live LR / momentum
for the next update (``NEXT``), then resets the ticket.  The update path
itself has no atomics, so results are bit-for-bit reproducible.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import schedule_math as sm
from .tensor_tables import TableCache, adam_tables, aligned_16, fresh_flags, sgd_tables
from .triton_schedule import evaluate_rows

CHUNK = 16384  # elements per program
BLOCK = 1024  # elements per inner iteration
# Tensors per iteration of Adam's step-counter epilogue, and elements per
# iteration of the masked loop when ALIGNED (then only the remainder after the
# full blocks; without ALIGNED it is the whole chunk, BLOCK at a time).  One
# element per thread (4 warps): with 1,024 the compiler gave these tensors a
# different register layout than the element loop's and converted between
# them through shared memory, with barriers (sm_90: 14-20 BAR.SYNC, STS.128 /
# LDS.128, 64 registers; now 2 BAR.SYNC, the ticket's, and 56 registers;
# tests/test_sass_gates.py holds it).
BLOCK_T = 128
TAIL_ALIGNED = 128
QBLOCK = tl.constexpr(128)  # csrc/low_precision.cuh kQBlock: int8 states' block (a row of the 2-D loop)


def loop_constexprs(aligned: bool, *dtypes: torch.dtype) -> dict:
    """The element loops' shape for a bucket (the launches and
    tools/triton_aot_check.py): ALIGNED, the block sizes, and VEC, the elements per
    vector access of the ALIGNED loop: 16 bytes of the widest type, the same
    count for every list (bf16 params with fp32 state: 4, as 64-bit and
    128-bit accesses), so all share one register layout (8 bf16 beside 4 fp32
    per thread made the compiler convert through shared memory inside the
    loop)."""
    return dict(ALIGNED=aligned, CHUNK=CHUNK, BLOCK=BLOCK, TAIL=TAIL_ALIGNED if aligned else BLOCK,
                VEC=16 // max(dt.itemsize for dt in dtypes))  # fmt: skip


_tables = TableCache(CHUNK)
_dummies: dict[tuple, Tensor] = {}  # placeholders for absent optional pointers

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.int8: tl.int8}


@triton.jit
def _to_storage(x, DT: tl.constexpr):
    # Round to nearest even explicitly for bfloat16: the interpreter truncates.
    # The bias would carry a NaN's payload into the exponent (0x7FFFFFFF ->
    # -0.0): a NaN becomes the canonical 0x7FC0, as torch's conversion does.
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        half = tl.where(x != x, 0x7FC0, bits >> 16)
        return half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DT)


@triton.jit
def _mix32(x):
    """csrc/low_precision.cuh's mix32 (uint32 arithmetic)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x297A2D39
    x = x ^ (x >> 16)
    return x


@triton.jit
def _stream_base(k, numel, J: tl.constexpr):
    """Stochastic rounding's (base, odd multiplier) of stream J (0: the
    parameter, 1 + j: state list j) for one tensor at schedule step k
    (random_bits in low_precision.cuh)."""
    seed = _mix32((k & 0xFFFFFFFF).to(tl.uint32) ^ _mix32((numel & 0xFFFFFFFF).to(tl.uint32)))
    base = _mix32(seed + ((0x9E3779B9 * (J + 1)) & 0xFFFFFFFF))
    mul = (_mix32(seed + ((0x9E3779B9 * (J + 5)) & 0xFFFFFFFF)) >> 1) | 1
    return base, mul


@triton.jit
def _store_val(x, DT: tl.constexpr, SR: tl.constexpr, k, numel, idx, J: tl.constexpr):
    """x rounded to DT: to nearest, or (SR, bfloat16) stochastically with
    element idx's bits of stream J at step k (element_bits, bf16_bits_stochastic)."""
    if SR and DT == tl.bfloat16:
        base, mul = _stream_base(k, numel, J)
        r = base + (idx & 0xFFFFFFFF).to(tl.uint32) * mul
        sr = (x.to(tl.uint32, bitcast=True) + (r >> 16)) >> 16  # (+-inf stays itself)
        half = tl.where(x != x, 0x7FC0, sr)
        return half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return _to_storage(x, DT)


@triton.jit
def _ld_param(p_ptrs, c_base, offs, mask, VEC: tl.constexpr, KAHAN: tl.constexpr):
    """The parameters as float32; with kahan_sum p + c, exact (multi_tensor.cuh's load_param)."""
    p = _ld(p_ptrs, mask)
    if KAHAN:
        p = p + _ld(_at(c_base, offs, VEC), mask)
    return p


@triton.jit
def _st_param(x, p_ptrs, c_base, offs, mask, DT: tl.constexpr, SR: tl.constexpr, k, numel, idx, VEC: tl.constexpr,
              KAHAN: tl.constexpr):  # fmt: skip
    """Store the new parameters; with kahan_sum p = round(x) and c = round(x - p),
    no compensation where that is not finite (multi_tensor.cuh's compensation)."""
    if KAHAN:
        hi = _to_storage(x, DT)
        r = x - hi.to(tl.float32)
        tl.store(p_ptrs, hi, mask=mask)
        tl.store(_at(c_base, offs, VEC), _to_storage(tl.where(tl.abs(r) <= 3.4028234663852886e38, r, 0.0), DT),
                 mask=mask)  # fmt: skip
    else:
        tl.store(p_ptrs, _store_val(x, DT, SR, k, numel, idx, 0), mask=mask)


@triton.jit
def _q8_decode(codes, scale, SIGNED: tl.constexpr):
    """int8 state codes -> float32 (q8_decode); scale broadcasts per block row."""
    if SIGNED:
        a = codes.to(tl.float32) * (1.0 / 127.0)
        return (a * tl.abs(a)) * scale
    else:
        a = codes.to(tl.float32) * (1.0 / 255.0)
        a2 = a * a
        return (a2 * a2) * scale


@triton.jit
def _q8_store(x, code_ptrs, scale_ptrs, mask, row_mask, SIGNED: tl.constexpr):
    """Re-quantize [rows, QBLOCK] float32 values: per row (block) the largest
    magnitude is the scale (integer max of the bits, NaN wins), then the codes (q8_encode)."""
    x = tl.where(mask, x, 0.0)
    mag = x.to(tl.uint32, bitcast=True) & 0x7FFFFFFF
    scale = tl.max(mag, axis=1).to(tl.float32, bitcast=True)
    inv = tl.where(scale > 0, tl.math.div_rn(1.0, scale), 0.0)[:, None]
    if SIGNED:
        q = (tl.sqrt_rn(tl.abs(x) * inv) * 127.0 + 0.5).to(tl.int32)
        q = tl.where(q < 127, q, 127)
        q = tl.where(x < 0, -q, q)
        tl.store(code_ptrs, q.to(tl.int8), mask=mask)
    else:
        q = (tl.sqrt_rn(tl.sqrt_rn(x) * tl.sqrt_rn(inv)) * 255.0 + 0.5).to(tl.int32)  # the 4th root as q8_encode's
        tl.store(code_ptrs, tl.where(q < 255, q, 255).to(tl.uint8), mask=mask)
    tl.store(scale_ptrs, scale, mask=row_mask)


@triton.jit
def _state_ld(base, scale_base, offs, mask, rows, row_mask, SIGNED: tl.constexpr, Q8: tl.constexpr, VEC: tl.constexpr):
    """A state list's float32 values: plain, or int8 codes decoded with their block scales."""
    if Q8:
        codes = tl.load(base + offs, mask=mask, other=0)
        scale = tl.load(scale_base + rows, mask=row_mask, other=0.0)[:, None]
        return _q8_decode(codes, scale, SIGNED)
    else:
        return _ld(_at(base, offs, VEC), mask)


@triton.jit
def _state_st(x, base, scale_base, offs, mask, rows, row_mask, DT: tl.constexpr, SR: tl.constexpr, k, numel, idx,
              SIGNED: tl.constexpr, Q8: tl.constexpr, VEC: tl.constexpr, J: tl.constexpr):  # fmt: skip
    if Q8:
        _q8_store(x, base + offs, scale_base + rows, mask, row_mask, SIGNED)
    else:
        tl.store(_at(base, offs, VEC), _store_val(x, DT, SR, k, numel, idx, J), mask=mask)


@triton.jit
def _ptr(table, t, DT: tl.constexpr):
    return tl.load(table + t).to(tl.pointer_type(DT))


@triton.jit
def _at(base, offs, VEC: tl.constexpr):
    """``base + offs``; with VEC (elements per vector, 0: none) the compiler is
    told what the host checked: ``base`` is aligned to VEC elements (the host
    checked 16 bytes) and ``offs`` runs of BLOCK contiguous elements from a
    multiple of BLOCK, so loads and stores become vectors (the table addresses
    hide the alignment from it otherwise)."""
    ptrs = base + offs
    if VEC > 0:
        ptrs = tl.multiple_of(ptrs, [VEC * base.dtype.element_ty.primitive_bitwidth // 8])
    return ptrs


@triton.jit
def _ld(ptrs, mask):
    # a full block has no mask (and then may not take `other`)
    if mask is None:
        return tl.load(ptrs).to(tl.float32)
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _full_block_offsets(i, BLOCK: tl.constexpr):
    return tl.max_contiguous(tl.multiple_of(i * BLOCK + tl.arange(0, BLOCK), BLOCK), BLOCK)


@triton.jit
def _q8_offsets(off, R: tl.constexpr):
    """int8 states: the [R, QBLOCK] offsets of one loop iteration from chunk
    offset ``off`` (a multiple of QBLOCK: one row per quantization block) and
    the rows' block indices relative to the chunk."""
    rows = off // QBLOCK + tl.arange(0, R)
    return rows[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :], rows


@triton.jit
def _draw_ticket(ticket):
    """True in exactly one program: the last to finish (all others have read)."""
    # The scalar atomic is issued once per program; without a barrier a warp
    # that has not yet loaded the counters could still be reading them when
    # the last program advances them.  The barrier orders every thread's loads
    # of this program before the acq_rel draw (CUDA's kernel: bar.sync first).
    tl.debug_barrier()
    drawn = tl.atomic_add(ticket, 1, sem="acq_rel")
    last = drawn == tl.num_programs(0) - 1
    if last:
        tl.store(ticket, 0)
    return last


@triton.jit
def _finish_step(rows, n_rows, counter, next_lr, k, skipped, ADVANCE: tl.constexpr, NEXT: tl.constexpr):
    """In the program that drew the last ticket: the schedule at the step the
    next update sees, into the live LR / momentum, and the counter advanced."""
    k_next = k + 1 - skipped
    if NEXT:
        lr, mom = evaluate_rows(rows, n_rows, k_next, next_lr, False)
        tl.store(next_lr, lr)  # float64 live values, as torch's schedulers write a Python float
        tl.store(next_lr + 1, mom)
    if ADVANCE:
        tl.store(counter, k_next)


@triton.jit
def _chunk_setup(
    chunk_tensor, chunk_start, numels, counter, lr_ptr, mom_ptr, grad_mul, skip, static_momentum,
    CHUNK: tl.constexpr, CYCLE_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
    HAS_GRAD_MUL: tl.constexpr, HAS_SKIP: tl.constexpr,
):  # fmt: skip
    """What every program needs first: its chunk [start, end) of tensor t, the
    schedule step k, the LR and momentum/beta1 of this update, whether the
    step is skipped, and the gradient multiplier (1/scale * clip, negated to
    maximize)."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunk_tensor + pid).to(tl.int64)
    start = tl.load(chunk_start + pid)
    end = tl.minimum(start + CHUNK, tl.load(numels + t))
    k = tl.load(counter)
    lr = tl.load(lr_ptr)
    mom = static_momentum
    if CYCLE_MOMENTUM:
        mom = tl.load(mom_ptr)
    skipped = 0
    if HAS_SKIP:
        skipped = tl.load(skip).to(tl.int32)
    gm = 1.0
    if HAS_GRAD_MUL:
        gm = tl.load(grad_mul)
    if MAXIMIZE:
        gm = -gm
    return t, start, end, k, lr, mom, skipped, gm


@triton.jit
def _sgd_block(
    p_base, g_base, c_base, b_base, bs_base, offs, mask, rows, row_mask, start, is_fresh, gm, lr, mom, one_minus_dampening,
    weight_decay, k, numel,
    P_DT: tl.constexpr, S_DT: tl.constexpr, USE_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    HAS_WD: tl.constexpr, VEC: tl.constexpr, SR: tl.constexpr, Q8: tl.constexpr, KAHAN: tl.constexpr,
):  # fmt: skip
    """One BLOCK of an SGD chunk (``mask`` None: a full, aligned block).
    torch's for-loop ops in fused_kernels.cuh's order: each ``a * b + c`` is
    one fused multiply-add on the GPU (the compiler contracts it), as there."""
    p_ptrs = _at(p_base, offs, VEC)
    p = _ld_param(p_ptrs, c_base, offs, mask, VEC, KAHAN)
    d = _ld(_at(g_base, offs, VEC), mask) * gm
    idx = start + offs  # element index in the tensor: stochastic rounding's bits
    if HAS_WD:
        d = p * weight_decay + d
    if USE_MOMENTUM:
        b = _state_ld(b_base, bs_base, offs, mask, rows, row_mask, True, Q8, VEC)
        # torch starts the buffer at the first gradient, undamped
        b = tl.where(is_fresh, d, d * one_minus_dampening + b * mom)
        _state_st(b, b_base, bs_base, offs, mask, rows, row_mask, S_DT, SR, k, numel, idx, True, Q8, VEC, 1)
        if NESTEROV:
            d = b * mom + d
        else:
            d = b
    _st_param(d * -lr + p, p_ptrs, c_base, offs, mask, P_DT, SR, k, numel, idx, VEC, KAHAN)


@triton.jit
def _sgd_kernel(
    p_addrs, g_addrs, c_addrs, buf_addrs, bs_addrs, numels, fresh, chunk_tensor, chunk_start,
    rows, n_rows, counter, lr_ptr, mom_ptr, next_lr, grad_mul, skip, ticket,
    momentum, one_minus_dampening, weight_decay,
    P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, CYCLE_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_GRAD_MUL: tl.constexpr,
    HAS_SKIP: tl.constexpr, ADVANCE: tl.constexpr, NEXT: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr, VEC: tl.constexpr,
    SR: tl.constexpr = False, Q8: tl.constexpr = False, KAHAN: tl.constexpr = False,
):  # fmt: skip
    t, start, end, k, lr, mom, skipped, gm = _chunk_setup(
        chunk_tensor, chunk_start, numels, counter, lr_ptr, mom_ptr, grad_mul, skip, momentum,
        CHUNK, CYCLE_MOMENTUM, MAXIMIZE, HAS_GRAD_MUL, HAS_SKIP,
    )  # fmt: skip
    # torch's add_(grad, alpha=-lr) and mul_(momentum) round the double scalars to float32
    lr = lr.to(tl.float32)
    mom = mom.to(tl.float32)
    if skipped == 0:
        numel = tl.load(numels + t)
        # chunk-relative int32 offsets from int64 bases: a tensor may exceed 2**31
        p_base = _ptr(p_addrs, t, P_DT) + start
        g_base = _ptr(g_addrs, t, G_DT) + start
        c_base = p_base  # kahan_sum's compensation (unused without)
        if KAHAN:
            c_base = _ptr(c_addrs, t, P_DT) + start
        b_base = p_base
        bs_base = _ptr(numels, 0, tl.float32)  # (unused without int8 states)
        if USE_MOMENTUM:
            b_base = _ptr(buf_addrs, t, S_DT) + start
            if Q8:
                bs_base = _ptr(bs_addrs, t, tl.float32) + start // QBLOCK
        is_fresh = tl.load(fresh + t) != 0
        n = (end - start).to(tl.int32)
        n_full = 0
        if ALIGNED:
            n_full = n // BLOCK
            for i in range(0, n_full):
                _sgd_block(p_base, g_base, c_base, b_base, bs_base, _full_block_offsets(i, BLOCK), None, 0, None, start, is_fresh, gm, lr, mom,
                           one_minus_dampening, weight_decay, k, numel,
                           P_DT, S_DT, USE_MOMENTUM, NESTEROV, HAS_WD, VEC, SR, False, KAHAN)  # fmt: skip
        if Q8:  # int8 states: [rows, QBLOCK] blocks (one loop per shape: the compiler wants one type per variable)
            for off in range(n_full * BLOCK, n, TAIL):
                offs, rws = _q8_offsets(off, TAIL // QBLOCK)
                _sgd_block(p_base, g_base, c_base, b_base, bs_base, offs, offs < n, rws, rws * QBLOCK < n, start, is_fresh, gm,
                           lr, mom, one_minus_dampening, weight_decay, k, numel,
                           P_DT, S_DT, USE_MOMENTUM, NESTEROV, HAS_WD, 0, SR, True, KAHAN)  # fmt: skip
        else:
            for off in range(n_full * BLOCK, n, TAIL):
                offs = off + tl.arange(0, TAIL)
                _sgd_block(p_base, g_base, c_base, b_base, bs_base, offs, offs < n, 0, None, start, is_fresh, gm, lr,
                           mom, one_minus_dampening, weight_decay, k, numel,
                           P_DT, S_DT, USE_MOMENTUM, NESTEROV, HAS_WD, 0, SR, False, KAHAN)  # fmt: skip
    if ADVANCE or NEXT:
        if _draw_ticket(ticket):
            _finish_step(rows, n_rows, counter, next_lr, k, skipped, ADVANCE, NEXT)


@triton.jit
def _adam_block(
    p_base, g_base, c_base, m_base, v_base, vmax_base, ms_base, vs_base, vmaxs_base, offs, mask, rows, row_mask, start,
    gm, decay, coeff, small_w, beta2, one_minus_beta2, eps, weight_decay, bc2_sqrt, neg_step_size, k, numel,
    P_DT: tl.constexpr, S_DT: tl.constexpr, AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr,
    VEC: tl.constexpr, SR: tl.constexpr, Q8: tl.constexpr, KAHAN: tl.constexpr,
):  # fmt: skip
    """One BLOCK of an Adam chunk (``mask`` None: a full, aligned block):
    torch's for-loop ops in fused_kernels.cuh's order (lerp_ as one
    multiply-add from its base, addcmul_, addcdiv_)."""
    p_ptrs = _at(p_base, offs, VEC)
    p = _ld_param(p_ptrs, c_base, offs, mask, VEC, KAHAN)
    g = _ld(_at(g_base, offs, VEC), mask) * gm
    idx = start + offs  # element index in the tensor: stochastic rounding's bits
    if HAS_WD:
        if DECOUPLED:
            p = p * decay
        else:
            g = p * weight_decay + g
    m_old = _state_ld(m_base, ms_base, offs, mask, rows, row_mask, True, Q8, VEC)
    m = coeff * (g - m_old) + tl.where(small_w, m_old, g)
    v = (one_minus_beta2 * g) * g + _state_ld(v_base, vs_base, offs, mask, rows, row_mask, False, Q8, VEC) * beta2
    _state_st(m, m_base, ms_base, offs, mask, rows, row_mask, S_DT, SR, k, numel, idx, True, Q8, VEC, 1)
    _state_st(v, v_base, vs_base, offs, mask, rows, row_mask, S_DT, SR, k, numel, idx, False, Q8, VEC, 2)
    if AMSGRAD:
        vmax = _state_ld(vmax_base, vmaxs_base, offs, mask, rows, row_mask, False, Q8, VEC)
        # torch.maximum: NaN wins
        v = tl.where((vmax != vmax) | (vmax > v), vmax, v)
        _state_st(v, vmax_base, vmaxs_base, offs, mask, rows, row_mask, S_DT, SR, k, numel, idx,
                  False, Q8, VEC, 3)  # fmt: skip
    denom = tl.sqrt(v) / bc2_sqrt + eps
    _st_param(p + (neg_step_size * m) / denom, p_ptrs, c_base, offs, mask, P_DT, SR, k, numel, idx, VEC, KAHAN)


@triton.jit
def _adam_kernel(
    p_addrs, g_addrs, c_addrs, m_addrs, v_addrs, vmax_addrs, ms_addrs, vs_addrs, vmaxs_addrs, step_addrs, numels, chunk_tensor,
    chunk_start, num_tensors,
    rows, n_rows, counter, lr_ptr, mom_ptr, next_lr, grad_mul, skip, ticket, betas,
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
    P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, V_DT: tl.constexpr,
    CYCLE_MOMENTUM: tl.constexpr, AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, HAS_BETAS: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_GRAD_MUL: tl.constexpr,
    HAS_SKIP: tl.constexpr, ADVANCE: tl.constexpr, NEXT: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr, VEC: tl.constexpr, BLOCK_T: tl.constexpr,
    SR: tl.constexpr = False, Q8: tl.constexpr = False, KAHAN: tl.constexpr = False,
):  # fmt: skip
    t, start, end, k, lr, b1, skipped, gm = _chunk_setup(
        chunk_tensor, chunk_start, numels, counter, lr_ptr, mom_ptr, grad_mul, skip, beta1,
        CHUNK, CYCLE_MOMENTUM, MAXIMIZE, HAS_GRAD_MUL, HAS_SKIP,
    )  # fmt: skip
    one_minus_b1 = one_minus_beta1
    if HAS_BETAS:  # tensor betas, read on the device: [b1, 1 - b1, b2, 1 - b2]
        if not CYCLE_MOMENTUM:
            b1 = tl.load(betas)
        one_minus_b1 = tl.load(betas + 1)
        beta2 = tl.load(betas + 2)
        one_minus_beta2 = tl.load(betas + 3)
    if CYCLE_MOMENTUM:
        one_minus_b1 = (1.0 - tl.cast(b1, tl.float64)).to(tl.float32)
    step = tl.load(_ptr(step_addrs, t, tl.float32)) + 1.0
    if skipped == 0:
        numel = tl.load(numels + t)
        # once per program, in float64 as torch's Python scalars, then one rounding each
        step64 = step.to(tl.float64)
        bc1 = 1.0 - tl.exp2(step64 * tl.log2(tl.cast(b1, tl.float64)))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp2(step64 * tl.log2(tl.cast(beta2, tl.float64)))).to(tl.float32)
        neg_step_size = (-(tl.cast(lr, tl.float64) / bc1)).to(tl.float32)
        decay = (1.0 - tl.cast(lr, tl.float64) * tl.cast(weight_decay, tl.float64)).to(tl.float32)
        # lerp_'s two forms, by the weight (uniform): a multiply-add from a base
        small_w = tl.abs(one_minus_b1) < 0.5
        coeff = tl.where(small_w, one_minus_b1, one_minus_b1 - 1.0)
        p_base = _ptr(p_addrs, t, P_DT) + start
        g_base = _ptr(g_addrs, t, G_DT) + start
        c_base = p_base  # kahan_sum's compensation (unused without)
        if KAHAN:
            c_base = _ptr(c_addrs, t, P_DT) + start
        m_base = _ptr(m_addrs, t, S_DT) + start
        v_base = _ptr(v_addrs, t, V_DT) + start  # (V_DT: S_DT, or uint8 codes for int8 states)
        vmax_base = v_base
        if AMSGRAD:
            vmax_base = _ptr(vmax_addrs, t, V_DT) + start
        ms_base = _ptr(numels, 0, tl.float32)  # int8 states' block scales (unused otherwise)
        vs_base = ms_base
        vmaxs_base = ms_base
        if Q8:
            ms_base = _ptr(ms_addrs, t, tl.float32) + start // QBLOCK
            vs_base = _ptr(vs_addrs, t, tl.float32) + start // QBLOCK
            if AMSGRAD:
                vmaxs_base = _ptr(vmaxs_addrs, t, tl.float32) + start // QBLOCK
        n = (end - start).to(tl.int32)
        n_full = 0
        if ALIGNED:
            n_full = n // BLOCK
            for i in range(0, n_full):
                _adam_block(p_base, g_base, c_base, m_base, v_base, vmax_base, ms_base, vs_base, vmaxs_base,
                            _full_block_offsets(i, BLOCK), None, 0, None, start, gm, decay, coeff, small_w, beta2, one_minus_beta2, eps, weight_decay, bc2_sqrt,
                            neg_step_size, k, numel, P_DT, S_DT, AMSGRAD, DECOUPLED, HAS_WD, VEC, SR, False, KAHAN)  # fmt: skip
        if Q8:  # int8 states: [rows, QBLOCK] blocks (one loop per shape: the compiler wants one type per variable)
            for off in range(n_full * BLOCK, n, TAIL):
                offs, rws = _q8_offsets(off, TAIL // QBLOCK)
                _adam_block(p_base, g_base, c_base, m_base, v_base, vmax_base, ms_base, vs_base, vmaxs_base, offs, offs < n, rws,
                            rws * QBLOCK < n, start, gm, decay, coeff, small_w, beta2, one_minus_beta2, eps, weight_decay,
                            bc2_sqrt, neg_step_size, k, numel, P_DT, S_DT, AMSGRAD, DECOUPLED, HAS_WD, 0, SR, True, KAHAN)  # fmt: skip
        else:
            for off in range(n_full * BLOCK, n, TAIL):
                offs = off + tl.arange(0, TAIL)
                _adam_block(p_base, g_base, c_base, m_base, v_base, vmax_base, ms_base, vs_base, vmaxs_base, offs, offs < n, 0,
                            None, start, gm, decay, coeff, small_w, beta2, one_minus_beta2, eps, weight_decay,
                            bc2_sqrt, neg_step_size, k, numel, P_DT, S_DT, AMSGRAD, DECOUPLED, HAS_WD, 0, SR, False, KAHAN)  # fmt: skip
    # Epilogue: the last program advances every tensor's step (and the schedule).
    if _draw_ticket(ticket):
        if skipped == 0:
            for t0 in range(0, num_tensors, BLOCK_T):
                idx = t0 + tl.arange(0, BLOCK_T)
                tmask = idx < num_tensors
                addr = tl.load(step_addrs + idx, mask=tmask, other=0)
                s_ptr = addr.to(tl.pointer_type(tl.float32))
                tl.store(s_ptr, tl.load(s_ptr, mask=tmask, other=0.0) + 1.0, mask=tmask)
        _finish_step(rows, n_rows, counter, next_lr, k, skipped, ADVANCE, NEXT)


# ----------------------------------------------------------------- host side
def _dummy(device: torch.device, dtype: torch.dtype) -> Tensor:
    d = _dummies.get((device, dtype))
    if d is None:
        d = _dummies[(device, dtype)] = torch.zeros(1, dtype=dtype, device=device)
    return d


def _tl_dtype(t: Tensor):
    try:
        return _TL_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"the triton backend supports float32, bfloat16 and float16 tensors, got {t.dtype}") from None


def _common(bucket, sched, grad_mul, skip):
    device = bucket.device
    rows = sched.rows_device
    f32 = _dummy(device, torch.float32)
    f64 = _dummy(device, torch.float64)  # the live values are float64 (optim/live_lr.py)
    return dict(
        rows=rows,
        n_rows=sm.segment_count(sched.rows),  # (a LambdaLR table's values follow the segments)
        counter=sched.counter,
        lr_ptr=sched.lr,
        mom_ptr=sched.mom if sched.mom is not None else f64,
        next_lr=sched.next if sched.next is not None else f64,
        grad_mul=grad_mul.to(torch.float32) if grad_mul is not None else f32,
        skip=skip if skip is not None else _dummy(device, torch.bool),
        ticket=bucket.ticket,
        CYCLE_MOMENTUM=sched.mom is not None,
        HAS_GRAD_MUL=grad_mul is not None,
        HAS_SKIP=skip is not None,
        NEXT=sched.next is not None,
    )


def _bucket_tables(bucket, tables_fn):
    """(tables, chunks, step table, grad dtype, every address 16-byte aligned,
    dense stand-ins or None) of a plan bucket: the plan's own tables when it
    keeps them (patched by the C++ check, which also keeps them aligned when
    they were), else tables for this step's lists (TableCache) with dense
    stand-ins: ``tables_fn(grads)`` gives (address lists, tables, step table, dense)."""
    if bucket.tables is not None:
        return bucket.tables, bucket.num_chunks, bucket.step_table, bucket.grad_dtype, bucket.aligned, None
    grads = bucket.grads()
    lists, tables, step_table, dense = tables_fn(grads)
    return tables.flat(), tables.num_chunks, step_table, grads[0].dtype, aligned_16(lists), dense


def _comp_table(bucket, tables):
    """kahan_sum's compensation address table (the last address table), or a placeholder."""
    return tables[-4] if bucket.compensation else tables[0]


def sgd_(
    bucket, *, sched, momentum, use_momentum, dampening, weight_decay, nesterov, maximize, grad_mul, skip, advance,
    stochastic=False,
) -> bool:  # fmt: skip
    device, params = bucket.device, bucket.params
    bufs = bucket.slot("momentum_buffer") if use_momentum else []
    scales = bucket.aux  # int8 buffers' scales
    q8 = bool(scales)

    def tables_fn(grads):
        lists, tables, dense = sgd_tables(_tables, params, grads, bufs, use_momentum, scales, bucket.compensation)
        return lists, tables, None, dense

    tables, num_chunks, _, g_dtype, aligned, dense = _bucket_tables(bucket, tables_fn)
    fresh = fresh_flags(bucket.fresh or [], len(params), device)  # None: no buffer is new (or no momentum)
    s_dtype = bufs[0].dtype if use_momentum else params[0].dtype
    _sgd_kernel[(num_chunks,)](
        tables[0], tables[1], _comp_table(bucket, tables), tables[2] if use_momentum else tables[0], tables[3] if q8 else tables[0],
        tables[-3], fresh, tables[-2], tables[-1],
        momentum=float(momentum),
        # complements in float64 on the host, then rounded: as the torch backend
        one_minus_dampening=1.0 - float(dampening), weight_decay=float(weight_decay),
        P_DT=_tl_dtype(params[0]), G_DT=_TL_DTYPES[g_dtype], S_DT=_TL_DTYPES[s_dtype],
        USE_MOMENTUM=use_momentum, NESTEROV=nesterov,
        MAXIMIZE=maximize, HAS_WD=weight_decay != 0, ADVANCE=advance, SR=bool(stochastic), Q8=q8,
        KAHAN=bool(bucket.compensation),
        **loop_constexprs(aligned and not q8, params[0].dtype, g_dtype, s_dtype),
        **_common(bucket, sched, grad_mul, skip),
    )  # fmt: skip
    if dense is not None:
        dense.finish()
    return advance


def adam_(
    bucket, *, sched, beta1, beta2, betas=None, eps, weight_decay, decoupled, amsgrad, maximize, grad_mul, skip, advance,
    stochastic=False,
) -> bool:  # fmt: skip
    params, states, slot = bucket.params, bucket.states, bucket.slot
    ns = len(bucket.slots)
    scales = bucket.aux  # int8 states' scales
    q8 = bool(scales)
    tables, num_chunks, step_table, g_dtype, aligned, dense = _bucket_tables(
        bucket,
        lambda grads: adam_tables(
            _tables, params, grads, slot("exp_avg"), slot("exp_avg_sq"), slot("max_exp_avg_sq") if amsgrad else [],
            bucket.steps, amsgrad, scales, bucket.compensation,
        ),
    )  # fmt: skip
    sc = tables[2 + ns : 2 + 2 * ns] if q8 else [tables[0]] * 3
    _adam_kernel[(num_chunks,)](
        tables[0], tables[1], _comp_table(bucket, tables), tables[2], tables[3],
        tables[4] if amsgrad else tables[3], sc[0], sc[1], sc[2] if amsgrad and q8 else sc[0], step_table,
        tables[-3], tables[-2], tables[-1], len(params),
        betas=betas if betas is not None else _dummy(bucket.device, torch.float32), HAS_BETAS=betas is not None,
        beta1=float(beta1),
        one_minus_beta1=1.0 - float(beta1), beta2=float(beta2), one_minus_beta2=1.0 - float(beta2),
        eps=float(eps), weight_decay=float(weight_decay),
        P_DT=_tl_dtype(params[0]), G_DT=_TL_DTYPES[g_dtype], S_DT=_TL_DTYPES[states[0][0].dtype],
        V_DT=tl.uint8 if q8 else _TL_DTYPES[states[0][0].dtype],  # exp_avg_sq: unsigned codes for int8 states
        AMSGRAD=amsgrad, DECOUPLED=decoupled,
        MAXIMIZE=maximize, HAS_WD=weight_decay != 0, ADVANCE=advance, BLOCK_T=BLOCK_T, SR=bool(stochastic), Q8=q8,
        KAHAN=bool(bucket.compensation),
        **loop_constexprs(aligned and not q8, params[0].dtype, g_dtype, states[0][0].dtype),
        **_common(bucket, sched, grad_mul, skip),
    )  # fmt: skip
    if dense is not None:
        dense.finish()
    return advance


# The generic step (optim/algorithm.py): its own module, which uses the helpers above.
from .triton_step import step_  # noqa: E402, F401  (kernels_for('triton').step_; it imports the helpers above)
