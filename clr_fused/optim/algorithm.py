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
* ``triton_prep`` / ``triton_update``: its Triton functions
  (``kernels/triton_step.py`` runs them);
* its C++ functor, ``csrc/algorithms/<name>.cuh``, listed in
  ``csrc/algorithms.h`` under the class's name.

The launchers (``kernels/reference.py``, ``kernels/triton_step.py``,
``kernels/compiled.py``), the plan, the state codecs and the state dict know
no algorithm: they address the states by these names.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
        return self.SLOTS, self._bucket_lists(params, self.SLOTS), [], None

    def _launch(self, bucket, *, sched, grad_mul, skip, advance) -> bool:
        group = self.param_groups[bucket.group_index]
        return kernels_for(bucket.backend).step_(
            bucket,
            type(self),
            sched=sched,
            hyper=self.hyper(group, cycled=sched.mom is not None),
            grad_mul=grad_mul,
            skip=skip,
            advance=advance,
            stochastic=self.stochastic_rounding,
        )
