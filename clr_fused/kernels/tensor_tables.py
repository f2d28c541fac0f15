"""Device-side tensor tables for multi-tensor kernels, cached between steps.

A launch over T tensors reads, per tensor, the addresses of its parameter,
gradient and state tensors and its element count, and per chunk (program)
which tensor it works on and where the chunk starts.  The tables are built on
the host once and uploaded without a sync; the next step reuses them as long
as every address and size is the same (a steady training loop with the
caching allocator, and always under CUDA-graph capture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .low_precision import check_state_lists


@dataclass
class TensorTables:
    addrs: list[Tensor]  # one int64 [T] table per tensor list
    numels: Tensor  # int64 [T]
    chunk_tensor: Tensor  # int32 [C]
    chunk_start: Tensor  # int64 [C]
    num_tensors: int
    num_chunks: int

    def flat(self) -> list[Tensor]:
        """The kernels' ``tables`` argument: [addresses..., numels, chunk_tensor, chunk_start]."""
        return [*self.addrs, self.numels, self.chunk_tensor, self.chunk_start]


def aligned_16(lists) -> bool:
    """Every tensor of every list starts on a 16-byte boundary: the kernels'
    vector path may then be taken (the Triton ALIGNED variant)."""
    return all(t.data_ptr() % 16 == 0 for ts in lists for t in ts)


def _upload(values: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _key(lists: list[list[Tensor]]) -> tuple:
    return tuple(t.data_ptr() for ts in lists for t in ts) + tuple(t.numel() for t in lists[0])


class TableCache:
    """Keeps the last tables per bucket id; rebuilds when any address changes."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self._cache: dict[object, tuple[tuple, TensorTables]] = {}

    def get(self, bucket_id: object, lists: list[list[Tensor]], device: torch.device) -> TensorTables:
        key = _key(lists)
        hit = self._cache.get(bucket_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        tables = build_tables(lists, self.chunk_size, device)
        self._cache[bucket_id] = (key, tables)
        return tables


def build_tables(lists: list[list[Tensor]], chunk_size: int, device: torch.device) -> TensorTables:
    """Address tables of ``lists`` (the first one sets the element counts) and
    the chunk -> (tensor, start) map, uploaded without a sync."""
    numels = [t.numel() for t in lists[0]]
    chunk_tensor, chunk_start = [], []
    for i, n in enumerate(numels):
        for start in range(0, n, chunk_size):
            chunk_tensor.append(i)
            chunk_start.append(start)
    if not chunk_tensor:
        # Every tensor is empty: one no-op program still runs the epilogue.
        chunk_tensor, chunk_start = [0], [0]
    return TensorTables(
        addrs=[_upload([t.data_ptr() for t in ts], torch.int64, device) for ts in lists],
        numels=_upload(numels, torch.int64, device),
        chunk_tensor=_upload(chunk_tensor, torch.int32, device),
        chunk_start=_upload(chunk_start, torch.int64, device),
        num_tensors=len(numels),
        num_chunks=len(chunk_tensor),
    )


def same_dense_layout(tensors: list[Tensor]) -> bool:
    """True if all tensors share one non-overlapping, dense layout, so an
    elementwise kernel may walk their storage as flat arrays."""
    first = tensors[0]
    if first.numel() == 0:
        return all(t.numel() == 0 for t in tensors)
    if any(t.shape != first.shape or t.stride() != first.stride() for t in tensors):
        return False
    if first.is_contiguous():
        return True
    dims = sorted(((s, n) for s, n in zip(first.stride(), first.shape) if n != 1), key=lambda sn: sn[0])
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class Densified:
    """Dense stand-ins for tensors whose layouts differ; written back after.

    The stand-ins take the parameter's layout when it is dense (so the
    kernels walk the elements in the parameter's memory order, the order
    int8 state blocks and stochastic rounding's bits follow on every
    backend), else the contiguous one.  Only the first ``shaped`` lists are
    shaped like the parameters; later ones (int8 states' scales) pass as they
    are.  ``codes_end``: where the int8 codes (one list per scale list) end
    among the shaped lists (default: with them)."""

    def __init__(self, lists: list[list[Tensor]], shaped: int | None = None, codes_end: int | None = None):
        self.lists = [list(ts) for ts in lists]
        self.write_back: list[tuple[Tensor, Tensor]] = []
        shaped = len(lists) if shaped is None else shaped
        codes_end = shaped if codes_end is None else codes_end
        if shaped < len(lists):  # int8 states: the codes are the last state lists, one per scale list
            check_state_lists(lists[codes_end - (len(lists) - shaped) : codes_end], lists[shaped:])
        for i in range(len(lists[0])):
            group = [ts[i] for ts in lists[:shaped]]
            if not same_dense_layout(group):
                p = group[0]
                like = p if same_dense_layout([p]) else None
                for ts in self.lists[:shaped]:
                    orig = ts[i]
                    if like is not None:
                        ts[i] = (
                            orig
                            if orig.stride() == like.stride()
                            else torch.empty_like(like, dtype=orig.dtype).copy_(orig)
                        )
                    else:
                        ts[i] = (
                            orig.contiguous()
                            if orig.is_contiguous()
                            else orig.clone(memory_format=torch.contiguous_format)
                        )
                    if ts is not self.lists[1]:  # gradients are read only
                        self.write_back.append((orig, ts[i]))

    def finish(self) -> None:
        for orig, dense in self.write_back:
            if orig.data_ptr() != dense.data_ptr():
                orig.copy_(dense)


_zero_flags: dict[tuple[torch.device, int], Tensor] = {}


def fresh_flags(new_buffer: list[bool], n: int, device: torch.device) -> Tensor:
    """int8 [n]: 1 where a momentum buffer was created this step.  Almost every
    step has none, and then a cached zero table is used (no upload)."""
    if any(new_buffer):
        flags = torch.tensor(new_buffer, dtype=torch.int8)
        return flags.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else flags
    zeros = _zero_flags.get((device, n))
    if zeros is None:
        zeros = _zero_flags[(device, n)] = torch.zeros(n, dtype=torch.int8, device=device)
    return zeros


def launch_tables(cache: TableCache, key: tuple, shaped, aux=(), comp=None):
    """(dense stand-ins, address lists, tables) of one launch whose tables the
    plan does not keep: ``shaped`` lists [params, grads, states...], the
    codec's ``aux`` lists (int8 scales, as they are) and kahan_sum's ``comp``
    list (or None), the lists in the kernels' table order (multi_tensor.cuh):
    shaped, aux, comp.  ``dense.finish()`` writes the stand-ins back."""
    extra = [comp] if comp else []
    n = len(shaped)
    dense = Densified(list(shaped) + extra + list(aux), n + len(extra), codes_end=n)
    lists = dense.lists[:n] + dense.lists[n + len(extra) :] + dense.lists[n : n + len(extra)]
    return dense, lists, cache.get(key + (len(aux), len(extra)), lists, shaped[0][0].device)


def sgd_tables(cache: TableCache, params, grads, momentum_buffers, use_momentum: bool, scales=(), comp=None):
    """(address lists, tables, dense stand-ins) of an SGD bucket, shared by the fused backends
    (``scales``: the int8 buffers' scale list, after the buffers; ``comp``: kahan_sum's buffers)."""
    shaped = [params, grads] + ([momentum_buffers] if use_momentum else [])
    dense, lists, tables = launch_tables(cache, ("sgd", id(params[0]), len(params), use_momentum), shaped, scales, comp)
    return lists, tables, dense


def adam_tables(
    cache: TableCache, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad: bool, scales=(), comp=None
):
    """(address lists, tables, step address table, dense stand-ins) of an Adam bucket
    (``scales``: the int8 states' scale lists, after the states; ``comp``: kahan_sum's buffers)."""
    device = params[0].device
    shaped = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    step_table = cache.get(("adam-steps", id(params[0]), len(params)), [steps], device).addrs[0]
    dense, lists, tables = launch_tables(cache, ("adam", id(params[0]), len(params), amsgrad), shaped, scales, comp)
    return lists, tables, step_table, dense
