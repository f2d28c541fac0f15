"""The ``triton`` backend's generic step: one kernel for every algorithm on
the generic fused step (``optim/algorithm.py``), which knows no algorithm.

The algorithm hands over two ``@triton.jit`` functions, passed to the kernel
as constexprs:

* ``PREP(lr, mom, k, hyper, scalars, CYCLED)``: once per program, from the
  float64 live LR (and, when ``CYCLED``, the float64 cycled momentum / beta1),
  the step counter, the algorithm's float64 hyperparameter table and its
  group's running float64 scalars (``GROUP_SCALARS``), the nine float32
  scalars its element update takes (float64 math here, never in the element loop);
* ``UPDATE(p, g, s0, s1, c0, ..., c8)``: one block of elements, float32: the
  new parameter and the new states (up to two lists; list 0 the signed int8 map);
* ``FINISH(lr, k, hyper, scalars)`` (algorithms with group scalars): in the
  last program of the group's last launch, the scalars of the next step.

Everything else is the SGD / Adam kernels' machinery (``triton_update.py``):
the chunk tables, aligned 128-bit blocks, int8 blocks, stochastic rounding,
the skip flag, the gradient multiplier, and the last program's ticket that
advances the counter and writes the next update's LR.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tensor_tables import launch_tables
from .triton_update import (
    _TL_DTYPES,
    QBLOCK,
    _at,
    _bucket_tables,
    _chunk_setup,
    _common,
    _comp_table,
    _draw_ticket,
    _finish_step,
    _full_block_offsets,
    _ld,
    _ld_param,
    _ptr,
    _q8_offsets,
    _st_param,
    _state_ld,
    _state_st,
    _store_val,
    _tables,
    _tl_dtype,
    loop_constexprs,
)

_hyper_tables: dict[tuple, torch.Tensor] = {}


def _hyper_table(device: torch.device, hyper: tuple[float, ...]) -> torch.Tensor:
    """The hyperparameters as a float64 device table, uploaded once per value
    (Triton's float arguments are float32: complements must come from the doubles)."""
    key = (device, hyper)
    t = _hyper_tables.get(key)
    if t is None:
        t = _hyper_tables[key] = torch.tensor(hyper, dtype=torch.float64).to(device)
    return t


@triton.jit
def _block(
    p_base, g_base, c_base, s_base, s1_base, ss_base, offs, mask, rows, row_mask, start, gm, c, k, numel,
    UPDATE: tl.constexpr, P_DT: tl.constexpr, S_DT: tl.constexpr, NS: tl.constexpr, VEC: tl.constexpr,
    SR: tl.constexpr, Q8: tl.constexpr, KAHAN: tl.constexpr,
):  # fmt: skip
    p_ptrs = _at(p_base, offs, VEC)
    p = _ld_param(p_ptrs, c_base, offs, mask, VEC, KAHAN)
    g = _ld(_at(g_base, offs, VEC), mask) * gm
    idx = start + offs  # element index in the tensor: stochastic rounding's bits
    s0 = p
    s1 = p
    if NS > 0:
        s0 = _state_ld(s_base, ss_base, offs, mask, rows, row_mask, True, Q8, VEC)
    if NS > 1:
        s1 = _ld(_at(s1_base, offs, VEC), mask)
    p, s0, s1 = UPDATE(p, g, s0, s1, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8])
    if NS > 0:
        _state_st(s0, s_base, ss_base, offs, mask, rows, row_mask, S_DT, SR, k, numel, idx, True, Q8, VEC, 1)
    if NS > 1:
        tl.store(_at(s1_base, offs, VEC), _store_val(s1, S_DT, SR, k, numel, idx, 2), mask=mask)
    _st_param(p, p_ptrs, c_base, offs, mask, P_DT, SR, k, numel, idx, VEC, KAHAN)


@triton.jit
def _no_finish(lr, k, hyper, scalars):
    pass


@triton.jit
def _step_kernel(
    p_addrs, g_addrs, c_addrs, s_addrs, s1_addrs, ss_addrs, numels, chunk_tensor, chunk_start,
    rows, n_rows, counter, lr_ptr, mom_ptr, next_lr, grad_mul, skip, ticket,
    hyper, scalars,
    PREP: tl.constexpr, UPDATE: tl.constexpr, FINISH: tl.constexpr, WRITE_SCALARS: tl.constexpr, NS: tl.constexpr,
    P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr,
    CYCLE_MOMENTUM: tl.constexpr, HAS_GRAD_MUL: tl.constexpr,
    HAS_SKIP: tl.constexpr, ADVANCE: tl.constexpr, NEXT: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr, VEC: tl.constexpr,
    SR: tl.constexpr = False, Q8: tl.constexpr = False, KAHAN: tl.constexpr = False,
):  # fmt: skip
    t, start, end, k, lr, mom, skipped, gm = _chunk_setup(
        chunk_tensor, chunk_start, numels, counter, lr_ptr, mom_ptr, grad_mul, skip, 0.0,
        CHUNK, CYCLE_MOMENTUM, False, HAS_GRAD_MUL, HAS_SKIP,
    )  # fmt: skip
    if skipped == 0:
        c = PREP(lr, mom, k, hyper, scalars, CYCLE_MOMENTUM)
        numel = tl.load(numels + t)
        # chunk-relative int32 offsets from int64 bases: a tensor may exceed 2**31
        p_base = _ptr(p_addrs, t, P_DT) + start
        g_base = _ptr(g_addrs, t, G_DT) + start
        c_base = p_base  # kahan_sum's compensation (unused without)
        if KAHAN:
            c_base = _ptr(c_addrs, t, P_DT) + start
        s_base = p_base
        s1_base = p_base
        ss_base = _ptr(numels, 0, tl.float32)  # (unused without int8 states)
        if NS > 0:
            s_base = _ptr(s_addrs, t, S_DT) + start
            if Q8:
                ss_base = _ptr(ss_addrs, t, tl.float32) + start // QBLOCK
        if NS > 1:
            s1_base = _ptr(s1_addrs, t, S_DT) + start
        n = (end - start).to(tl.int32)
        n_full = 0
        if ALIGNED:
            n_full = n // BLOCK
            for i in range(0, n_full):
                _block(p_base, g_base, c_base, s_base, s1_base, ss_base, _full_block_offsets(i, BLOCK), None, 0, None, start, gm,
                       c, k, numel, UPDATE, P_DT, S_DT, NS, VEC, SR, False, KAHAN)  # fmt: skip
        if Q8:  # int8 states: [rows, QBLOCK] blocks (one loop per shape)
            for off in range(n_full * BLOCK, n, TAIL):
                offs, rws = _q8_offsets(off, TAIL // QBLOCK)
                _block(p_base, g_base, c_base, s_base, s1_base, ss_base, offs, offs < n, rws, rws * QBLOCK < n, start, gm,
                       c, k, numel, UPDATE, P_DT, S_DT, NS, 0, SR, True, KAHAN)  # fmt: skip
        else:
            for off in range(n_full * BLOCK, n, TAIL):
                offs = off + tl.arange(0, TAIL)
                _block(p_base, g_base, c_base, s_base, s1_base, ss_base, offs, offs < n, 0, None, start, gm,
                       c, k, numel, UPDATE, P_DT, S_DT, NS, 0, SR, False, KAHAN)  # fmt: skip
    if ADVANCE or NEXT or WRITE_SCALARS:
        if _draw_ticket(ticket):
            if WRITE_SCALARS:
                if skipped == 0:  # (a skipped step keeps the group's running scalars)
                    FINISH(lr, k, hyper, scalars)
            _finish_step(rows, n_rows, counter, next_lr, k, skipped, ADVANCE, NEXT)


def step_(
    bucket, algorithm, *, sched, hyper, grad_mul, skip, advance, stochastic=False, scalars=None, write_scalars=False
) -> bool:
    """One bucket of ``algorithm`` (an ``optim.algorithm`` subclass: its
    ``triton_prep`` / ``triton_update`` / ``triton_finish`` and state slots)."""
    params, states = bucket.params, bucket.states
    q8 = bucket.aux_lists > 0  # int8 codes, with their block scales after them
    ns = len(bucket.slots)
    if ns > 2 or (q8 and ns > 1):
        raise NotImplementedError("the Triton generic step takes at most two state lists (one with int8 states)")
    h = _hyper_table(bucket.device, tuple(float(x) for x in hyper))

    def tables_fn(grads):
        key = ("step", algorithm.__name__, id(params[0]), len(params), len(states))
        dense, lists, tables = launch_tables(
            _tables, key, [params, grads, *bucket.shaped], bucket.aux, bucket.compensation
        )
        return lists, tables, None, dense

    tables, num_chunks, _, g_dtype, aligned, dense = _bucket_tables(bucket, tables_fn)
    s_dtype = states[0][0].dtype if ns else params[0].dtype
    _step_kernel[(num_chunks,)](
        tables[0], tables[1], _comp_table(bucket, tables), tables[2] if ns else tables[0], tables[3] if ns > 1 else tables[0],
        tables[2 + ns] if q8 else tables[0], tables[-3], tables[-2], tables[-1],
        hyper=h, scalars=scalars if scalars is not None else h,
        PREP=algorithm.triton_prep, UPDATE=algorithm.triton_update,
        FINISH=getattr(algorithm, "triton_finish", None) or _no_finish, WRITE_SCALARS=bool(write_scalars), NS=ns,
        P_DT=_tl_dtype(params[0]), G_DT=_TL_DTYPES[g_dtype], S_DT=_TL_DTYPES[s_dtype],
        ADVANCE=advance, SR=bool(stochastic), Q8=q8, KAHAN=bool(bucket.compensation),
        **loop_constexprs(aligned and not q8, params[0].dtype, g_dtype, s_dtype),
        **_common(bucket, sched, grad_mul, skip),
    )  # fmt: skip
    if dense is not None:
        dense.finish()
    return advance
