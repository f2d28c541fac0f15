"""torch's state-dict and pickle protocol for the optimizers: ``state_dict()``
in torch's format plus our schedule / step / plateau keys,
``load_state_dict`` (validated first, then applied all-or-nothing), and
``__getstate__`` / ``__setstate__`` (copies and pickles carry the live values
the kernels wrote).  A mixin of FusedOptimizer (optim/base.py)."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from .. import codecs
from .. import schedule_math as sm
from ..schedules import Schedule, schedule_from_dict
from .hyper import _check_lr_value, _is_real
from .live_lr import LIVE_DTYPE
from .state_store import SlotDict, StateStore

# Plain-data keys in each saved param group (see StateDictProtocol.state_dict).
_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU = "clr_fused_schedule", "clr_fused_step", "clr_fused_plateau"


#: The state key of a parameter's compensation buffer (kahan_sum; optimi's name).
KAHAN_KEY = "kahan_comp"


class StateDictProtocol:
    """torch's ``state_dict`` / ``load_state_dict`` / pickle protocol, with
    the schedule, the device step counter and the live values carried along."""

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
            if rec.spec is not None:
                # The live group's "schedule" key, as the same plain data: tools that rebuild a
                # group from the live group's keys alone (torchtitan's FQN-keyed checkpoints) keep it.
                packed["schedule"] = {k: packed[k] for k in (_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU)}
        # plain dicts (torch's own state_dict shares the live ones): weights_only loads take them anywhere
        sd["state"] = {k: dict(v) if isinstance(v, SlotDict) else v for k, v in sd["state"].items()}
        self._sharded_codes_as_floats(sd)
        for hook in post.values():
            out = hook(self, sd)
            if out is not None:
                sd = out
        return sd

    def _sharded_codes_as_floats(self, sd: dict[str, Any]) -> None:
        """Quantized states (``codecs.py``) of DTensor (FSDP2) parameters are
        saved as float32 DTensors, decoded: their block scales belong to each
        rank's shard (a block never spans two shards), which a resharded load
        could not map, while a float DTensor torch.distributed.checkpoint
        reshards as any other state; the load encodes them again on the new
        shards.  Plain parameters keep their codes (a bit-exact round trip)."""
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, st in list(sd["state"].items()):
            p = params[idx] if isinstance(idx, int) and idx < len(params) else None
            if p is None or not hasattr(p, "to_local") or not isinstance(st, dict):
                continue
            keys = [k for k in self.SLOTS if isinstance(st.get(k), Tensor) and _quantized(st[k])]
            if keys:
                st = dict(st)  # (torch's packed state holds the live dict)
                for k in keys:
                    st[k] = codecs.stored(st[k]).to_values(st, k)
                sd["state"][idx] = st

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
        state_dict = _lift_schedule_data(state_dict)
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

    def _load(
        self, state_dict: dict[str, Any], saved_groups: list[dict[str, Any]], specs: list[Schedule | None]
    ) -> None:
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        specs_before = [self._group_lr(gi).spec for gi in range(len(self.param_groups))]
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = (
            OrderedDict(),
            OrderedDict(),
        )
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        self._keep_codes(state_dict, saved_groups)
        ours = any(_KEY_STEP in g for g in saved_groups)
        plateau: dict[int, dict[str, Tensor]] = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            for key in (_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU):
                group.pop(key, None)
            if not isinstance(group.get("schedule"), Schedule):
                group.pop("schedule", None)  # the saved plain data (lifted above), not a spec
            if specs[gi] is not None:
                group["schedule"] = specs[gi]
            elif not ours and specs_before[gi] is not None:
                group["schedule"] = specs_before[gi]
            if "lr" not in group:  # a checkpoint without one: the schedule's (or the default) value
                group["lr"] = group.get("schedule", self.defaults["lr"])
            if saved.get(_KEY_PLATEAU) is not None:
                plateau[gi] = {
                    k: torch.tensor(
                        v, dtype=torch.int64 if k in _PLATEAU_COUNTS else LIVE_DTYPE, device=self._live_device()
                    )
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
                # The saved values are what the kernels wrote (float64, exact
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
            raise ValueError(
                "a state dict must be a dict with 'state' and 'param_groups' (from optimizer.state_dict())"
            )
        self._check_shapes(state_dict)
        specs: list[Schedule | None] = []
        for gi, saved in enumerate(state_dict["param_groups"]):
            where = f"loaded param group {gi}"
            if isinstance(saved.get("schedule"), Schedule) or isinstance(saved.get("lr"), Schedule):
                raise ValueError("a saved param group holds a schedule object; save with optimizer.state_dict()")
            if "lr" not in saved and saved.get(_KEY_SCHEDULE) is None:
                # torch would take it and fail at the next step (KeyError 'lr'); refused here, before anything changed
                raise ValueError(f"{where} has no 'lr' (and no {_KEY_SCHEDULE!r} to take it from)")
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
                    raise ValueError(
                        f"{where}: {_KEY_STEP!r} must be a whole number of steps in [0, 2**53], got {step!r}"
                    )
            plateau = saved.get(_KEY_PLATEAU)
            if plateau is not None:
                if not isinstance(plateau, dict) or set(plateau) != {"lr", "best", *_PLATEAU_COUNTS}:
                    raise ValueError(
                        f"{where}: {_KEY_PLATEAU!r} must be a dict of lr, best, num_bad_epochs, cooldown_counter"
                    )
                for k, v in plateau.items():
                    ok = _is_whole(v) and v >= 0 if k in _PLATEAU_COUNTS else _is_real(v)
                    if not ok or (k == "lr" and not (math.isfinite(v) and v >= 0)):
                        raise ValueError(f"{where}: {_KEY_PLATEAU!r}[{k!r}] is invalid: {v!r}")
        return specs

    # ------------------------------------------------------------ pickling, copies, old checkpoints
    #: Group keys torch's own optimizers fill in when a checkpoint predates them (subclasses).
    _LEGACY_GROUP_DEFAULTS: dict[str, Any] = {}
    #: What a pickle / deepcopy carries besides torch's defaults, state and param_groups.
    _PICKLED = (
        "backend",
        "max_grad_norm",
        "state_dtype",
        "stochastic_rounding",
        "kahan_sum",
        "last_grad_norm",
        "_step_counter",
        "_plateau",
        "_counter_device",
    )

    #: Attributes absent from older pickles (or not pickled), with the value they start at.
    _PICKLE_DEFAULTS: dict[str, Any] = {
        "stochastic_rounding": False, "kahan_sum": False, "_host_steps": 0, "_applied": None,
        "_in_backward": None,  # (hooks are not copied: a copy steps with step())
    }  # fmt: skip

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
        self.state = StateStore(self.state)  # (torch's load_state_dict hands a plain defaultdict)
        self._plan = None  # derived caches: rebuilt on the next step
        self._backend_cache, self._lr_recs, self._orphans, self._hyper_seen = {}, {}, [], {}
        # what a pickle from an older version (or one without them) lacks: set once here,
        # so no call site needs a getattr default
        for name, default in self._PICKLE_DEFAULTS.items():
            self.__dict__.setdefault(name, default)
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
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
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
                elif codecs.aux_owner(key, self.SLOTS) is not None:
                    # a codec's own entry (a quantizing codec's block scales)
                    codecs.aux_owner(key, self.SLOTS)[0].check_saved_aux(key, value, p, f"parameter {idx}")
                elif key in self.SLOTS:
                    if value is None and key == "momentum_buffer":
                        continue  # torch saves it as None before the first momentum step
                    codec = codecs.stored(value) if isinstance(value, Tensor) else None
                    if codec is not None:
                        codec.check_saved(st, key, p, signed=key in self.SIGNED_SLOTS, where=f"parameter {idx}")
                    # 0-dim included: a 0-dim state of a non-0-dim parameter is refused
                    if not isinstance(value, Tensor) or value.shape != p.shape or codec is None:
                        what = (
                            f"shape {tuple(value.shape)} {value.dtype}"
                            if isinstance(value, Tensor)
                            else type(value).__name__
                        )
                        raise ValueError(
                            f"state {key!r} of parameter {idx} has {what}, the parameter has shape {tuple(p.shape)}"
                        )
                elif isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"state {key!r} of parameter {idx} has shape {tuple(value.shape)}, "
                        f"the parameter has shape {tuple(p.shape)}"
                    )

    def _keep_codes(self, state_dict: dict[str, Any], saved_groups: list[dict[str, Any]]) -> None:
        """Quantized states and their codec's entries as saved: torch's load
        casts every tensor state to its parameter's floating dtype (a bf16
        parameter's block scales would lose bits), so they are put back as
        they were, on the parameter's device; _after_load then converts them
        if needed."""
        params = {}
        for saved, group in zip(saved_groups, self.param_groups):
            params.update(zip(saved["params"], group["params"]))
        for idx, st in state_dict.get("state", {}).items():
            p = params.get(idx)
            if p is None or not isinstance(st, dict) or p not in self.state:
                continue
            for key, value in st.items():
                codes = isinstance(value, Tensor) and key in self.SLOTS and _quantized(value)
                if codes or codecs.aux_owner(key, self.SLOTS) is not None:
                    self.state[p][key] = value.to(device=p.device)

    def _after_load(self) -> None:
        """Bring loaded state to this optimizer's devices and dtypes (subclasses extend)."""
        for p, st in self.state.items():
            if not isinstance(p, Tensor) or not isinstance(st, dict):
                continue  # a hook may keep other entries in state; not ours to convert
            for key, value in list(st.items()):
                if not isinstance(value, Tensor) or key == "step":
                    continue
                if key == KAHAN_KEY:
                    st[key] = value.to(device=p.device, dtype=p.dtype)  # the parameter's dtype, whatever the states'
                elif (
                    codecs.aux_owner(key, self.SLOTS) is not None
                    or not value.is_floating_point()
                    or self._codec_for(p).quantized
                ):
                    st[key] = value.to(device=p.device)  # codes and their scales; floats encoded below
                else:
                    st[key] = value.to(device=p.device, dtype=self._state_dtype_for(p))
            for key in self.SLOTS:
                if isinstance(st.get(key), Tensor):
                    self._kernel_state(p, st, key)  # in this optimizer's codec (encoded, or decoded)


def _quantized(t: Tensor) -> bool:
    codec = codecs.stored(t)
    return codec is not None and codec.quantized


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


def _lift_schedule_data(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A saved group whose ``clr_fused_*`` keys only survive inside its
    ``schedule`` entry (see state_dict): the keys back at the top of a copy."""
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list):
        return state_dict
    lifted = []
    for g in groups:
        data = g.get("schedule") if isinstance(g, dict) else None
        if isinstance(data, dict) and _KEY_STEP in data and _KEY_STEP not in g:
            g = {**g, **{k: data.get(k) for k in (_KEY_SCHEDULE, _KEY_STEP, _KEY_PLATEAU)}}
        lifted.append(g)
    return {**state_dict, "param_groups": lifted}


def _is_whole(v: Any) -> bool:
    """A Python int (what state_dict() writes for the counters), not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)
