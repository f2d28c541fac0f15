"""Each param group's LR (and cycled momentum / beta1) as live device values.

``param_groups[g]["lr"]`` of a group driven by a schedule is a float64
0-dim device tensor holding the LR of the NEXT update (float64 as torch's
Python-float LR: Adam's step size ``lr / bias_correction1`` is computed from
that double, so the update is torch's at any LR), as torch's own
optimizers hold a tensor ``lr``: code that reads it (``float(g["lr"])``,
f-strings, Lightning's LearningRateMonitor, HF Trainer's logging) sees the
true value, and code that writes it in place (``g["lr"] *= 0.5``, torch's
LRSchedulers, which ``fill_`` a tensor ``lr``) changes the next update, as
with a torch optimizer and a torch scheduler.  The spec lives under
``g["schedule"]``.

The kernels read the LR from that tensor and never compute it for their own
update; the last block of the group's last launch on its device evaluates
the schedule at the advanced step and writes it there (``next``).  So
``step()`` stays one launch per bucket and never syncs.  A cycled momentum
is the tensor's sibling (``live[1]``) in ``g["momentum"]`` (SGD) or
``g["betas"][0]`` (Adam).

Assigning a new object to ``g["lr"]`` takes effect at the next step: a
number or tensor replaces the schedule (the group becomes constant, as in
torch), a spec installs that schedule.

This module holds the records (``GroupLR``), what one launch reads of them
(``LaunchLR``), the optimizers' side of them (the ``LiveLR`` mixin: building,
re-attaching, ReduceLROnPlateau's device state, the readers), and the
``ScheduleView`` trainers may ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import schedule_math as sm
from ..schedules import Constant, ReduceLROnPlateau, Schedule, _is_number
from .hyper import _check_lr_value

# The dtype of every live value the kernels read (LR, momentum / beta1,
# ReduceLROnPlateau's state): torch keeps these as Python floats.
LIVE_DTYPE = torch.float64


@dataclass(eq=False)
class GroupLR:
    """How one param group's LR reaches the kernels (rebuilt when the group's
    ``lr`` / ``schedule`` / momentum objects change: an identity check per step)."""

    spec: Schedule | None  # the schedule that moves the LR; None: the user's number or tensor
    rows: list[list[float]]  # the flat encoding of spec (a constant row without one)
    rows_device: Tensor  # the same, float64 on the group's live device
    lr: Tensor  # float64 scalar the kernels read: live[0], ReduceLROnPlateau's state, or a constant
    mom: Tensor | None  # float64 scalar: the momentum / beta1 read on the device (live[1] when cycled)
    live: Tensor | None  # float64 [2] {lr, momentum} a launch rewrites each step (schedule groups)
    user_lr: Tensor | None  # a tensor lr given by the user (re-read every step: it may live elsewhere)
    seen: tuple  # (group["lr"], group.get("schedule"), the momentum value): identities at build time
    # The schedule record a number / tensor assigned to group["lr"] replaced:
    # putting its live tensor back re-attaches it (code that saves and restores
    # group["lr"] around a step, as torch.distributed.checkpoint does).
    detached: GroupLR | None = None
    rows_on: dict[torch.device, Tensor] = field(default_factory=dict)  # rows uploaded to the group's other devices

    def launch_inputs(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """(rows, lr, mom) as a launch on ``device`` reads them: the group's own
        tensors on its device, this step's copies on another one (taken before
        any launch, since the group's last launch rewrites the live values)."""
        if device == self.rows_device.device:
            rows = self.rows_device
        else:
            rows = self.rows_on.get(device)
            if rows is None:
                rows = self.rows_on[device] = rows_tensor(self.rows, device)
        lr = self.user_lr if self.user_lr is not None else self.lr  # a user's tensor is re-read: it may live elsewhere
        return rows, scalar_on(lr, device), None if self.mom is None else scalar_on(self.mom, device)

    def owns_momentum(self, value: Any) -> bool:
        """Whether ``value`` is a cycled momentum / beta1 this record put in the
        group (its schedule's live value, or the one a number written to ``lr``
        left there when it detached the schedule), not the user's."""
        for r in (self, self.detached):
            if r is not None and r.live is not None and r.mom is not None and value is r.mom:
                return True
        return False


def _is_plain_number(v: Any) -> bool:
    """``_is_number`` with Python's float and int answered before the ABC checks
    (this runs every step of a loop that writes its LR)."""
    return type(v) is float or type(v) is int or _is_number(v)


def scalar_on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as a float64 0-dim tensor on ``device``: ``t`` itself where it
    already is one (the kernels then read the very tensor), else a copy (exact
    from float32 / bfloat16 / float16)."""
    if t.device == device and t.dtype == LIVE_DTYPE and t.dim() == 0 and not t.requires_grad:
        return t
    return t.detach().reshape(()).to(device, LIVE_DTYPE, non_blocking=True)


@dataclass
class LaunchLR:
    """What one launch reads and writes of its group's schedule (the ``sched``
    argument of every backend's ``sgd_`` / ``adam_``)."""

    rows: list[list[float]]
    rows_device: Tensor  # float64 [n_rows, ROW_WIDTH] on the launch's device
    counter: Tensor  # int64 step counter (or this step's copy) on the launch's device
    lr: Tensor  # float64 scalar: the LR of this update
    mom: Tensor | None  # float64 scalar: momentum / beta1 of this update, None: the hyperparameter
    next: Tensor | None  # float64 [2]: where the next update's {lr, momentum} go (one launch per group)
    # the group's last launch on the counter's device: it writes the group's
    # running scalars (an algorithm's GROUP_SCALARS), which every launch reads
    writes_group: bool = False

    def write_next(self, skip: Tensor | None) -> None:
        """The torch backend's version of the kernels' last-block epilogue."""
        if self.next is None:
            return
        # the step the next update sees (the caller advances the counter after the launches)
        step = self.counter + 1 if skip is None else self.counter + (~skip).to(torch.int64)
        write_schedule(self.next, self.rows, step, self.rows_device)


def write_schedule(live: Tensor, rows: list[list[float]], step: Tensor, table: Tensor) -> None:
    """live <- {lr, momentum} of the schedule at ``step`` (device ops, no sync;
    ``table``: the rows on the device, where a LambdaLR's values are read)."""
    lr, mom = sm.evaluate_rows(rows, step, sm.TORCH_OPS, table=table)
    if mom is None or not isinstance(mom, Tensor):
        mom = torch.zeros_like(lr) if mom is None else torch.full_like(lr, float(mom))
    live.copy_(torch.stack([lr.to(LIVE_DTYPE), mom.to(LIVE_DTYPE)]))


def rows_tensor(rows: list[list[float]], device: torch.device) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).to(device, non_blocking=True)


_CONSTANT_ROWS: dict[torch.device, Tensor] = {}


def _constant_rows(device: torch.device) -> Tensor:
    """The rows of a group without a schedule (never written, never read for
    its LR, which is the group's tensor): one per device, so replacing a
    schedule by a number uploads nothing."""
    t = _CONSTANT_ROWS.get(device)
    if t is None:
        t = _CONSTANT_ROWS[device] = rows_tensor(Constant(0.0).rows(), device)
    return t


class TensorLR(Schedule):
    """A tensor ``lr`` (torch's capturable idiom): the kernels read its value
    on the device at every step (the same live-LR row a ReduceLROnPlateau
    uses), so writing to it between CUDA-graph replays takes effect."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def rows(self) -> list[list[float]]:
        return [[0.0, float(sm.KIND_PLATEAU)] + [0.0] * sm.NUM_PARAMS]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the tensor's value now (reads it: a host sync on a
        device tensor).  A snapshot, not a spec: the optimizer's
        ``state_dict()`` saves the tensor itself, as torch does."""
        return {"type": "TensorLR", "lr": float(self.tensor.detach().reshape(()))}

    def __repr__(self) -> str:
        return f"TensorLR({self.tensor!r})"

    def _evaluate(self, step):
        lr = self.tensor.detach().reshape(())
        if isinstance(step, Tensor):
            return lr.to(step.device, LIVE_DTYPE).expand(step.shape).clone(), None
        return float(lr), None


class LiveLR:
    """The optimizers' side of the live values: each param group's record
    (built on first use, rebuilt when ``lr`` / ``schedule`` / the momentum
    object is re-assigned), re-attaching a detached schedule,
    ReduceLROnPlateau's device state, and the readers (``get_last_lr``, ...).
    A mixin of FusedOptimizer (optim/base.py)."""

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

    def _group_lr(self, group_index: int) -> GroupLR:
        """The group's live LR record; an identity check per call, rebuilt
        when ``lr``, ``schedule`` or the momentum value was re-assigned."""
        group = self.param_groups[group_index]
        rec = self._lr_recs.get(group_index)
        if rec is not None:
            seen = rec.seen
            lr, mom_value = group["lr"], self._momentum_value(group)
            if seen[0] is lr and seen[1] is group.get("schedule") and seen[2] is mom_value:
                return rec
            if self._number_write(rec, lr, mom_value, group):
                return rec
        rec = self._build_group_lr(group_index, group, rec)
        self._lr_recs[group_index] = rec
        return rec

    def _number_write(self, rec: GroupLR, lr: Any, mom_value: Any, group: dict[str, Any]) -> bool:
        """A number written to a constant group's ``lr`` (or to a momentum /
        beta1 the kernels take as an argument) since the last step, as trainers
        and nanoGPT-style loops do every iteration: fill the group's existing
        LR tensor on the device (the value travels as a kernel argument: no
        new tensor, no host-to-device copy, no sync) and keep the record.
        False: anything else changed; the record is rebuilt."""
        seen = rec.seen
        if seen[1] is not group.get("schedule"):
            return False
        if seen[2] is not mom_value and not (rec.mom is None and _is_plain_number(mom_value)):
            return False  # a cycled / tensor momentum replaced: rebuilt (once)
        if seen[0] is not lr:
            if rec.spec is not None or rec.user_lr is not None or not _is_plain_number(lr):
                return False  # a schedule or tensor LR replaced by a number: rebuilt once, filled from then on
            if not (type(lr) is float and 0.0 <= lr < math.inf):  # (the common case without the ABC checks)
                _check_lr_value(lr)
            rec.lr.fill_(float(lr))
        rec.seen = (lr, seen[1], mom_value)
        return True

    def _build_group_lr(self, gi: int, group: dict[str, Any], old: GroupLR | None) -> GroupLR:
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
        kept_live = (
            old is not None and old.spec is spec and spec is not None and old.live is not None and lr is old.seen[0]
        )
        user_lr = None
        live = None
        if spec is None:
            group.pop("schedule", None)
            rows = Constant(0.0).rows()
            if isinstance(lr, Tensor):
                user_lr, lr_t = lr, scalar_on(lr, dev)
            elif old is not None and old.live is not None and old.live.device == dev:
                # a number replacing a schedule: the schedule's live tensor (kept by
                # `detached` for a re-attach, which rewrites it) holds it, filled on the device
                lr_t = old.live[0]
                lr_t.fill_(float(lr))
            else:
                lr_t = torch.tensor(float(lr), dtype=LIVE_DTYPE, device=dev)
        else:
            group["schedule"] = spec
            rows = spec.rows()
            rows_dev = rows_tensor(rows, dev)
            if isinstance(spec, ReduceLROnPlateau):
                # torch's ReduceLROnPlateau keeps its LR in group["lr"] too; report() updates it on the device
                lr_t = self._plateau_state(gi, spec)["lr"]
            else:
                if kept_live:
                    live = old.live
                else:
                    live = torch.zeros(2, dtype=LIVE_DTYPE, device=dev)
                    write_schedule(live, rows, self._host_counter().to(dev), rows_dev)
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
        if (
            mom is None
            and self._momentum_key == "momentum"
            and isinstance(mom_value, Tensor)
            and mom_value.numel() == 1
        ):
            mom = scalar_on(
                mom_value, dev
            )  # SGD: a tensor momentum is read on the device (any other is refused by step())
        seen = (group["lr"], group.get("schedule"), mom_value)
        detached = None
        if spec is None and old is not None:
            detached = old if old.spec is not None else old.detached
        if spec is None:
            rows_dev = _constant_rows(dev)
        return GroupLR(spec, rows, rows_dev, lr_t, mom, live, user_lr, seen, detached)

    def _reattach(self, group: dict[str, Any], rec: GroupLR) -> GroupLR:
        """The group's own live LR tensor was put back into group["lr"]: its
        schedule drives the group again, from the current step."""
        group["schedule"] = rec.spec
        if rec.live is not None and self._counter_device.type != "meta":
            write_schedule(rec.live, rec.rows, self._step_counter, rec.rows_device)
        if rec.mom is not None and rec.live is not None:
            self._set_momentum_value(group, rec.mom)
        rec.seen = (group["lr"], group["schedule"], self._momentum_value(group))
        return rec

    def _plateau_state(self, group_index: int, spec: ReduceLROnPlateau) -> dict[str, Tensor]:
        st = self._plateau.get(group_index)
        if st is None:
            dev = self._live_device()
            st = {
                # float64, as torch's Python floats: the LR after n reductions is torch's
                "lr": torch.tensor(spec.base_lr, dtype=LIVE_DTYPE, device=dev),
                "best": torch.tensor(math.inf if spec.mode == "min" else -math.inf, dtype=LIVE_DTYPE, device=dev),
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
            cur = metric.detach().reshape(()).to(self._counter_device, LIVE_DTYPE, non_blocking=True)
        else:
            if isinstance(metric, bool) or not isinstance(metric, (int, float)):
                raise ValueError(f"metric must be a number or a scalar tensor, got {type(metric).__name__}")
            cur = torch.tensor(float(metric), dtype=LIVE_DTYPE, device=self._counter_device)
        for gi in range(len(self.param_groups)):
            spec = self._group_lr(gi).spec
            if isinstance(spec, ReduceLROnPlateau):
                _plateau_update(self._plateau_state(gi, spec), spec, cur)

    def _keep_applied(self, recs: list[GroupLR]) -> None:
        """With a ScheduleView: copy (on the device) the LR this step applies, for
        the view's ``get_last_lr()`` between ``step()`` and the view's ``step()``."""
        applied = self._applied
        if applied is None:
            return
        if len(applied) != len(recs):
            applied = self._applied = [torch.zeros((), dtype=LIVE_DTYPE, device=self._live_device()) for _ in recs]
        torch._foreach_copy_(applied, [r.user_lr.detach().reshape(()) if r.user_lr is not None else r.lr for r in recs])

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

    def as_lr_scheduler(self) -> ScheduleView:
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


class ScheduleView(torch.optim.lr_scheduler.LRScheduler):
    """See :meth:`FusedOptimizer.as_lr_scheduler`."""

    def __init__(self, optimizer) -> None:
        # No super().__init__: there is nothing to wrap, patch or step.
        self.optimizer = optimizer
        self.base_lrs = [optimizer.schedule(gi).initial_lr for gi in range(len(optimizer.param_groups))]
        self._last_lr = None
        if optimizer._applied is None:
            optimizer._applied = []  # the optimizer keeps each step's applied LR from now on
        self._seen = optimizer._host_steps

    @property
    def last_epoch(self) -> int:  # type: ignore[override]
        """Updates applied so far (reads the device counter)."""
        return int(self.optimizer.schedule_step)

    @last_epoch.setter
    def last_epoch(self, value) -> None:
        pass  # the device counter is the only step count

    def step(self, epoch=None) -> None:  # noqa: ARG002 - the signature trainers call
        """The schedule already advanced inside ``optimizer.step()``: only marks that
        ``get_last_lr()`` now gives the next update's LR, as torch's does after its step."""
        self._seen = getattr(self.optimizer, "_host_steps", 0)

    def get_last_lr(self) -> list[float]:
        """As torch's scheduler: between ``optimizer.step()`` and this view's
        ``step()`` (where Hugging Face's Trainer logs) the LR that step applied,
        otherwise the next update's."""
        applied = getattr(self.optimizer, "_applied", None)
        if (
            applied
            and getattr(self.optimizer, "_host_steps", 0) != self._seen
            and len(applied) == len(self.optimizer.param_groups)
        ):
            return [float(t) for t in applied]
        return self.optimizer.get_last_lr()

    def get_lr(self) -> list[float]:
        return self.optimizer.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


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
