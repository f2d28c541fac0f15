"""The optimizer step inside backward (gradient release).

``opt.register_step_in_backward()`` hooks every parameter's
``register_post_accumulate_grad_hook``: as soon as a parameter's gradient is
accumulated, its fused update runs and the gradient is freed, so a training
step never holds every gradient at once (optimi, torchtune's
``optimizer_in_bwd``, torchtitan do the same with one optimizer and one LR
scheduler per parameter; here one optimizer and its device schedule serve
them all).

Every update of one backward reads the same live LR and step counter.  Of
each group, the latest parameter whose gradient arrived is held back by one
hook: the group's last one is updated when the backward pass ends (an
autograd engine callback queued by its first hook), by a launch that also
writes the group's next LR and advances the counter in its epilogue, as
``step()``'s last launch does.  Parameters, states and LRs are then bit for
bit those of a normal ``step()`` after the same backward
(tests/test_in_backward.py).

Small gradients wait for company: a group's held gradients are launched
together once they hold ``BATCH_BYTES`` (1 MiB), so a model of many small
parameters pays one launch per MiB of them instead of one per hook (the
per-hook host cost went from 10.6 to under 2 us on 400 tiny parameters);
a larger gradient goes with the next hook.  At most 1 MiB plus one
gradient per group outlive their hooks.  Each batch (the hooks run in the
same order every backward) has its own launch plan, built on its first
update and re-checked (one C++ call) on the next ones, as ``step()``'s.
Global-norm clipping (``max_grad_norm``) and GradScaler's skip need every
gradient before the first update: they are refused / unsupported here.

Under ``DistributedDataParallel`` the per-parameter hooks would see the
local, unreduced gradient, so the updates run from a DDP communication
hook instead: each gradient bucket is averaged as DDP averages it (scaled
by 1 / world size, then summed) by an asynchronous all-reduce, and its
parameters are updated through the same per-parameter path when the next
bucket is ready (the last bucket's at the end of the pass), so each
all-reduce runs beside the backward (torch's own optimizer-in-backward for
DDP is built the same way, with a side stream).  The reducer is told that
the optimizer runs in backward, so it does not copy the reduced bucket back
into gradients that were released.  FSDP2 (``fully_shard``) needs nothing
of the kind: it runs the sharded parameters' post-accumulate-grad hooks
itself, after their reduce-scatter, with the reduced shard as the gradient.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..kernels.low_precision import is_dense
from . import live_lr
from . import plan as plan_mod


class StepInBackward:
    """The handle ``register_step_in_backward`` returns.

    ``stepping``: whether the next backward updates the parameters (set it
    False for the micro-batches of gradient accumulation, True for the last
    one).  ``remove()``: back to ``opt.step()``.
    """

    def __init__(self, opt: Any, params: list[Tensor], ddp: Any = None) -> None:
        self.opt = opt
        self.stepping = True
        self._group_of: dict[int, int] = {}
        for gi, group in enumerate(opt.param_groups):
            for p in group["params"]:
                self._group_of[id(p)] = gi
        for p in params:
            if id(p) not in self._group_of:
                raise ValueError("register_step_in_backward: a parameter is not in this optimizer's param groups")
        self._plans: dict[tuple[int, ...], tuple[tuple, plan_mod.LaunchPlan]] = {}  # by the batch's ids
        self._max_plans = 2 * len(params) + 16  # (batches that change from pass to pass must not pile up)
        self._pass: dict[str, Any] | None = None  # this backward's LR inputs (set by its first hook)
        self.steps = 0  # backward passes that stepped
        # gradients accumulated by backward passes that did not step (or before this registration)
        self._accumulated: dict[int, Tensor] = {id(p): p for p in params if p.grad is not None}
        self._ddp = ddp
        self._ddp_pending: tuple | None = None  # DDP: the bucket whose all-reduce runs beside the backward
        self._end_task: int | None = None  # the backward pass whose end callback is queued
        self._active = True  # False after remove() (a DDP comm hook cannot be unregistered: it only reduces then)
        if ddp is None:
            self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]
        else:
            # the parameters DDP was told to ignore are not in its buckets: their own hooks, local gradients
            ignored = {id(p) for n, p in ddp.module.named_parameters() if n in ddp.parameters_to_ignore}
            self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params if id(p) in ignored]
            ddp.register_comm_hook(self, _reduce_then_update)
            ddp.reducer._set_optimizer_in_backward()  # (finalize leaves the released gradients alone)

    def remove(self) -> None:
        """Back to ``step()``.  Under DDP the communication hook stays (DDP
        cannot unregister one) and from now on only averages the gradients
        into ``p.grad``, as DDP does."""
        self._active = False
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.opt._in_backward is self:
            self.opt._in_backward = None

    def __enter__(self) -> StepInBackward:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------ one backward
    def _hook(self, p: Tensor) -> None:
        if p.grad is None:
            return
        if not self.stepping:
            # accumulated: if the backward that steps does not reach p, the end of that backward
            # applies its gradient, as step() would
            self._accumulated[id(p)] = p
            return
        task = _graph_task()
        if self._pass is None or self._pass["task"] != task:
            self._begin(task)  # (before the pop: a failed pass's held gradients become accumulated here)
        self._accumulated.pop(id(p), None)
        if p.device != self.opt._counter_device:
            self._update([p])  # (step() writes LRs and the counter from the home device's launches only)
            return
        gi = self._group_of[id(p)]
        pending = self._pass["held"].setdefault(gi, [])
        pending.append(p)  # the newest is kept for the end of the backward: it may be the group's last
        held_bytes = self._pass["bytes"]
        older = held_bytes.get(gi, 0)  # the bytes of the gradients held before p
        nbytes = p.numel() * p.element_size()
        if len(pending) > 1 and older >= BATCH_BYTES:
            # the older ones together, in one launch: small gradients wait for company (host cost),
            # a large one goes with the next hook
            batch = pending[:-1]
            del pending[:-1]
            held_bytes[gi] = nbytes
            self._update(batch)
        else:
            held_bytes[gi] = older + nbytes

    def _begin(self, task: int) -> None:
        """The first hook of a backward: the groups checked, the LRs each
        update reads taken, the end-of-backward callback queued."""
        opt = self.opt
        if self._pass is not None:
            # a backward that raised: the engine dropped its end callback.  What it updated stays
            # updated; the gradients it held count as accumulated (applied by this pass, as
            # step() would apply what the failed pass left, unless zero_grad() removed them)
            for ps in self._pass["held"].values():
                for q in ps:
                    self._accumulated[id(q)] = q
            self._pass = None
        opt._check_groups()
        recs = [opt._group_lr(gi) for gi in range(len(opt.param_groups))]
        opt._keep_applied(recs)
        self._pass = {
            "recs": recs,
            "inputs": {},
            "counters": {opt._counter_device: opt._step_counter},
            "held": {},
            "bytes": {},
            "task": task,
        }
        self._queue_end(task)

    def _queue_end(self, task: int) -> None:
        """The end-of-backward callback, queued once per backward pass."""
        if self._end_task != task:
            self._end_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._end)

    def _end(self) -> None:
        """The end of a backward: DDP's last bucket (its all-reduce done by
        now) applied, then the pass finished."""
        self._end_task = None
        pending, self._ddp_pending = self._ddp_pending, None
        if pending is not None:
            _apply_bucket(self, *pending)
        if self._pass is not None:
            self._finish()

    def _update(self, ps: list[Tensor], *, write_next: bool = False, advance: bool = False) -> bool:
        """Launch the updates of ``ps`` (one group's) and release their
        gradients; ``write_next``: the launch writes the group's next LR,
        ``advance``: it advances the counter (True if it did)."""
        opt = self.opt
        gi = self._group_of[id(ps[0])]
        group = opt.param_groups[gi]
        # the plan's structure key, as step()'s (a group whose params list changed: refused)
        key = (id(group["params"]), opt.backend, opt._plan_key(gi, group))
        store = opt.state
        ids = tuple(id(p) for p in ps)  # (a backward's batches repeat: the hooks run in the same order)
        entry = self._plans.get(ids)
        plan = None if entry is None or entry[0] != key else entry[1]
        if plan is None or plan.state is not store or plan.state_version != store.version or not plan.valid(plan.keys):
            groups = [
                {**group, "params": list(ps)} if j == gi else {"params": []} for j in range(len(opt.param_groups))
            ]
            keys = [(id(g["params"]), len(g["params"])) for g in groups]
            plan = plan_mod.build(
                groups, keys, opt._backend_for, opt._check_state, opt._make_states, _chunk_for, opt._compensation
            )
            plan.state, plan.state_version = store, store.version
            if len(self._plans) >= self._max_plans:
                self._plans.clear()
            self._plans[ids] = (key, plan)
        run = self._pass
        rec = run["recs"][gi]
        advanced = False
        try:
            last = len(plan.buckets) - 1
            for bi, b in enumerate(plan.buckets):
                dev = b.device
                counter = run["counters"].get(dev)
                if counter is None:
                    counter = run["counters"][dev] = opt._step_counter.to(dev, non_blocking=True)
                inputs = run["inputs"].get((gi, dev))
                if inputs is None:
                    inputs = run["inputs"][(gi, dev)] = rec.launch_inputs(dev)
                rows, lr, mom = inputs
                nxt = write_next and bi == last  # (one launch writes the next LR and advances: the last)
                sched = live_lr.LaunchLR(rec.rows, rows, counter, lr, mom, rec.live if nxt else None, nxt)
                advanced |= bool(opt._launch(b, sched=sched, grad_mul=None, skip=None, advance=advance and bi == last))
                b.fresh = None
        finally:
            plan.release()
        for p in ps:
            p.grad = None  # released: the point of the mode
        return advanced

    def _finish(self) -> None:
        """The end of a backward that stepped: each group's held parameter is
        updated by a launch that writes the group's next LR, the last of them
        advances the counter; a group without one gets its next LR from device
        ops, as in step()."""
        run, opt = self._pass, self.opt
        for p in self._accumulated.values():  # accumulated, then not reached by this backward
            if p.grad is None:
                continue
            if p.device != opt._counter_device:
                self._update([p])
            else:
                run["held"].setdefault(self._group_of[id(p)], []).append(p)
        self._accumulated = {}
        held = list(run["held"].items())
        advanced = False
        for i, (_, ps) in enumerate(held):
            advanced |= self._update(ps, write_next=True, advance=i == len(held) - 1)
        if not advanced:
            opt._step_counter.add_(1)
        for gi, rec in enumerate(run["recs"]):
            if rec.live is not None and gi not in run["held"]:
                live_lr.write_schedule(rec.live, rec.rows, opt._step_counter, rec.rows_device)
        opt._orphans = []
        opt._host_steps += 1
        self._pass = None
        self.steps += 1


def _graph_task() -> int:
    """The autograd graph task running this hook: a new one is a new backward
    pass (torch < 2.1 has no id: every pass looks alike, and a backward that
    raised leaves the mode stuck there)."""
    get = getattr(torch._C, "_current_graph_task_id", None)
    return get() if get is not None else 0


# Gradients of one group younger than this many bytes wait and are updated together (one launch
# instead of one per hook); a larger one goes with the next hook.
BATCH_BYTES = 1 << 20


def _reduce_then_update(handle, bucket):  # (unannotated: DDP checks the annotations' objects)
    """The DDP communication hook: the bucket averaged as DDP's own reduction
    averages it (each gradient times 1 / world size, then summed: the same
    bits), asynchronously; the previous bucket, whose all-reduce ran beside
    the backward meanwhile, applied (the last one at the end of the pass)."""
    ddp = handle._ddp
    buf = bucket.buffer()
    buf.mul_(1.0 / ddp.process_group.size())
    work = dist.all_reduce(buf, group=ddp.process_group, async_op=True)
    task = _graph_task()
    pending = handle._ddp_pending
    handle._ddp_pending = (work, buf, bucket.parameters(), bucket.gradients(), task)
    if pending is not None:
        _apply_bucket(handle, *pending)
    handle._queue_end(task)
    return work.get_future().then(lambda _: buf)


def _apply_bucket(handle, work, buf, params, grads, task) -> None:
    """One reduced bucket: its gradients set to the reduced values, then
    updated (or, not stepping, kept for step())."""
    work.wait()
    ddp = handle._ddp
    if task != _graph_task():  # (a bucket of a backward that raised: its pass is gone)
        return
    stepping = handle._active and handle.stepping
    for p, g in zip(params, grads):
        if not p.is_contiguous() and is_dense(p):
            # DDP lays a dense non-contiguous parameter's gradient (channels_last) out in the
            # parameter's strides; bucket.gradients() views every slice as contiguous
            g = buf.as_strided(p.shape, p.stride(), g.storage_offset())
        updated = stepping and id(p) in handle._group_of
        if updated or ddp.gradient_as_bucket_view:
            p.grad = g  # (updated: released by its update before DDP's next backward)
        elif p.grad is None:  # a gradient that stays must not alias the bucket (DDP asserts it)
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        if updated:
            handle._hook(p)


def _check_ddp(ddp: Any) -> None:
    refuse = (
        "find_unused_parameters=True (a parameter this rank did not use would be updated with a zero gradient)"
        if ddp.find_unused_parameters
        else "static_graph=True (its first backward reduces the gradients after the backward pass)"
        if getattr(ddp, "static_graph", False)
        else None
    )
    if refuse is not None:
        raise ValueError(f"register_step_in_backward: a DistributedDataParallel model with {refuse}; use step()")


def register(opt: Any, params: Any = None) -> StepInBackward:
    """``opt.register_step_in_backward`` (see ``FusedOptimizer``)."""
    if opt.max_grad_norm is not None:
        raise ValueError(
            "register_step_in_backward: max_grad_norm clips by the norm of every gradient, which does not exist "
            "before the first update in backward; clip per parameter yourself, or use step()"
        )
    if getattr(opt, "_in_backward", None) is not None:
        raise RuntimeError("register_step_in_backward: this optimizer already steps in backward (remove() it first)")
    ddp = params if isinstance(params, torch.nn.parallel.DistributedDataParallel) else None
    if ddp is not None:
        _check_ddp(ddp)
        params = ddp.module
    elif type(params).__name__ == "FullyShardedDataParallel":
        # FSDP1 reduce-scatters the gradients after the per-parameter hooks run: an update there
        # would apply this rank's unreduced gradient (FSDP2 runs the sharded parameters' hooks
        # itself, on the reduced shards)
        raise ValueError(
            f"register_step_in_backward: {type(params).__name__} reduces the gradients after the per-parameter "
            "hooks run, so an update there would use this rank's unreduced gradient; use step()"
        )
    if params is None:
        params = [p for g in opt.param_groups for p in g["params"]]
    elif isinstance(params, torch.nn.Module):
        params = list(params.parameters())
    else:
        params = list(params)
    params = [p for p in params if p.requires_grad]
    sharded = any(hasattr(p, "_local_tensor") for p in params)  # DTensors: FSDP2 calls the hooks on reduced shards
    if ddp is None and not sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # (a parameter cannot tell whether a DDP model holds it)
        warnings.warn(
            "register_step_in_backward: a process group of several ranks is initialized; if these parameters "
            "belong to a DistributedDataParallel model, pass that model (the updates then use the reduced "
            "gradients); passed the parameters, each update uses this rank's own gradient",
            stacklevel=3,
        )
    handle = StepInBackward(opt, params, ddp)
    opt._in_backward = handle
    return handle


def _chunk_for(backend: str) -> int | None:
    from .base import _chunk_for as chunk_for  # (base imports this module)

    return chunk_for(backend)
