"""What every clr_fused optimizer shares: the step orchestration (the
launch plan, its checks, GradScaler, fused clipping, the step counter) and
backend choice.  The live LR of each group is ``live_lr.py``'s job (the
LiveLR mixin), torch's state-dict and pickle protocol ``protocol.py``'s
(StateDictProtocol), torch's hyperparameter checks ``hyper.py``'s.

An algorithm subclass supplies ``_validate_group``, ``_plan_key``,
``_make_states`` (its state, created lazily when a launch plan is built, see
``plan.py``) and ``_launch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.optim.optimizer as _optim_mod
from torch import Tensor

from .. import backends, codecs
from ..kernels import reference
from ..kernels.registry import kernels_for
from ..schedules import Schedule
from . import in_backward, live_lr
from . import plan as plan_mod
from .hyper import _check_lr_value, _is_real
from .live_lr import LiveLR
from .plan import local  # noqa: F401  (re-exported: subclasses and tests use it)
from .protocol import KAHAN_KEY, StateDictProtocol, _check_step
from .state_store import StateStore


class FusedOptimizer(LiveLR, StateDictProtocol, torch.optim.Optimizer):
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
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = False,
        kahan_sum: bool = False,
    ) -> None:
        backends.check_name(backend)
        if max_grad_norm is not None and (
            not _is_real(max_grad_norm) or not max_grad_norm > 0 or not math.isfinite(max_grad_norm)
        ):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or None, got {max_grad_norm!r}")
        codecs.check_state_dtype(state_dtype)
        if not isinstance(stochastic_rounding, bool):
            raise ValueError(f"stochastic_rounding must be True or False, got {stochastic_rounding!r}")
        if not isinstance(kahan_sum, bool):
            raise ValueError(f"kahan_sum must be True or False, got {kahan_sum!r}")
        if kahan_sum and stochastic_rounding:
            raise ValueError(
                "kahan_sum=True and stochastic_rounding=True are exclusive: both make bfloat16 parameters train "
                "without an fp32 master copy (kahan_sum keeps the rounding error in a buffer, stochastic_rounding "
                "rounds it away on average); choose one"
            )
        _check_lr_value(defaults["lr"])
        self.backend = backend
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.state_dtype = state_dtype
        self.stochastic_rounding = stochastic_rounding
        self.kahan_sum = kahan_sum
        self.last_grad_norm: Tensor | None = None
        self._step_counter: Tensor | None = None
        self._plateau: dict[int, dict[str, Tensor]] = {}
        self._lr_recs: dict[int, live_lr.GroupLR] = {}
        self._orphans: list[live_lr.GroupLR] = []
        self._host_steps = 0  # step() calls (a host count: what ScheduleView compares against)
        self._applied: list[Tensor] | None = None  # the LR each group's last update applied (ScheduleView)
        self._backend_cache: dict[torch.device, str] = {}
        self._plan: plan_mod.LaunchPlan | None = None
        self._hyper_seen: dict[int, tuple] = {}  # each group's hyperparameter objects when last validated
        self._in_backward: in_backward.StepInBackward | None = None  # register_step_in_backward's handle
        super().__init__(params, defaults)
        self.state = StateStore(self.state)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError("optimizer got an empty parameter list")
        # One schedule step counter per optimizer, on the first parameter's device.
        self._counter_device = next(p for g in self.param_groups for p in g["params"]).device
        self._step_counter = torch.zeros((), dtype=torch.int64, device=self._counter_device)
        for gi in range(len(self.param_groups)):
            self._group_lr(gi)  # group["lr"] reads as the live value from here on

    # ------------------------------------------------------------ param groups
    #: The group keys ``_validate_group`` checks (re-checked in ``step()`` when one is re-assigned).
    _HYPER_KEYS: tuple[str, ...] = ()

    def _validate_group(self, group: dict[str, Any], read_tensors: bool = True) -> None:
        """Raise ValueError naming a bad hyperparameter (subclasses extend);
        ``read_tensors=False``: a device tensor's value is not read (no sync)."""

    def _check_groups(self) -> None:
        """Every group's LR and hyperparameters, before anything of this step
        is created or written: a value edited between steps in a later group
        must not leave the earlier groups updated (torch checks them all
        before its update too).  An identity check per value; the full
        validation only for a group whose values were re-assigned."""
        seen = self._hyper_seen
        for gi, group in enumerate(self.param_groups):
            values = tuple(group.get(k) for k in self._HYPER_KEYS)
            old = seen.get(gi)
            if old is not None and len(old) == len(values) and all(a is b for a, b in zip(old, values)):
                self._group_lr(gi)  # a re-assigned lr is validated here
                continue
            try:
                checked = group
                rec = self._lr_recs.get(gi)
                if rec is not None and rec.owns_momentum(self._momentum_value(group)):
                    checked = dict(group)  # a cycled momentum / beta1: the schedule's, checked with the schedule
                    self._set_momentum_value(checked, 0.5)
                # the hyperparameters first: the LR record reads a tensor momentum
                self._validate_group(checked, read_tensors=False)
                self._group_lr(gi)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"param group {gi}: {exc}") from None
            seen[gi] = values

    # ------------------------------------------------------------ the step
    def _backend_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """The backend of a bucket: "auto" sends float64 to "torch" (backends.resolve_for)."""
        name = self._backend_cache.get((device, dtype))
        if name is None:
            name = backends.resolve_for(self.backend, device, dtype)
            self._backend_cache[(device, dtype)] = name
        return name

    #: The state slots, by name: each a tensor shaped like the parameter (subclasses).
    SLOTS: tuple[str, ...] = ()
    #: The slots that take negative values (a first moment: a codec keeps their sign).
    SIGNED_SLOTS: tuple[str, ...] = ()

    def _codec_for(self, p: Tensor) -> codecs.StateCodec:
        """How ``p``'s states are stored (``codecs.py``)."""
        return codecs.for_param(self.state_dtype, p)

    def _new_state(self, p: Tensor, st: dict[str, Any], key: str) -> Tensor:
        """A zero state ``st[key]`` for ``p``, stored by this optimizer's codec."""
        return self._codec_for(p).create(p, st, key, signed=key in self.SIGNED_SLOTS, dtype=self._state_dtype_for(p))

    def _kernel_state(self, p: Tensor, st: dict[str, Any], key: str) -> Tensor:
        """``st[key]`` in the form the kernels take, stored by this optimizer's
        codec.  A state of another kind -- left by a parameter whose dtype
        changed (``p.data = p.data.float()``), or loaded -- is converted once
        (quantized, dequantized, or widened to float32; torch keeps such
        states as they are)."""
        return self._codec_for(p).adopt(
            p=p, st=st, key=key, signed=key in self.SIGNED_SLOTS, dtype=self._state_dtype_for(p),
            fused=self._backend_for(p.device, p.dtype) != "torch",
        )  # fmt: skip

    def _bucket_lists(self, params: list[Tensor], slots: tuple[str, ...]) -> list[list[Tensor]]:
        """A bucket's state lists, as its kernels take them: the slots', then the codec's own entries."""
        keys = codecs.kernel_keys(self._codec_for(params[0]), slots)
        return [[self.state[p][k] for p in params] for k in keys]

    def _check_state(self, p: Tensor, backend: str, group_index: int, index: int) -> None:
        """Refuse (before any launch) a state tensor the kernels could not use:
        a state made for a parameter that has since changed shape, device or
        dtype (``p.data = ...``), or a loaded one of the wrong kind.  torch's
        own step fails on these too, with a size or dtype mismatch."""
        if self.stochastic_rounding and p.dtype == torch.float16:
            raise ValueError(
                f"param group {group_index}, parameter {index}: stochastic_rounding=True rounds bfloat16 writes; "
                "float16 parameters are not supported (use bfloat16, or an fp32 master copy)"
            )
        if self.state_dtype == torch.bfloat16 and p.dtype == torch.float16 and backend in ("cpu", "cuda"):
            raise ValueError(
                f"param group {group_index}, parameter {index}: state_dtype=torch.bfloat16 for float16 parameters: "
                f"the {backend} kernels keep float16 parameters' states as float16 or float32 "
                f"(or state_dtype={' / '.join(repr(n) for n in codecs.NAMED)})"
            )
        where = f"param group {group_index}, parameter {index}"
        self._codec_for(p).check_param(p, where)
        st = self.state.get(p)
        if not st:
            return
        for key in self.SLOTS:
            t = st.get(key)
            if t is None:
                continue
            _check_state_tensor(t, p, key, where, fused=backend != "torch")
            codecs.stored(t).check(st, key, p, signed=key in self.SIGNED_SLOTS, where=where)
        if self._compensates(p) and st.get(KAHAN_KEY) is not None:
            _check_state_tensor(st[KAHAN_KEY], p, KAHAN_KEY, where, fused=backend != "torch")
        if "step" in st:
            _check_step(st["step"], where, RuntimeError, read_tensor=False)

    def step(self, closure: Callable[[], Any] | None = None):
        """One fused update of every param group; the schedule advances on the device.

        While the optimizer steps in backward (``register_step_in_backward``)
        the updates already ran: ``step()`` only calls the closure."""
        if self._in_backward is not None:
            if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
                raise RuntimeError(
                    "GradScaler cannot drive an optimizer that steps in backward: the updates ran inside backward, "
                    "on the scaled gradients, before the scaler could unscale them or skip a non-finite step "
                    "(remove() the step-in-backward handle, or train without GradScaler: bf16 autocast needs none)"
                )
            if closure is None:
                return None
            with torch.enable_grad():
                return closure()
        # torch wraps every optimizer's step in a profiler range and its step
        # hooks (Optimizer.profile_hook_step); the range alone costs more host
        # time than our whole plan check.  Taken only when someone is looking:
        # a profiler running, or a step hook registered; otherwise straight in.
        if _hooks_or_profiler(self):
            return self._torch_wrapped_step(closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]  (torch's _patch_step_function: already handled here)
    _torch_wrapped_step = torch.optim.Optimizer.profile_hook_step(lambda self, closure=None: self._step(closure))

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
        # Bad input is refused here and while (re)building the plan, before anything moves.
        self._check_groups()
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
            live_lr.write_schedule(rec.live, rec.rows, self._step_counter, rec.rows_device)
        self._host_steps += 1
        return loss

    def _launch_plan(self) -> plan_mod.LaunchPlan:
        """The cached plan if it still holds (O(groups) Python + one C++ check), else a new one."""
        keys = [
            (id(group["params"]), len(group["params"]), self.backend, self._plan_key(gi, group))
            for gi, group in enumerate(self.param_groups)
        ]
        store = self.state
        if type(store) is not StateStore:
            store = self.state = StateStore(store)  # a mapping assigned to opt.state: adopted (and the plan rebuilt)
        plan = self._plan
        if plan is None or plan.state is not store or plan.state_version != store.version or not plan.valid(keys):
            # (a state entry written since the last step: the kernels take what opt.state holds now)
            self._plan = None
            plan = plan_mod.build(
                self.param_groups, keys, self._backend_for, self._check_state, self._make_states, _chunk_for,
                self._compensation,
            )  # fmt: skip
            plan.state, plan.state_version = store, store.version
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
        self._keep_applied(recs)
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
            sched = live_lr.LaunchLR(rec.rows, rows, counters[dev], lr, mom, next_, writer.get(b.group_index) == i)
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
        """(slot names, state lists, step scalars, fresh flags) of one bucket,
        created lazily (subclasses; the lists: ``_bucket_lists``)."""
        raise NotImplementedError

    def _launch(self, bucket: plan_mod.Bucket, *, sched, grad_mul, skip, advance) -> bool:
        """Update one bucket; True if it advanced the step counter (subclasses)."""
        raise NotImplementedError

    def register_step_in_backward(self, params: Iterable[Tensor] | torch.nn.Module | None = None):
        """Run each parameter's update inside backward, as soon as its
        gradient is accumulated, and free the gradient (``optim/in_backward.py``).

        ``params``: a module (a ``DistributedDataParallel`` one: updated from
        its communication hook, on the reduced gradients), parameters, or
        None for every parameter of the optimizer.  Returns a handle:
        ``handle.stepping = False`` makes the next backward passes only
        accumulate (gradient accumulation; set it True before the last
        micro-batch), ``handle.remove()`` goes back to
        ``step()``.  The step counter advances and the schedule moves once
        per backward that stepped; ``step()`` then only calls its closure.
        Refused with ``max_grad_norm`` (the global norm is not known before
        the first update); GradScaler cannot skip a step here.
        """
        return in_backward.register(self, params)

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
        inv_scale = (
            None if grad_scale is None else 1.0 / grad_scale.to(dev, torch.float32, non_blocking=True).reshape(())
        )
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

    # ------------------------------------------------------------ kahan_sum
    def _compensates(self, p: Tensor) -> bool:
        """Whether ``p`` carries a compensation buffer: ``kahan_sum`` and a real 16-bit parameter."""
        return self.kahan_sum and p.dtype in (torch.bfloat16, torch.float16)

    def _compensation(self, params: list[Tensor]) -> list[Tensor] | None:
        """A bucket's compensation buffers (``state[p]["kahan_comp"]``, the
        parameter's dtype and layout; zeros when new), or None.  One loaded in
        another dtype or layout is converted once.  A parameter that no longer
        takes one (made float32 with ``p.data = p.data.float()``, or a kahan_sum
        checkpoint loaded over float32 parameters) gets its buffer added to it
        (the value p + c it stood for) and the buffer removed."""
        if not self._compensates(params[0]):
            if self.kahan_sum:
                for p in params:
                    st = self.state.get(p)
                    c = st.pop(KAHAN_KEY, None) if st else None
                    if isinstance(c, Tensor) and c.shape == p.shape and p.is_floating_point():
                        with torch.no_grad():
                            p.add_(c.to(device=p.device, dtype=p.dtype))
            return None
        out = []
        for p in params:
            st = self.state[p]
            c = st.get(KAHAN_KEY)
            if c is None:
                c = st[KAHAN_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif c.dtype != p.dtype or c.stride() != p.stride():
                c = st[KAHAN_KEY] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(c)
            out.append(c)
        return out

    def _state_dtype_for(self, p: Tensor) -> torch.dtype:
        """The floating dtype of p's states (complex parameters keep complex
        states, updated through real views)."""
        return codecs.float_dtype(self.state_dtype, p)


def _check_state_tensor(t: Any, p: Tensor, key: str, where: str, *, fused: bool) -> None:
    if not isinstance(t, Tensor):
        raise RuntimeError(f"{where}: state {key!r} must be a tensor, got {type(t).__name__}")
    if t.shape != p.shape or t.device != p.device:
        raise RuntimeError(
            f"{where}: state {key!r} has shape {tuple(t.shape)} on {t.device}, the parameter {tuple(p.shape)} on "
            f"{p.device}: the parameter changed (through .data, set_() or resize_()) since the state was made, "
            "or a checkpoint of another model was loaded"
        )
    if t.layout != torch.strided or codecs.stored(t) is None:
        raise RuntimeError(f"{where}: state {key!r} must be {codecs.STORED_KINDS}, got {t.layout} {t.dtype}")
    # A real parameter's floating state of another dtype is converted once by
    # _kernel_state; a complex one is updated through real views of both, so
    # they must agree.
    if fused and p.is_complex() and t.dtype != p.dtype:
        raise RuntimeError(
            f"{where}: state {key!r} is {t.dtype}, the complex parameter {p.dtype}; the fused kernels need them equal "
            "(did the parameter's dtype change after its state was made?)"
        )


def _hooks_or_profiler(opt: torch.optim.Optimizer) -> bool:
    return bool(
        _optim_mod._global_optimizer_pre_hooks or _optim_mod._global_optimizer_post_hooks
        or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or torch.autograd._profiler_enabled()
    )  # fmt: skip


def _chunk_for(backend: str) -> int | None:
    """Elements per block of a backend that reads address tables (None: lists)."""
    return None if backend == "torch" else kernels_for(backend).CHUNK
