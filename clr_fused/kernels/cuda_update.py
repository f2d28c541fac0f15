"""The ``cuda`` backend: the compiled kernels of csrc/ behind torch.library ops.

Same bucket interface as ``reference`` and ``triton_update``; the device
tables come from the same ``TableCache``.  The ops declare what they mutate
(params, states, the step counters) and have fake implementations, so
torch.compile treats them as opaque and CUDA graphs capture them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ext
from .tensor_tables import TableCache, adam_tables, fresh_flags, sgd_tables, ticket

CHUNK = 16384  # must equal kChunk in csrc/multi_tensor.cuh

_tables = TableCache(CHUNK)


def _module():
    mod = _ext.load()
    if mod is None:
        raise RuntimeError(f"the clr_fused CUDA extension is not available: {_ext.error()!r}")
    assert mod.CHUNK == CHUNK, "csrc/ and cuda_update.py disagree on the chunk size"
    return mod


@torch.library.custom_op(
    "clr_fused::cuda_sgd_step", mutates_args=("params", "momentum_buffers", "counter", "ticket")
)
def _sgd_op(
    params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], tables: list[Tensor], fresh: Tensor,
    rows: Tensor, counter: Tensor, plateau_lr: Optional[Tensor], grad_mul: Optional[Tensor], skip: Optional[Tensor],
    ticket: Tensor, momentum: float, dampening: float, weight_decay: float, use_momentum: bool,
    cycle_momentum: bool, nesterov: bool, maximize: bool, advance: bool,
) -> None:  # fmt: skip
    state_dtype = momentum_buffers[0].dtype if use_momentum else params[0].dtype
    _module().sgd_step(
        tables[:-3], tables[-3], tables[-2], tables[-1], fresh, rows, counter, plateau_lr, grad_mul, skip, ticket,
        momentum, dampening, weight_decay, use_momentum, cycle_momentum, nesterov, maximize, advance,
        params[0].dtype, state_dtype,
    )  # fmt: skip


@_sgd_op.register_fake
def _(*args, **kwargs) -> None:
    return None


@torch.library.custom_op(
    "clr_fused::cuda_adam_step",
    mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "counter", "ticket"),
)
def _adam_op(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], tables: list[Tensor], step_table: Tensor, rows: Tensor,
    counter: Tensor, plateau_lr: Optional[Tensor], grad_mul: Optional[Tensor], skip: Optional[Tensor], ticket: Tensor,
    beta1: float, beta2: float, eps: float, weight_decay: float, amsgrad: bool, cycle_momentum: bool,
    decoupled: bool, maximize: bool, advance: bool,
) -> None:  # fmt: skip
    _module().adam_step(
        tables[:-3], step_table, tables[-3], tables[-2], tables[-1], rows, counter, plateau_lr, grad_mul, skip, ticket,
        beta1, beta2, eps, weight_decay, amsgrad, cycle_momentum, decoupled, maximize, advance,
        params[0].dtype, exp_avgs[0].dtype,
    )  # fmt: skip


@_adam_op.register_fake
def _(*args, **kwargs) -> None:
    return None


def _table_list(tables) -> list[Tensor]:
    return [*tables.addrs, tables.numels, tables.chunk_tensor, tables.chunk_start]


def _optional(sched, grad_mul, skip):
    return sched.plateau_lr, None if grad_mul is None else grad_mul.to(torch.float32), skip


def sgd_(
    params, grads, momentum_buffers, new_buffer, *, sched, momentum, use_momentum, dampening, weight_decay, nesterov,
    maximize, grad_mul, skip, advance,
) -> bool:  # fmt: skip
    device = params[0].device
    dense, tables = sgd_tables(_tables, params, grads, momentum_buffers, use_momentum)
    plateau_lr, gm, skip = _optional(sched, grad_mul, skip)
    _sgd_op(
        dense.lists[0], dense.lists[1], dense.lists[2] if use_momentum else [], _table_list(tables),
        fresh_flags(new_buffer if use_momentum else [], len(params), device), sched.rows_table(device),
        sched.counter, plateau_lr, gm, skip, ticket(device),
        0.0 if sched.cycles_momentum else float(momentum), float(dampening), float(weight_decay), use_momentum,
        sched.cycles_momentum, nesterov, maximize, advance,
    )  # fmt: skip
    dense.finish()
    return advance


def adam_(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, sched, beta1, beta2, eps, weight_decay, decoupled,
    amsgrad, maximize, grad_mul, skip, advance,
) -> bool:  # fmt: skip
    device = params[0].device
    dense, tables, step_table = adam_tables(_tables, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad)
    plateau_lr, gm, skip = _optional(sched, grad_mul, skip)
    _adam_op(
        dense.lists[0], dense.lists[1], dense.lists[2], dense.lists[3], dense.lists[4] if amsgrad else [], list(steps),
        _table_list(tables), step_table, sched.rows_table(device), sched.counter, plateau_lr, gm, skip,
        ticket(device), 0.0 if sched.cycles_momentum else float(beta1), float(beta2), float(eps),
        float(weight_decay), amsgrad, sched.cycles_momentum, decoupled, maximize, advance,
    )  # fmt: skip
    dense.finish()
    return advance
