"""Optimizers on the generic fused step: an algorithm declared in one module.

A subclass of :class:`AlgorithmOptimizer` (``optim/lion.py`` is one) says,
once, everything the backends need:

* ``SLOTS``: its state keys, by name, as torch's (or the drop-in peer's)
  ``state_dict`` has them, and ``SIGNED_SLOTS``, those that take negative
  values (a codec keeps their sign);
* ``hyper(group)``: the floats its kernels take, in the order its C++
  ``Hyper::from`` and its Triton ``triton_prep`` read them;
* ``reference(p, g, states, lr, mom, hyper)``: the update in torch ops (the
  ``torch`` backend, and the oracle the kernels are tested against);
* ``triton_prep`` / ``triton_update`` (/ ``triton_finish``): its Triton
  functions (``kernels/triton_step.py`` runs them);
* optionally ``GROUP_SCALARS``: per-group running float64 scalars (name,
  initial value) that every launch reads and the group's last launch
  advances (schedule-free's ``lr_max`` and ``weight_sum``); they live in the
  param group under those names, as 0-dim views of one device tensor;
* optionally ``INIT_FROM_PARAM``: slots that start as a copy of the
  parameter instead of zeros;
* its C++ functor, ``csrc/algorithms/<name>.cuh``, listed in
  ``csrc/algorithms.h`` under the class's name.

The launchers (``kernels/reference.py``, ``kernels/triton_step.py``,
``kernels/compiled.py``), the plan, the state codecs and the state dict know
no algorithm: they address the states by these names.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..kernels.registry import kernels_for
from .base import FusedOptimizer


class AlgorithmOptimizer(FusedOptimizer):
    """Base of the optimizers on the generic fused step (see the module)."""

    _momentum_key = "betas"  # a cycled momentum (CyclicLR / OneCycleLR) cycles betas[0]

    def hyper(self, group: dict[str, Any], cycled: bool) -> tuple[float, ...]:
        """The floats the kernels take (``cycled``: betas[0] is the schedule's
        live value, which the kernels read on the device; pass a placeholder)."""
        raise NotImplementedError

    @staticmethod
    def reference(p, g, states, lr, mom, hyper):
        raise NotImplementedError

    triton_prep: ClassVar[Any] = None
    triton_update: ClassVar[Any] = None
    triton_finish: ClassVar[Any] = None
    GROUP_SCALARS: ClassVar[tuple[tuple[str, float], ...]] = ()
    INIT_FROM_PARAM: ClassVar[tuple[str, ...]] = ()

    def _group_scalar_recs(self) -> dict[int, tuple]:
        recs = self.__dict__.get("_scalar_recs")
        if recs is None:  # (not pickled: a copy rebuilds them from its groups' values)
            recs = self.__dict__["_scalar_recs"] = {}
        return recs

    def _group_scalars(self, group_index: int) -> torch.Tensor:
        """The group's running scalars, float64 on the counter's device: the
        tensor whose views the group holds, rebuilt from the group's values
        when they were replaced (a load, a user's write, a copy)."""
        group = self.param_groups[group_index]
        recs = self._group_scalar_recs()
        rec = recs.get(group_index)
        names = [n for n, _ in self.GROUP_SCALARS]
        if rec is not None and all(group.get(n) is v for n, v in zip(names, rec[1])):
            return rec[0]
        values = [float(group.get(n, init)) for n, init in self.GROUP_SCALARS]
        t = torch.tensor(values, dtype=torch.float64, device=self._counter_device)
        views = tuple(t[i] for i in range(len(names)))
        for n, v in zip(names, views):
            group[n] = v
        recs[group_index] = (t, views)
        return t

    def _plan_key(self, group_index: int, group) -> None:
        return None

    def _make_states(self, group_index: int, group, params):
        for p in params:
            st = self.state[p]
            for key in self.SLOTS:
                if key in st:
                    self._kernel_state(p, st, key)
                else:
                    self._new_state(p, st, key)
                    if key in self.INIT_FROM_PARAM:
                        with torch.no_grad():
                            st[key].copy_(p)
        return self.SLOTS, self._bucket_lists(params, self.SLOTS), [], None

    def _launch(self, bucket, *, sched, grad_mul, skip, advance) -> bool:
        group = self.param_groups[bucket.group_index]
        extra = {}
        if self.GROUP_SCALARS:
            extra = dict(scalars=self._group_scalars(bucket.group_index), write_scalars=sched.writes_group)
        return kernels_for(bucket.backend).step_(
            bucket,
            type(self),
            sched=sched,
            hyper=self.hyper(group, cycled=sched.mom is not None),
            grad_mul=grad_mul,
            skip=skip,
            advance=advance,
            stochastic=self.stochastic_rounding,
            **extra,
        )
