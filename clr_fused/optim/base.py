"""What every clr_fused optimizer shares: schedules on the device, the step
orchestration (sparse check, GradScaler, fused clipping, step counter), the
(device, dtype) buckets and the torch-format state dict.

An algorithm subclass supplies ``_validate_group``, ``_plan_key``,
``_make_states`` (its state, created lazily when a launch plan is built, see
``plan.py``) and ``_launch``; everything about schedules lives here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .. import backends
from .. import schedule_math as sm
from ..kernels import reference
from ..kernels.registry import kernels_for
from . import live_lr
from . import plan as plan_mod
from .plan import local  # noqa: F401  (re-exported: subclasses and tests use it)
from ..schedules import Constant, ReduceLROnPlateau, Schedule, schedule_from_dict
from ..schedules import _is_number as _is_real  # numpy scalars accepted, bools not (as torch)

# Plain-data keys in each saved param group (see FusedOptimizer.state_dict).
_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU = "clr_fused_schedule", "clr_fused_step", "clr_fused_plateau"


def _check_lr_value(lr: Any, *, read_tensor: bool = True) -> None:
    """torch's checks and messages for an ``lr``, plus our schedule specs.
    ``read_tensor=False``: a tensor's value is not read (a tensor assigned to
    ``group["lr"]`` between steps must not cost a device sync)."""
    if isinstance(lr, Schedule):
        return
    if isinstance(lr, Tensor):
        # torch's capturable idiom; its value is read on the device every step, checked once here as torch does
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise ValueError(f"a tensor lr must be a floating tensor, got {lr.dtype}")
        if not read_tensor or lr.device.type == "meta":
            return
        lr_value = float(lr.detach())
        if not lr_value >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr_value} (lr must be >= 0)")
        return
    if not _is_real(lr):
        raise ValueError(f"lr must be a finite float >= 0 or a clr_fused schedule spec, got {lr!r}")
    if not 0.0 <= lr or not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr} (lr must be a finite number >= 0)")


def backend_from_torch_flags(backend: str, cls_name: str, *, foreach=None, fused=None, differentiable=False) -> str:
    """torch's implementation switches, mapped onto ours: ``fused=True`` ->
    the fused kernels (``backend="auto"``, or the fused backend named);
    ``foreach=True`` -> ``"torch"`` (our foreach reference path); ``False`` /
    ``None`` change nothing; ``differentiable=True`` is refused."""
    if differentiable:
        raise NotImplementedError(
            f"differentiable=True is not supported by clr_fused.{cls_name}: its step updates in place, outside "
            f"autograd; use torch.optim.{cls_name}(..., differentiable=True)"
        )
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot both be set")
    if fused and backend == "torch":
        raise ValueError("fused=True asks for the fused kernels, backend='torch' for the reference path: pick one")
    if foreach and backend not in ("auto", "torch"):
        raise ValueError(f"foreach=True means backend='torch' (the foreach reference path), got backend={backend!r}")
    return "torch" if foreach else backend


class TensorLR(Schedule):
    """A tensor ``lr`` (torch's capturable idiom): the kernels read its value
    on the device at every step (the same live-LR row a ReduceLROnPlateau
    uses), so writing to it between CUDA-graph replays takes effect."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def rows(self) -> list[list[float]]:
        return [[0.0, float(sm.KIND_PLATEAU)] + [0.0] * sm.NUM_PARAMS]

    def _evaluate(self, step):
        lr = self.tensor.detach().reshape(())
        if isinstance(step, Tensor):
            return lr.to(step.device, torch.float32).expand(step.shape).clone(), None
        return float(lr), None


class FusedOptimizer(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose LR schedule runs on the device."""

    # GradScaler hands us grad_scale / found_inf instead of skipping step().
    _step_supports_amp_scaling = True

    #: Group key that the schedule's cycled momentum overrides ("momentum" or "betas").
    _momentum_key: str = "momentum"

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        backends.check_name(backend)
        if max_grad_norm is not None and (not _is_real(max_grad_norm) or not max_grad_norm > 0 or not math.isfinite(max_grad_norm)):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or None, got {max_grad_norm!r}")
        if state_dtype is not None and state_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"state_dtype must be None or a floating dtype (torch.float32, ...), got {state_dtype!r}")
        _check_lr_value(defaults["lr"])
        self.backend = backend
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.state_dtype = state_dtype
        self.last_grad_norm: Tensor | None = None
        self._step_counter: Tensor | None = None
        self._plateau: dict[int, dict[str, Tensor]] = {}
        self._lr_recs: dict[int, live_lr.GroupLR] = {}
        self._orphans: list[live_lr.GroupLR] = []
        self._backend_cache: dict[torch.device, str] = {}
        self._plan: plan_mod.LaunchPlan | None = None
        super().__init__(params, defaults)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError("optimizer got an empty parameter list")
        # One schedule step counter per optimizer, on the first parameter's device.
        self._counter_device = next(p for g in self.param_groups for p in g["params"]).device
        self._step_counter = torch.zeros((), dtype=torch.int64, device=self._counter_device)
        for gi in range(len(self.param_groups)):
            self._group_lr(gi)  # group["lr"] reads as the live value from here on

    # ------------------------------------------------------------ param groups
    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming a bad hyperparameter (subclasses extend)."""

    # ------------------------------------------------------------ schedules
    def schedule(self, group_index: int = 0) -> Schedule:
        """The schedule spec that drives param group ``group_index`` (a
        ``Constant`` for a number ``lr``, a ``TensorLR`` for a tensor)."""
        rec = self._group_lr(group_index)
        if rec.spec is not None:
            return rec.spec
        lr = self.param_groups[group_index]["lr"]
        return TensorLR(lr) if isinstance(lr, Tensor) else Constant(float(lr))

    def _live_device(self) -> torch.device:
        # meta parameters (no update ever runs): the live values stay readable on the CPU
        return torch.device("cpu") if self._counter_device.type == "meta" else self._counter_device

    def _host_counter(self) -> Tensor:
        """The counter where live values are computed (meta: step 0 on the CPU)."""
        if self._counter_device.type == "meta":
            return torch.zeros((), dtype=torch.int64)
        return self._step_counter

    def _momentum_value(self, group: dict[str, Any]) -> Any:
        return group["betas"][0] if self._momentum_key == "betas" else group.get("momentum")

    def _set_momentum_value(self, group: dict[str, Any], value: Any) -> None:
        if self._momentum_key == "betas":
            group["betas"] = (value, *tuple(group["betas"])[1:])
        else:
            group["momentum"] = value

    def _group_lr(self, group_index: int) -> live_lr.GroupLR:
        """The group's live LR record; an identity check per call, rebuilt
        when ``lr``, ``schedule`` or the momentum value was re-assigned."""
        group = self.param_groups[group_index]
        rec = self._lr_recs.get(group_index)
        if rec is not None:
            seen = rec.seen
            if seen[0] is group["lr"] and seen[1] is group.get("schedule") and seen[2] is self._momentum_value(group):
                return rec
        rec = self._build_group_lr(group_index, group, rec)
        self._lr_recs[group_index] = rec
        return rec

    def _build_group_lr(self, gi: int, group: dict[str, Any], old: live_lr.GroupLR | None) -> live_lr.GroupLR:
        lr, spec = group["lr"], group.get("schedule")
        prev = None if old is None else old.detached
        if prev is not None and spec is None and lr is prev.lr:
            return self._reattach(group, prev)
        if isinstance(lr, Schedule):
            spec = lr  # lr=spec: in the constructor, a param-group dict, or assigned later
        elif old is not None and old.spec is not None and lr is not old.seen[0] and spec is old.spec:
            spec = None  # a number or tensor assigned to group["lr"] replaces the schedule, as in torch
        if spec is not None and not isinstance(spec, Schedule):
            raise ValueError(f"param group 'schedule' must be a clr_fused schedule spec, got {type(spec).__name__}")
        if spec is None:
            _check_lr_value(lr, read_tensor=False)
        dev = self._live_device()
        kept_live = old is not None and old.spec is spec and spec is not None and old.live is not None and lr is old.seen[0]
        user_lr = None
        live = None
        if spec is None:
            group.pop("schedule", None)
            rows = Constant(0.0).rows()
            if isinstance(lr, Tensor):
                user_lr, lr_t = lr, live_lr.scalar_on(lr, dev)
            else:
                lr_t = torch.tensor(float(lr), dtype=torch.float32, device=dev)
        else:
            group["schedule"] = spec
            rows = spec.rows()
            if isinstance(spec, ReduceLROnPlateau):
                # torch's ReduceLROnPlateau keeps its LR in group["lr"] too; report() updates it on the device
                lr_t = self._plateau_state(gi, spec)["lr"]
            else:
                if kept_live:
                    live = old.live
                else:
                    live = torch.zeros(2, dtype=torch.float32, device=dev)
                    live_lr.write_schedule(live, rows, self._host_counter().to(dev))
                lr_t = live[0]
            group["lr"] = lr_t
        # Momentum: a cycled one is live[1], unless the user assigned their own value since.
        mom = None
        if live is not None and spec.cycles_momentum:
            overridden = kept_live and old.mom is not None and self._momentum_value(group) is not old.mom
            if not overridden:
                mom = live[1]
                self._set_momentum_value(group, mom)
        mom_value = self._momentum_value(group)
        if mom is None and self._momentum_key == "momentum" and isinstance(mom_value, Tensor):
            mom = live_lr.scalar_on(mom_value, dev)  # SGD: a tensor momentum is read on the device
        seen = (group["lr"], group.get("schedule"), mom_value)
        detached = None
        if spec is None and old is not None:
            detached = old if old.spec is not None else old.detached
        return live_lr.GroupLR(spec, rows, live_lr.rows_tensor(rows, dev), lr_t, mom, live, user_lr, seen, detached)

    def _reattach(self, group: dict[str, Any], rec: live_lr.GroupLR) -> live_lr.GroupLR:
        """The group's own live LR tensor was put back into group["lr"]: its
        schedule drives the group again, from the current step."""
        group["schedule"] = rec.spec
        if rec.live is not None and self._counter_device.type != "meta":
            live_lr.write_schedule(rec.live, rec.rows, self._step_counter)
        if rec.mom is not None and rec.live is not None:
            self._set_momentum_value(group, rec.mom)
        rec.seen = (group["lr"], group["schedule"], self._momentum_value(group))
        return rec

    def _plateau_state(self, group_index: int, spec: ReduceLROnPlateau) -> dict[str, Tensor]:
        st = self._plateau.get(group_index)
        if st is None:
            dev = self._live_device()
            st = {
                "lr": torch.tensor(spec.base_lr, dtype=torch.float32, device=dev),
                "best": torch.tensor(math.inf if spec.mode == "min" else -math.inf, dtype=torch.float32, device=dev),
                "num_bad_epochs": torch.zeros((), dtype=torch.int64, device=dev),
                "cooldown_counter": torch.zeros((), dtype=torch.int64, device=dev),
            }
            self._plateau[group_index] = st
        return st

    @torch.no_grad()
    def report(self, metric: float | Tensor) -> None:
        """Feed a metric to every ReduceLROnPlateau group, on the device.

        Mirrors ``torch.optim.lr_scheduler.ReduceLROnPlateau.step(metric)``.
        A tensor metric is never read by the host.
        """
        if isinstance(metric, Tensor):
            if metric.numel() != 1:
                raise ValueError(f"metric must be a scalar, got a tensor of shape {tuple(metric.shape)}")
            cur = metric.detach().reshape(()).to(self._counter_device, torch.float32, non_blocking=True)
        else:
            if isinstance(metric, bool) or not isinstance(metric, (int, float)):
                raise ValueError(f"metric must be a number or a scalar tensor, got {type(metric).__name__}")
            cur = torch.tensor(float(metric), dtype=torch.float32, device=self._counter_device)
        for gi in range(len(self.param_groups)):
            spec = self._group_lr(gi).spec
            if isinstance(spec, ReduceLROnPlateau):
                _plateau_update(self._plateau_state(gi, spec), spec, cur)

    def get_last_lr(self) -> list[float]:
        """The LR the next update of each group will use: ``float(group["lr"])``
        (reads the device for a schedule; a number LR comes back exactly as given)."""
        out = []
        for gi, group in enumerate(self.param_groups):
            self._group_lr(gi)  # a spec assigned to group["lr"] since: installed (group["lr"] is then live)
            out.append(float(group["lr"]))
        return out

    def get_last_momentum(self) -> list[float]:
        """The momentum/beta1 the next update of each group will use."""
        out = []
        for gi, group in enumerate(self.param_groups):
            rec = self._group_lr(gi)
            out.append(float(rec.mom if rec.mom is not None else self._momentum_value(group)))
        return out

    def as_lr_scheduler(self) -> "ScheduleView":
        """A ``torch.optim.lr_scheduler.LRScheduler`` view for trainers that
        insist on a scheduler object: ``step()`` is a no-op (the schedule
        advances inside ``optimizer.step()``), ``get_last_lr()`` reads the
        device, and its state dict is empty (the optimizer's carries the
        schedule)."""
        return ScheduleView(self)

    @property
    def schedule_step(self) -> Tensor:
        """The device step counter: how many updates the schedule has advanced."""
        return self._step_counter

    # ------------------------------------------------------------ the step
    def _backend_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """The backend of a bucket: "auto" sends float64 to "torch" (backends.resolve_for)."""
        name = self._backend_cache.get((device, dtype))
        if name is None:
            name = backends.resolve_for(self.backend, device, dtype)
            self._backend_cache[(device, dtype)] = name
        return name

    #: The state keys holding a tensor shaped like the parameter (subclasses).
    _STATE_KEYS: tuple[str, ...] = ()

    def _kernel_state(self, p: Tensor, st: dict[str, Any], key: str) -> Tensor:
        """``st[key]`` in a dtype the fused kernels take (the parameter's, or
        float32): a state left in another dtype by a parameter whose dtype
        changed (``p.data = p.data.float()``) is converted to float32 once,
        which is lossless from bf16/fp16 (torch keeps such states as they are)."""
        t = st[key]
        if t.dtype not in (p.dtype, torch.float32) and not p.is_complex() and self._backend_for(p.device, p.dtype) != "torch":
            t = st[key] = t.to(torch.float32)
        return t

    def _check_state(self, p: Tensor, backend: str, group_index: int, index: int) -> None:
        """Refuse (before any launch) a state tensor the kernels could not use:
        a state made for a parameter that has since changed shape, device or
        dtype (``p.data = ...``), or a loaded one of the wrong kind.  torch's
        own step fails on these too, with a size or dtype mismatch."""
        st = self.state.get(p)
        if not st:
            return
        where = f"param group {group_index}, parameter {index}"
        for key in self._STATE_KEYS:
            t = st.get(key)
            if t is None:
                continue
            _check_state_tensor(t, p, key, where, fused=backend != "torch")
        if "step" in st:
            _check_step(st["step"], where, RuntimeError, read_tensor=False)

    def step(self, closure: Callable[[], Any] | None = None):
        """One fused update of every param group; the schedule advances on the device."""
        return self._step(closure)

    # Under torch.compile the step runs as it is (a graph break), not traced:
    # tracing it would guard on the gradient tensors, which zero_grad() frees
    # every iteration, and recompile each step.  The kernels are opaque anyway.
    @torch._dynamo.disable
    @torch.no_grad()
    def _step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Bad input is refused while (re)building the plan, before anything moves.
        plan = self._launch_plan()
        try:
            advanced, skip = self._run_plan(plan)
        finally:
            plan.release()
        # Otherwise advance here; only finite steps count, decided on the device.
        if not advanced:
            if skip is None:
                self._step_counter.add_(1)
            else:
                self._step_counter.add_((~skip).to(torch.int64))
        for rec in self._orphans:
            live_lr.write_schedule(rec.live, rec.rows, self._step_counter)
        return loss

    def _launch_plan(self) -> plan_mod.LaunchPlan:
        """The cached plan if it still holds (O(groups) Python + one C++ check), else a new one."""
        keys = [
            (id(group["params"]), len(group["params"]), self.backend, self._plan_key(gi, group))
            for gi, group in enumerate(self.param_groups)
        ]
        plan = self._plan
        if plan is None or not plan.valid(keys):
            self._plan = None
            plan = plan_mod.build(self.param_groups, keys, self._backend_for, self._check_state, self._make_states, _chunk_for)
            self._plan = plan
        return plan

    def _run_plan(self, plan: plan_mod.LaunchPlan) -> tuple[bool, Tensor | None]:
        """Launch every bucket: (whether a launch advanced the step counter,
        this step's device skip flag or None)."""
        grads = [g for b in plan.buckets for g in b.grads(shards=False)] if self.max_grad_norm is not None else []
        skip, grad_mul = self._skip_and_grad_mul(grads)
        # Every launch reads the step counter and the live LRs as they were
        # before this step (launches on other devices: copies taken first);
        # the last launch on the counter's device may advance it in-kernel,
        # the last launch of a group there writes the group's next LR.
        home = self._counter_device
        counters = {home: self._step_counter}
        last_home = -1
        writer: dict[int, int] = {}  # group -> its last bucket on the home device
        for i, b in enumerate(plan.buckets):
            if b.device == home:
                last_home = i
                writer[b.group_index] = i
            elif b.device not in counters:
                counters[b.device] = self._step_counter.to(b.device, non_blocking=True)
        recs = [self._group_lr(gi) for gi in range(len(self.param_groups))]
        inputs: dict[tuple[int, torch.device], tuple[Tensor, Tensor, Tensor | None]] = {}
        for b in plan.buckets:  # all before the first launch: a group's last launch rewrites its live values
            key = (b.group_index, b.device)
            if key not in inputs:
                inputs[key] = recs[b.group_index].launch_inputs(b.device)
        advanced = False
        for i, b in enumerate(plan.buckets):
            dev, rec = b.device, recs[b.group_index]
            rows, lr, mom = inputs[(b.group_index, dev)]
            next_ = rec.live if writer.get(b.group_index) == i else None
            sched = live_lr.LaunchLR(rec.rows, rows, counters[dev], lr, mom, next_, rec.exact_source(self.param_groups[b.group_index]))
            advanced |= bool(
                self._launch(
                    b,
                    sched=sched,
                    grad_mul=grad_mul if grad_mul is None or dev == home else grad_mul.to(dev, non_blocking=True),
                    skip=skip if skip is None or dev == home else skip.to(dev, non_blocking=True),
                    advance=i == last_home,
                )
            )
            b.fresh = None  # momentum buffers made for this launch are warm from now on
        # A scheduled group with no launch on the home device this step (no
        # gradients there): its next LR from device ops, as the kernels would.
        self._orphans = [rec for gi, rec in enumerate(recs) if rec.live is not None and gi not in writer]
        return advanced, skip

    def _plan_key(self, group_index: int, group: dict[str, Any]) -> Any:
        """What else, in a group, changes the plan's buckets (subclasses)."""
        return None

    def _make_states(self, group_index: int, group: dict[str, Any], params: list[Tensor]):
        """(state lists, step scalars, fresh flags) of one bucket, created lazily (subclasses)."""
        raise NotImplementedError

    def _launch(self, bucket: plan_mod.Bucket, *, sched, grad_mul, skip, advance) -> bool:
        """Update one bucket; True if it advanced the step counter (subclasses)."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, all-or-nothing: a group that is refused leaves the optimizer as it was."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        lr = param_group.get("lr", self.defaults["lr"])
        _check_lr_value(lr)
        spec = param_group.get("schedule")
        if spec is not None and not isinstance(spec, Schedule):
            raise ValueError(f"param group 'schedule' must be a clr_fused schedule spec, got {type(spec).__name__}")
        self._validate_group({**self.defaults, **param_group})
        n = len(self.param_groups)
        try:
            super().add_param_group(param_group)
            self._plan = None
            if self._step_counter is not None:  # (the constructor does its groups once the counter exists)
                self._group_lr(n)
        except BaseException:
            del self.param_groups[n:]
            self._lr_recs.pop(n, None)
            raise

    def _skip_and_grad_mul(self, grads: list[Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """Device scalars: ``skip`` (non-finite step) and the grad multiplier.

        The multiplier folds GradScaler's ``1 / grad_scale`` and the fused
        clip factor ``min(1, max_norm / (norm + 1e-6))`` into one value.
        """
        dev = self._counter_device
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        skip = None if found_inf is None else found_inf.to(dev, non_blocking=True).reshape(()) > 0
        inv_scale = None if grad_scale is None else 1.0 / grad_scale.to(dev, torch.float32, non_blocking=True).reshape(())
        if self.max_grad_norm is None:
            return skip, inv_scale
        # One reduction pass over the grads gives the norm and detects inf/nan.
        norm = reference.global_grad_norm(grads, dev)
        if inv_scale is not None:
            norm = norm * inv_scale
        self.last_grad_norm = norm
        finite = torch.isfinite(norm)
        skip = ~finite if skip is None else skip | ~finite
        clip = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        clip = torch.where(finite, clip, torch.zeros_like(clip))
        return skip, clip if inv_scale is None else clip * inv_scale

    def _state_dtype_for(self, p: Tensor) -> torch.dtype:
        # complex parameters keep complex states (updated through real views)
        return self.state_dtype if self.state_dtype is not None and not p.is_complex() else p.dtype

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """torch's format: torch's state keys, ``lr`` / momentum as the current
        values (floats where a schedule moves them, a number ``lr`` exactly as
        given, a user's tensor ``lr`` as the tensor); each param group also
        carries its schedule spec, the step counter and any plateau state as
        plain data (``clr_fused_*`` keys), which torch ignores and
        torch.distributed.checkpoint keeps.  Reads the device (the current
        values), as ``get_last_lr()`` does.  Post hooks see the finished dict."""
        post = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()  # held back: they run on the finished dict
        recs = [self._group_lr(gi) for gi in range(len(self.param_groups))]
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post
        meta = self._counter_device.type == "meta"
        step = 0 if meta else int(self._step_counter)
        for gi, packed in enumerate(sd["param_groups"]):
            rec = recs[gi]
            packed.pop("schedule", None)
            if rec.spec is not None:
                packed["lr"] = float(rec.lr)
            if rec.mom is not None and self._momentum_value(packed) is rec.mom:  # a cycled momentum: its value
                self._set_momentum_value(packed, float(rec.mom))
            packed[_KEY_SCHEDULE] = rec.spec.to_dict() if rec.spec is not None else None
            packed[_KEY_STEP] = step
            plateau = self._plateau.get(gi)
            packed[_KEY_PLATEAU] = None if plateau is None or meta else {k: v.item() for k, v in plateau.items()}
        for hook in post.values():
            out = hook(self, sd)
            if out is not None:
                sd = out
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load ours or a ``torch.optim`` checkpoint of the same algorithm.

        torch's order, with our part inside it: pre hooks (which may rewrite
        the dict), then the checks (shape mismatches raise before anything
        changes), the load, the schedules and counter restored, and only then
        the post hooks.  A torch checkpoint keeps this optimizer's schedule
        specs and counter; one of ours restores them (also one written
        before the ``schedule`` group key existed); an older one lacking
        newer group keys gets torch's defaults for them.
        """
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        state_dict = state_dict.copy()
        for hook in pre.values():
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        specs = self._check_state_dict(state_dict)  # every refusal happens here, before anything changes
        saved_groups = state_dict["param_groups"]
        snapshot = self._snapshot()
        try:
            self._load(state_dict, saved_groups, specs)
        except BaseException:
            self._restore(snapshot)  # all-or-nothing, whatever failed
            raise
        for hook in post.values():
            hook(self)

    def _load(self, state_dict: dict[str, Any], saved_groups: list[dict[str, Any]], specs: list[Schedule | None]) -> None:
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        specs_before = [self._group_lr(gi).spec for gi in range(len(self.param_groups))]
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = OrderedDict(), OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        ours = any(_KEY_STEP in g for g in saved_groups)
        plateau: dict[int, dict[str, Tensor]] = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            for key in (_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU):
                group.pop(key, None)
            if specs[gi] is not None:
                group["schedule"] = specs[gi]
            elif not ours and specs_before[gi] is not None:
                group["schedule"] = specs_before[gi]
            if "lr" not in group:  # a checkpoint without one: the schedule's (or the default) value
                group["lr"] = group.get("schedule", self.defaults["lr"])
            if saved.get(_KEY_PLATEAU) is not None:
                plateau[gi] = {
                    k: torch.tensor(v, dtype=torch.int64 if k in _PLATEAU_COUNTS else torch.float32, device=self._live_device())
                    for k, v in saved[_KEY_PLATEAU].items()
                }
        self._plan = None
        if ours:
            self._step_counter.fill_(int(saved_groups[0][_KEY_STEP]))
            self._plateau = plateau
        self._after_load()
        self._lr_recs.clear()
        for gi, saved in enumerate(saved_groups):
            rec = self._group_lr(gi)  # the live values at the restored step
            if ours and rec.live is not None:
                # The saved values are what the kernels wrote (float32, exact
                # as Python floats): a resume continues bit for bit, and an
                # edited saved lr acts as it does on torch's optimizers.
                lr, mom = saved.get("lr"), self._momentum_value(saved) if rec.mom is not None else None
                if isinstance(lr, float):
                    rec.live[0].fill_(lr)
                if isinstance(mom, float) and rec.mom is rec.live[1]:
                    rec.live[1].fill_(mom)

    _SNAPSHOT = ("state", "param_groups", "_plan", "_plateau", "_lr_recs", "_orphans", "_backend_cache")

    def _snapshot(self) -> dict[str, Any]:
        """The objects a load replaces, and the counter's value (a device copy: no sync)."""
        snap = {name: self.__dict__.get(name) for name in self._SNAPSHOT}
        snap["_lr_recs"] = dict(self._lr_recs)
        snap["counter"] = self._step_counter.clone()
        return snap

    def _restore(self, snap: dict[str, Any]) -> None:
        counter = snap.pop("counter")
        self.__dict__.update(snap)
        self._step_counter.copy_(counter)

    def _check_state_dict(self, state_dict: dict[str, Any]) -> list[Schedule | None]:
        """Refuse a state dict this optimizer cannot load, naming what is wrong;
        returns each group's saved schedule spec (None: none saved)."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("a state dict must be a dict with 'state' and 'param_groups' (from optimizer.state_dict())")
        self._check_shapes(state_dict)
        specs: list[Schedule | None] = []
        for gi, saved in enumerate(state_dict["param_groups"]):
            where = f"loaded param group {gi}"
            if isinstance(saved.get("schedule"), Schedule) or isinstance(saved.get("lr"), Schedule):
                raise ValueError("a saved param group holds a schedule object; save with optimizer.state_dict()")
            try:
                _check_lr_value(saved.get("lr", self.defaults["lr"]))
                self._validate_group({**self.defaults, **{k: v for k, v in saved.items() if k != "params"}})
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            spec = None
            if saved.get(_KEY_SCHEDULE) is not None:
                try:
                    spec = schedule_from_dict(saved[_KEY_SCHEDULE])
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    raise ValueError(f"{where}: {_KEY_SCHEDULE!r} is not a clr_fused schedule: {exc}") from None
            specs.append(spec)
            if _KEY_STEP in saved:
                step = saved[_KEY_STEP]
                if not _is_whole(step) or not 0 <= step <= sm.MAX_INT:
                    raise ValueError(f"{where}: {_KEY_STEP!r} must be a whole number of steps in [0, 2**53], got {step!r}")
            plateau = saved.get(_KEY_PLATEAU)
            if plateau is not None:
                if not isinstance(plateau, dict) or set(plateau) != {"lr", "best", *_PLATEAU_COUNTS}:
                    raise ValueError(f"{where}: {_KEY_PLATEAU!r} must be a dict of lr, best, num_bad_epochs, cooldown_counter")
                for k, v in plateau.items():
                    ok = _is_whole(v) and v >= 0 if k in _PLATEAU_COUNTS else _is_real(v)
                    if not ok or (k == "lr" and not (math.isfinite(v) and v >= 0)):
                        raise ValueError(f"{where}: {_KEY_PLATEAU!r}[{k!r}] is invalid: {v!r}")
        return specs

    # ------------------------------------------------------------ pickling, copies, old checkpoints
    #: Group keys torch's own optimizers fill in when a checkpoint predates them (subclasses).
    _LEGACY_GROUP_DEFAULTS: dict[str, Any] = {}
    #: What a pickle / deepcopy carries besides torch's defaults, state and param_groups.
    _PICKLED = ("backend", "max_grad_norm", "state_dtype", "last_grad_norm", "_step_counter", "_plateau", "_counter_device")

    def __getstate__(self) -> dict[str, Any]:
        st = super().__getstate__()
        st.update({name: self.__dict__[name] for name in self._PICKLED if name in self.__dict__})
        # the live values as the kernels wrote them: a copy continues bit for bit
        recs = self.__dict__.get("_lr_recs", {})
        st["_live_values"] = {gi: rec.live.detach().clone() for gi, rec in recs.items() if rec.live is not None}
        return st

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also what torch's load_state_dict calls, with state and param_groups only.
        super().__setstate__(state)
        self._plan = None  # derived caches: rebuilt on the next step
        self._backend_cache, self._lr_recs, self._orphans = {}, {}, []
        for group in self.param_groups:
            for key, value in self._LEGACY_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
        live_values = self.__dict__.pop("_live_values", None) or {}
        if "_step_counter" in state and self._step_counter is not None:
            # a copy or an unpickled optimizer: its groups' live values are rebuilt from the specs,
            # then set to the original's values
            for gi in range(len(self.param_groups)):
                rec = self._group_lr(gi)
                if rec.live is not None and gi in live_values:
                    rec.live.copy_(live_values[gi])

    def _check_shapes(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, this optimizer has {len(self.param_groups)}"
            )
        params = {}
        for saved, group in zip(saved_groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
            params.update(zip(saved["params"], group["params"]))
        for idx, st in state_dict.get("state", {}).items():
            p = params.get(idx)
            if p is None:
                continue
            if not isinstance(st, dict):
                raise ValueError(f"state of parameter {idx} must be a dict, got {type(st).__name__}")
            for key, value in st.items():
                if key == "step":
                    _check_step(value, f"parameter {idx}", ValueError, read_tensor=True)
                elif key in self._STATE_KEYS:
                    if value is None and key == "momentum_buffer":
                        continue  # torch saves it as None before the first momentum step
                    # 0-dim included: a 0-dim state of a non-0-dim parameter is refused
                    if not isinstance(value, Tensor) or value.shape != p.shape or not (value.is_floating_point() or value.is_complex()):
                        what = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
                        raise ValueError(
                            f"state {key!r} of parameter {idx} has {what}, the parameter has shape {tuple(p.shape)}"
                        )
                elif isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"state {key!r} of parameter {idx} has shape {tuple(value.shape)}, "
                        f"the parameter has shape {tuple(p.shape)}"
                    )

    def _after_load(self) -> None:
        """Bring loaded state to this optimizer's devices and dtypes (subclasses extend)."""
        for p, st in self.state.items():
            if not isinstance(p, Tensor) or not isinstance(st, dict):
                continue  # a hook may keep other entries in state; not ours to convert
            for key, value in list(st.items()):
                if isinstance(value, Tensor) and value.is_floating_point() and key != "step":
                    st[key] = value.to(device=p.device, dtype=self._state_dtype_for(p))


class ScheduleView(torch.optim.lr_scheduler.LRScheduler):
    """See :meth:`FusedOptimizer.as_lr_scheduler`."""

    def __init__(self, optimizer: FusedOptimizer) -> None:
        # No super().__init__: there is nothing to wrap, patch or step.
        self.optimizer = optimizer
        self.base_lrs = [optimizer.schedule(gi).initial_lr for gi in range(len(optimizer.param_groups))]
        self._last_lr = None

    @property
    def last_epoch(self) -> int:  # type: ignore[override]
        """Updates applied so far (reads the device counter)."""
        return int(self.optimizer.schedule_step)

    @last_epoch.setter
    def last_epoch(self, value) -> None:
        pass  # the device counter is the only step count

    def step(self, epoch=None) -> None:  # noqa: ARG002 - the signature trainers call
        """No-op: the schedule already advanced inside ``optimizer.step()``."""

    def get_last_lr(self) -> list[float]:
        return self.optimizer.get_last_lr()

    def get_lr(self) -> list[float]:
        return self.optimizer.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _check_state_tensor(t: Any, p: Tensor, key: str, where: str, *, fused: bool) -> None:
    if not isinstance(t, Tensor):
        raise RuntimeError(f"{where}: state {key!r} must be a tensor, got {type(t).__name__}")
    if t.shape != p.shape or t.device != p.device:
        raise RuntimeError(
            f"{where}: state {key!r} has shape {tuple(t.shape)} on {t.device}, the parameter {tuple(p.shape)} on "
            f"{p.device}: the parameter changed (through .data, set_() or resize_()) since the state was made, "
            "or a checkpoint of another model was loaded"
        )
    if t.layout != torch.strided or not (t.is_floating_point() or t.is_complex()):
        raise RuntimeError(f"{where}: state {key!r} must be a dense floating tensor, got {t.layout} {t.dtype}")
    # A real parameter's floating state of another dtype is converted once by
    # _kernel_state; a complex one is updated through real views of both, so
    # they must agree.
    if fused and p.is_complex() and t.dtype != p.dtype:
        raise RuntimeError(
            f"{where}: state {key!r} is {t.dtype}, the complex parameter {p.dtype}; the fused kernels need them equal "
            "(did the parameter's dtype change after its state was made?)"
        )


def _check_step(step: Any, where: str, error: type[Exception], *, read_tensor: bool) -> None:
    """An Adam ``step``: one whole number in [0, 2**53].  A tensor's value is
    read only at load (``read_tensor``), never on the step path."""
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex():
            raise error(f"{where}: state 'step' must hold one number, got shape {tuple(step.shape)}")
        if not read_tensor:
            return
        step = float(step)
    if not _is_real(step) or not 0 <= step <= sm.MAX_INT or step != int(step):
        raise error(f"{where}: state 'step' must be a whole number in [0, 2**53], got {step!r}")


_PLATEAU_COUNTS = ("num_bad_epochs", "cooldown_counter")


def _is_whole(v: Any) -> bool:
    """A Python int (what state_dict() writes for the counters), not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _chunk_for(backend: str) -> int | None:
    """Elements per block of a backend that reads address tables (None: lists)."""
    return None if backend == "torch" else kernels_for(backend).CHUNK


def _plateau_update(st: dict[str, Tensor], spec: ReduceLROnPlateau, cur: Tensor) -> None:
    """torch's ReduceLROnPlateau.step, as device tensor ops."""
    best = st["best"]
    if spec.mode == "min":
        better = cur < (best * (1.0 - spec.threshold) if spec.threshold_mode == "rel" else best - spec.threshold)
    else:
        better = cur > (best * (1.0 + spec.threshold) if spec.threshold_mode == "rel" else best + spec.threshold)
    st["best"].copy_(torch.where(better, cur, best))
    bad = torch.where(better, torch.zeros_like(st["num_bad_epochs"]), st["num_bad_epochs"] + 1)
    in_cooldown = st["cooldown_counter"] > 0
    cooldown = torch.where(in_cooldown, st["cooldown_counter"] - 1, st["cooldown_counter"])
    bad = torch.where(in_cooldown, torch.zeros_like(bad), bad)
    reduce = bad > spec.patience
    old_lr = st["lr"]
    new_lr = torch.clamp(old_lr * spec.factor, min=spec.min_lr)
    st["lr"].copy_(torch.where(reduce & (old_lr - new_lr > spec.eps), new_lr, old_lr))
    st["cooldown_counter"].copy_(torch.where(reduce, torch.full_like(cooldown, spec.cooldown), cooldown))
    st["num_bad_epochs"].copy_(torch.where(reduce, torch.zeros_like(bad), bad))
