"""Each param group's LR (and cycled momentum / beta1) as live device values.

``param_groups[g]["lr"]`` of a group driven by a schedule is a float32
0-dim device tensor holding the LR of the NEXT update, as torch's own
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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import schedule_math as sm
from ..schedules import Schedule, _is_number


@dataclass(eq=False)
class GroupLR:
    """How one param group's LR reaches the kernels (rebuilt when the group's
    ``lr`` / ``schedule`` / momentum objects change: an identity check per step)."""

    spec: Schedule | None  # the schedule that moves the LR; None: the user's number or tensor
    rows: list[list[float]]  # the flat encoding of spec (a constant row without one)
    rows_device: Tensor  # the same, float64 on the group's live device
    lr: Tensor  # float32 scalar the kernels read: live[0], ReduceLROnPlateau's state, or a constant
    mom: Tensor | None  # float32 scalar: the momentum / beta1 read on the device (live[1] when cycled)
    live: Tensor | None  # float32 [2] {lr, momentum} a launch rewrites each step (schedule groups)
    user_lr: Tensor | None  # a tensor lr given by the user (re-read every step: it may live elsewhere)
    seen: tuple  # (group["lr"], group.get("schedule"), the momentum value): identities at build time
    # The schedule record a number / tensor assigned to group["lr"] replaced:
    # putting its live tensor back re-attaches it (code that saves and restores
    # group["lr"] around a step, as torch.distributed.checkpoint does).
    detached: GroupLR | None = None
    rows_on: dict[torch.device, Tensor] = field(default_factory=dict)  # rows uploaded to the group's other devices

    def exact_source(self, group: dict) -> float | bool | None:
        """What a float64 update reads instead of the float32 live value: the
        group's number ``lr`` itself, True for a schedule (evaluated in
        float64 at the launch's step), None for a tensor or plateau LR."""
        if self.spec is None:
            lr = group["lr"]
            return float(lr) if _is_number(lr) else None
        return True if self.live is not None else None

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


def scalar_on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as a float32 0-dim tensor on ``device``: ``t`` itself where it
    already is one (the kernels then read the very tensor), else a copy."""
    if t.device == device and t.dtype == torch.float32 and t.dim() == 0 and not t.requires_grad:
        return t
    return t.detach().reshape(()).to(device, torch.float32, non_blocking=True)


@dataclass
class LaunchLR:
    """What one launch reads and writes of its group's schedule (the ``sched``
    argument of every backend's ``sgd_`` / ``adam_``)."""

    rows: list[list[float]]
    rows_device: Tensor  # float64 [n_rows, ROW_WIDTH] on the launch's device
    counter: Tensor  # int64 step counter (or this step's copy) on the launch's device
    lr: Tensor  # float32 scalar: the LR of this update
    mom: Tensor | None  # float32 scalar: momentum / beta1 of this update, None: the hyperparameter
    next: Tensor | None  # float32 [2]: where the next update's {lr, momentum} go (one launch per group)
    exact: float | bool | None = None  # GroupLR.exact_source: float64 parameters' LR

    def in_float64(self) -> tuple[Tensor | float, Tensor | None]:
        """(lr, momentum) for float64 parameters (the torch backend): the
        schedule's float64 values themselves, or the group's number LR; a live
        value edited in place since it was written (``g["lr"] *= 0.5``, a torch
        LRScheduler) wins, as it does for the other dtypes."""
        if isinstance(self.exact, float):
            return self.exact, None if self.mom is None else self.mom.to(torch.float64)
        if self.exact is not True:
            return self.lr.to(torch.float64), None if self.mom is None else self.mom.to(torch.float64)
        lr, mom = sm.evaluate_rows(self.rows, self.counter, sm.TORCH_OPS)
        lr = torch.where(lr.to(torch.float32) == self.lr, lr, self.lr.to(torch.float64))
        if self.mom is None:  # not cycled (the rows may still hold a momentum): the hyperparameter
            return lr, None
        if isinstance(mom, Tensor):
            return lr, torch.where(mom.to(torch.float32) == self.mom, mom, self.mom.to(torch.float64))
        return lr, self.mom.to(torch.float64)

    def write_next(self, skip: Tensor | None) -> None:
        """The torch backend's version of the kernels' last-block epilogue."""
        if self.next is None:
            return
        # the step the next update sees (the caller advances the counter after the launches)
        step = self.counter + 1 if skip is None else self.counter + (~skip).to(torch.int64)
        write_schedule(self.next, self.rows, step)


def write_schedule(live: Tensor, rows: list[list[float]], step: Tensor) -> None:
    """live <- {lr, momentum} of the schedule at ``step`` (device ops, no sync)."""
    lr, mom = sm.evaluate_rows(rows, step, sm.TORCH_OPS)
    if mom is None or not isinstance(mom, Tensor):
        mom = torch.zeros_like(lr) if mom is None else torch.full_like(lr, float(mom))
    live.copy_(torch.stack([lr.to(torch.float32), mom.to(torch.float32)]))


def rows_tensor(rows: list[list[float]], device: torch.device) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).to(device, non_blocking=True)
