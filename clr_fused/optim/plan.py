"""The launch plan: what a step launches, built once and re-checked each step.

A plan holds, per (param group, device, dtype) bucket, the tensors the
kernels read and write (parameters, state lists, Adam's step scalars), its
backend, and for the fused backends the device address tables.  It is built
on the first step and whenever something it depends on changed; a
steady-state step then costs a bounded amount of Python, whatever the number
of tensors:

- per param group (a handful): a structure key (the params list's identity
  and length, the backend, ``amsgrad`` / whether SGD keeps momentum);
- one C++ call (``_C.StepPlan.check``, csrc/step_plan.cpp) that walks every
  parameter: same objects, same storage and dtype, a gradient exactly where
  there was one, same state storage.  A gradient that only moved (the usual
  ``zero_grad(set_to_none=True)`` + backward) is patched into the grad table
  there; anything else makes the optimizer rebuild the plan.

Non-dense layouts, DTensor shards (FSDP2) and the ``torch`` backend take the
per-step Python path ("unchecked" buckets: their gradients are gathered in
Python each step and their tables, if any, come from ``TableCache``).
Without the compiled extension the whole check is the Python loop of
:meth:`LaunchPlan.valid`, O(tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _ext, codecs
from ..kernels.tensor_tables import aligned_16, build_tables, same_dense_layout


def local(t: Tensor | None) -> Tensor | None:
    """The local shard of a DTensor (FSDP2 parameters, grads, states), which
    shares its storage; any other tensor as it is.  Kernels run on shards."""
    return t.to_local() if hasattr(t, "to_local") else t


def as_real(t: Tensor) -> Tensor:
    """A complex tensor as its real view (torch's optimizers update complex
    parameters that way: real and imaginary parts as independent reals)."""
    return torch.view_as_real(t) if t.is_complex() else t


def kernel_view(t: Tensor) -> Tensor:
    """What the kernels update: the local shard, as reals."""
    return as_real(local(t))


@dataclass(eq=False)
class Bucket:
    """One launch: the tensors of one (param group, device, dtype)."""

    group_index: int
    device: torch.device
    backend: str
    owners: list[Tensor]  # the parameters as param_groups hold them
    params: list[Tensor]  # their local tensors (what the kernels write)
    slots: tuple[str, ...]  # the state slots' names, in the order of their lists in ``states``
    states: list[list[Tensor]]  # the slots' lists, then the codec's own (aux_lists of them: block scales)
    steps: list[Tensor] = field(default_factory=list)  # Adam's float32 step scalars
    fresh: list[bool] | None = None  # SGD: momentum buffers created for the next launch
    tables: list[Tensor] | None = None  # fused + checked: [addrs..., numels, chunk_tensor, chunk_start]
    step_table: Tensor | None = None
    num_chunks: int = 0
    grad_dtype: torch.dtype | None = None
    aligned: bool = False  # every address 16-byte aligned (kept so by the C++ check): vector accesses
    native: Any = None  # the _C.StepPlan that checks (and launches) this bucket
    native_index: int = -1
    # The int32 counter the fused kernels' last block draws (zero between
    # launches); one per bucket, so launches in flight on several streams or
    # threads never share one.
    ticket: Tensor | None = None
    complex: bool = False  # complex parameters, updated through their real views
    aux_lists: int = 0  # the last this many state lists are the codec's own (not shaped like the parameters)
    # kahan_sum: each parameter's compensation buffer (its dtype and layout), or None
    compensation: list[Tensor] | None = None

    def kernel_lists(self, grads: list[Tensor]) -> list[list[Tensor]]:
        """The lists the kernels address, in their tables' order: parameters,
        gradients, the state lists (then the codec's own), the compensation list."""
        return [self.params, grads, *self.states, *([self.compensation] if self.compensation else [])]

    def slot(self, name: str) -> list[Tensor]:
        """A slot's state list (``bucket.slot("exp_avg")``)."""
        return self.states[self.slots.index(name)]

    @property
    def shaped(self) -> list[list[Tensor]]:
        """The state lists shaped like the parameters (the slots', in order)."""
        return self.states[: len(self.states) - self.aux_lists]

    @property
    def aux(self) -> list[list[Tensor]]:
        """The codec's own lists (a quantizing codec's block scales), after the slots'."""
        return self.states[len(self.states) - self.aux_lists :]

    def grads(self, shards: bool = True) -> list[Tensor]:
        """This step's gradients, as reals: local tensors, or as the parameters
        hold them (DTensors under FSDP2, for a norm that DTensor reduces
        across ranks)."""
        if self.native_index >= 0:
            grads = self.native.grads(self.native_index)
            return [as_real(g) for g in grads] if self.complex else grads
        return [kernel_view(p.grad) if shards else as_real(p.grad) for p in self.owners]


class LaunchPlan:
    def __init__(self, keys: list[tuple], groups: list[list[Tensor]], buckets: list[Bucket], native: Any) -> None:
        self.keys = keys
        self.groups = groups  # the params lists, as objects (identity)
        self.buckets = buckets
        self.native = native
        # the optimizer's state store and its write count when the plan was built (base._launch_plan)
        self.state: Any = None
        self.state_version = -1
        if native is None:
            # the Python check: (param, its geometry, kind of grad) per parameter
            self._expect = [(p, _geometry(p), _grad_kind(p)) for g in groups for p in g]

    def valid(self, keys: list[tuple]) -> bool:
        if keys != self.keys:
            return False
        if self.native is not None:
            return self.native.check(self.groups)
        return all(_geometry(p) == geo and _grad_kind(p) == kind for p, geo, kind in self._expect)

    def release(self) -> None:
        """Drop the gradient references the check took (kept only for a launch)."""
        if self.native is not None:
            self.native.release_all()


def _geometry(p: Tensor) -> tuple:
    """What the kernels rely on of a parameter (the C++ check's Python twin)."""
    t = local(p)
    return (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _grad_kind(p: Tensor) -> tuple:
    """Whether there is a gradient, its layout, dtype and shape (the rebuild
    refuses a sparse one or one that does not match its parameter)."""
    g = p.grad
    return () if g is None else (g.layout, g.dtype, tuple(g.shape))


def validate(
    param_groups: list[dict[str, Any]],
    backend_for: Callable[[torch.device, torch.dtype], str],
    check_state: Callable[[Tensor, str, int, int], None],
) -> None:
    """Everything a launch relies on, checked before anything is created or
    written: each gradient against its parameter (layout, shape, device,
    dtype), the backend for the parameter's dtype, and its existing state
    (``check_state(param, backend, group_index, index)``).  Raises with the
    group, the parameter's index and what changed."""
    for gi, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            where = f"param group {gi}, parameter {i}"
            if p.is_inference():
                # torch's optimizers fail on it too (its in-place update is refused); the Triton
                # kernels write through raw pointers and would not notice
                raise RuntimeError(
                    f"{where}: Inplace update to inference tensor outside InferenceMode is not allowed "
                    "(the parameter was created under torch.inference_mode(); clone() it outside to train it)"
                )
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError("clr_fused optimizers do not support sparse gradients; use torch.optim.SparseAdam")
            if g.shape != p.shape or g.device != p.device:
                raise RuntimeError(
                    f"{where}: its gradient has shape {tuple(g.shape)} on {g.device}, the parameter {tuple(p.shape)} "
                    f"on {p.device} (was the parameter replaced through .data / set_() / resize_() after backward?)"
                )
            backend = backend_for(p.device, p.dtype)
            if backend != "torch" and g.dtype != p.dtype:
                raise RuntimeError(
                    f"{where}: its gradient is {g.dtype}, the parameter {p.dtype}; the fused kernels need one dtype "
                    "(backend='torch' takes mixed dtypes)"
                )
            check_state(p, backend, gi, i)


def build(
    param_groups: list[dict[str, Any]],
    keys: list[tuple],
    backend_for: Callable[[torch.device, torch.dtype], str],
    check_state: Callable[[Tensor, str, int, int], None],
    make_states: Callable[
        [int, dict[str, Any], list[Tensor]],
        tuple[tuple[str, ...], list[list[Tensor]], list[Tensor], list[bool] | None],
    ],
    chunk_for: Callable[[str], int | None],
    compensation: Callable[[list[Tensor]], list[Tensor] | None] = lambda params: None,
) -> LaunchPlan:
    """Validate every gradient, create missing states, group into buckets.

    ``make_states(group_index, group, params)`` returns (slot names, state
    lists, steps, fresh flags) for one bucket, creating state lazily as torch does;
    ``chunk_for(backend)`` is the backend's chunk size, or None when it takes
    lists rather than address tables; ``compensation(params)`` a bucket's
    kahan_sum buffers, or None.
    """
    # Refuse bad input before anything (state included) is created.
    validate(param_groups, backend_for, check_state)
    mod = _ext.load()
    groups = [group["params"] for group in param_groups]
    native = mod.StepPlan(groups) if mod is not None else None
    buckets: list[Bucket] = []
    for gi, group in enumerate(param_groups):
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(group["params"]):
            if p.grad is not None:
                by_key.setdefault((p.device, p.dtype), []).append(i)
        for (device, dtype), idx in by_key.items():
            owners = [group["params"][i] for i in idx]
            backend = backend_for(device, dtype)
            slots, states, steps, fresh = make_states(gi, group, owners)
            whole = Bucket(gi, device, backend, owners, [kernel_view(p) for p in owners], tuple(slots),
                           [[kernel_view(s) for s in ss] for ss in states], steps, fresh)  # fmt: skip
            whole.complex = owners[0].is_complex()
            whole.aux_lists = len(states) - len(slots)
            comp = compensation(owners)
            whole.compensation = None if comp is None else [kernel_view(c) for c in comp]
            chunk = chunk_for(backend)
            keep = [native is not None and chunk is not None and _checkable(whole, i) for i in range(len(idx))]
            # The tensors the C++ check keeps tables for, and the rest (one launch each set).
            for kept in (True, False):
                sel = [j for j, k in enumerate(keep) if k == kept]
                if not sel:
                    continue
                b = whole if len(sel) == len(idx) else _subset(whole, sel)
                b.ticket = torch.zeros(1, dtype=torch.int32, device=device)
                positions = [(gi, idx[j]) for j in sel]
                if kept:
                    _keep_tables(b, native, positions, chunk)
                elif native is not None:
                    native.add_unchecked(positions)
                buckets.append(b)
    return LaunchPlan(keys, groups, buckets, native)


def _checkable(b: Bucket, i: int) -> bool:
    """The C++ check can keep tables for tensor ``i``: a plain dense tensor
    whose gradient and states share its layout."""
    p, owner = b.params[i], b.owners[i]
    g = owner.grad
    if hasattr(owner, "to_local") or g.layout != torch.strided or hasattr(g, "to_local"):
        return False
    comp = [b.compensation[i]] if b.compensation else []
    return same_dense_layout([p, as_real(g), *(ss[i] for ss in b.shaped), *comp])


def _subset(b: Bucket, sel: list[int]) -> Bucket:
    pick = lambda xs: [xs[j] for j in sel]  # noqa: E731
    fresh = None if b.fresh is None else pick(b.fresh)
    sub = Bucket(b.group_index, b.device, b.backend, pick(b.owners), pick(b.params), b.slots,
                 [pick(ss) for ss in b.states], pick(b.steps) if b.steps else [],
                 fresh if fresh and any(fresh) else None)  # fmt: skip
    sub.complex = b.complex
    sub.aux_lists = b.aux_lists
    sub.compensation = None if b.compensation is None else pick(b.compensation)
    return sub


def _keep_tables(b: Bucket, native: Any, positions: list[tuple[int, int]], chunk: int) -> None:
    """Build the bucket's address tables and hand it to the C++ plan."""
    if b.aux_lists:  # (the C++ check keeps their geometry from here on)
        codecs.stored(b.states[0][0]).check_lists(b.shaped, b.aux)
    grads = b.grads()
    b.grad_dtype = grads[0].dtype
    lists = b.kernel_lists(grads)
    tables = build_tables(lists, chunk, b.device)
    b.tables = tables.flat()
    b.num_chunks = tables.num_chunks
    if b.steps:
        b.step_table = build_tables([b.steps], chunk, b.device).addrs[0]
    b.aligned = aligned_16(lists)
    b.native = native
    b.native_index = native.add_bucket(
        positions, b.params, grads, b.states, b.steps, b.tables, b.step_table, b.aligned, b.compensation or []
    )
