"""The ``cuda`` and ``cpu`` backends: the kernels of csrc/, one op each.

``torch.ops.clr_fused.sgd_step`` / ``adam_step`` are registered in C++
(csrc/ops.cpp: mutation-annotated schemas, version counters bumped in C++)
with a CUDA and a CPU kernel compiled from the same templates; the
dispatcher picks by device.  Their fake (meta) implementations are
registered here, so torch.compile treats a step as one opaque op.

A plan bucket the C++ check keeps (``optim/plan.py``) is launched by the
plan itself: one call, no tensor list crosses into Python.  Other buckets
(non-dense layouts, DTensor shards) pass this step's lists to the op, with
tables from ``TableCache`` and dense stand-ins written back afterwards.
"""

from __future__ import annotations

import torch

from .. import _ext
from .tensor_tables import TableCache, adam_tables, fresh_flags, launch_tables, sgd_tables

CHUNK = 16384  # csrc/constants.h kChunk; _ext.py refuses an extension with another _C.CHUNK

_tables = TableCache(CHUNK)
_registered = False


def _ops():
    global _registered
    if not _registered:
        mod = _ext.load()
        if mod is None:
            raise RuntimeError(f"the clr_fused extension is not available: {_ext.error()!r}")
        _register_fakes()
        _registered = True
    return torch.ops.clr_fused


def _register_fakes() -> None:
    # The ops return nothing and only write their inputs in place.
    for name in ("sgd_step", "adam_step", "step"):
        torch.library.register_fake(f"clr_fused::{name}")(lambda *args, **kwargs: None)


def _grad_mul(grad_mul):
    return None if grad_mul is None else grad_mul.to(torch.float32)


def sgd_(
    bucket, *, sched, momentum, use_momentum, dampening, weight_decay, nesterov, maximize, grad_mul, skip, advance,
    stochastic=False,
) -> bool:  # fmt: skip
    ops = _ops()
    device, params = bucket.device, bucket.params
    gm = _grad_mul(grad_mul)
    fresh = fresh_flags(bucket.fresh or [], len(params), device)  # None: no buffer is new (or no momentum)
    live = (sched.rows_device, sched.counter, sched.lr, sched.mom, sched.next)
    scalars = (float(momentum), float(dampening), float(weight_decay), use_momentum, bool(nesterov), bool(maximize),
               bool(stochastic), advance)  # fmt: skip
    if bucket.native_index >= 0:
        bucket.native.sgd(bucket.native_index, fresh, *live, gm, skip, bucket.ticket, *scalars)
        return advance
    bufs = bucket.slot("momentum_buffer") if use_momentum else []
    scales = bucket.aux  # int8 buffers' scales
    lists, tables, dense = sgd_tables(_tables, params, bucket.grads(), bufs, use_momentum, scales, bucket.compensation)
    ops.sgd_step(
        lists[0], lists[1], lists[2] if use_momentum else [], [s for ss in scales for s in ss],
        tables.flat(), fresh, *live, gm, skip, bucket.ticket, *scalars, compensation=_comp(bucket, lists),
    )  # fmt: skip
    dense.finish()
    return advance


def _comp(bucket, lists) -> list:
    """The compensation list of a launch's address lists (the last one), or none."""
    return lists[-1] if bucket.compensation else []


def adam_(
    bucket, *, sched, beta1, beta2, betas=None, eps, weight_decay, decoupled, amsgrad, maximize, grad_mul, skip, advance,
    stochastic=False,
) -> bool:  # fmt: skip
    ops = _ops()
    gm = _grad_mul(grad_mul)
    live = (sched.rows_device, sched.counter, sched.lr, sched.mom, sched.next)
    scalars = (float(beta1), float(beta2), float(eps), float(weight_decay), amsgrad, decoupled, bool(maximize),
               bool(stochastic), advance)  # fmt: skip
    if bucket.native_index >= 0:
        bucket.native.adam(bucket.native_index, *live, gm, skip, bucket.ticket, betas, *scalars)
        return advance
    slot = bucket.slot
    scales = bucket.aux  # int8 states' scales
    lists, tables, step_table, dense = adam_tables(
        _tables, bucket.params, bucket.grads(), slot("exp_avg"), slot("exp_avg_sq"),
        slot("max_exp_avg_sq") if amsgrad else [], bucket.steps, amsgrad, scales, bucket.compensation,
    )  # fmt: skip
    ops.adam_step(
        lists[0], lists[1], lists[2], lists[3], lists[4] if amsgrad else [],
        [s for ss in scales for s in ss], list(bucket.steps), tables.flat(), step_table, *live, gm, skip, bucket.ticket, betas, *scalars,
        compensation=_comp(bucket, lists),
    )  # fmt: skip
    dense.finish()
    return advance


def step_(
    bucket, algorithm, *, sched, hyper, grad_mul, skip, advance, stochastic=False, scalars=None, write_scalars=False
) -> bool:
    """One bucket of an algorithm on the generic fused step: ``_C.ALGORITHMS``
    names its id (csrc/algorithms.h, by the class's name)."""
    ops = _ops()
    ids = _ext.load().ALGORITHMS
    name = algorithm.__name__
    if name not in ids:
        raise RuntimeError(f"the compiled kernels have no {name} (csrc/algorithms.h lists {sorted(ids)})")
    live = (sched.rows_device, sched.counter, sched.lr, sched.mom, sched.next)
    hyper = [float(x) for x in hyper]
    gm = _grad_mul(grad_mul)
    if bucket.native_index >= 0:
        bucket.native.step(
            bucket.native_index, ids[name], *live, gm, skip, bucket.ticket, hyper, bool(stochastic), advance,
            scalars, bool(write_scalars),
        )  # fmt: skip
        return advance
    states, ns = bucket.states, len(bucket.slots)
    params = bucket.params
    key = ("step", name, id(params[0]), len(params), len(states))
    dense, lists, tables = launch_tables(
        _tables, key, [params, bucket.grads(), *bucket.shaped], bucket.aux, bucket.compensation
    )
    ops.step(
        ids[name], lists[0], lists[1], [t for ts in lists[2 : 2 + ns] for t in ts],
        [t for ts in states[ns:] for t in ts], tables.flat(), *live, gm, skip, bucket.ticket, hyper,
        bool(stochastic), advance, scalars, bool(write_scalars), compensation=_comp(bucket, lists),
    )  # fmt: skip
    dense.finish()
    return advance
