"""How an optimizer state is stored: one interface, one class per codec.

An optimizer addresses its states by slot name (``"exp_avg"``) and asks the
codec of its ``state_dtype`` to create, check, adopt, save and load them;
the optimizer classes, their base and the state-dict protocol name no codec.
A codec decides which entries of a parameter's state dict hold a slot:

* :class:`FloatStates`: one floating tensor shaped like the parameter
  (its dtype, float32, bfloat16 or float16);
* :class:`Int8Blocks`: int8 / uint8 codes shaped like the parameter (signed
  for a first moment, unsigned for a second) and ``<slot>_scale``, one
  float32 scale per block of 128 elements in memory order
  (``kernels/low_precision.py``; the kernels take the storage as a template
  parameter).

Adding a codec: a subclass here, listed in ``CODECS``, and its storage in the
kernels (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .kernels import low_precision as lp

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class StateCodec:
    """The interface (see the module).  ``st`` is one parameter's state dict,
    ``key`` a slot name, ``signed`` whether the slot takes negative values."""

    #: values are stored in another form than floats (saved as floats for resharded loads)
    quantized = False

    def holds(self, t: Tensor) -> bool:
        """Whether ``t`` is a slot stored by this codec."""
        raise NotImplementedError

    def aux_keys(self, key: str) -> tuple[str, ...]:
        """The state-dict entries beside the slot's own (not shaped like the parameter)."""
        return ()

    def create(self, p: Tensor, st: dict[str, Any], key: str, *, signed: bool, dtype: torch.dtype) -> Tensor:
        """A zero state for ``p`` in ``st`` (``dtype``: the floating dtype asked for)."""
        raise NotImplementedError

    def check_param(self, p: Tensor, where: str) -> None:
        """Refuse a parameter this codec cannot store states for."""

    def check(self, st: dict[str, Any], key: str, p: Tensor, *, signed: bool, where: str) -> None:
        """Refuse (RuntimeError, before a launch) a stored slot the kernels could not use."""

    def check_saved(self, st: dict[str, Any], key: str, p: Tensor, *, signed: bool, where: str) -> None:
        """Refuse (ValueError, before a load changes anything) a saved slot of this codec."""

    def check_saved_aux(self, aux: str, value: Any, p: Tensor, where: str) -> None:
        """Refuse a saved auxiliary entry (``aux`` one of ``aux_keys``)."""

    def adopt(
        self, st: dict[str, Any], key: str, p: Tensor, *, signed: bool, dtype: torch.dtype, fused: bool
    ) -> Tensor:
        """``st[key]``, stored by any codec (loaded, or left by a parameter that
        changed), in this codec's form for the kernels; converted once."""
        raise NotImplementedError

    def to_values(self, st: dict[str, Any], key: str) -> Tensor:
        """The slot's values as floats (its auxiliary entries removed from ``st``)."""
        return st[key]

    def check_lists(self, shaped: list[list[Tensor]], aux: list[list[Tensor]]) -> None:
        """A bucket's state lists, before a launch: what the kernels index beyond the shapes."""


class FloatStates(StateCodec):
    def holds(self, t: Tensor) -> bool:
        return t.is_floating_point() or t.is_complex()

    def create(self, p, st, key, *, signed, dtype):
        t = st[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return t

    def adopt(self, st, key, p, *, signed, dtype, fused):
        t = st[key]
        src = stored(t)
        if src is not self:
            t = st[key] = src.to_values(st, key).to(dtype)
        # the fused kernels take the parameter's dtype, float32, or the asked one; others
        # (a loaded float16 state of a float32 parameter) are widened once (lossless)
        if fused and t.dtype not in (p.dtype, torch.float32, dtype) and not p.is_complex():
            t = st[key] = t.to(torch.float32)
        return t


class Int8Blocks(StateCodec):
    quantized = True

    def holds(self, t: Tensor) -> bool:
        return t.dtype in (torch.int8, torch.uint8)

    def aux_keys(self, key: str) -> tuple[str, ...]:
        return (f"{key}_scale",)

    @staticmethod
    def code_dtype(signed: bool) -> torch.dtype:
        return torch.int8 if signed else torch.uint8

    def create(self, p, st, key, *, signed, dtype):
        # one scale per block of the local tensor (an FSDP2 shard's own: blocks never span shards)
        (skey,) = self.aux_keys(key)
        st[skey] = torch.zeros(lp.num_blocks(_local(p).numel()), dtype=torch.float32, device=p.device)
        t = st[key] = torch.zeros_like(p, dtype=self.code_dtype(signed), memory_format=torch.preserve_format)
        return t

    def check_param(self, p, where):
        if not lp.is_dense(_local(p)):
            raise ValueError(
                f"{where}: state_dtype='int8' needs parameters dense in memory "
                f"(this one has shape {tuple(p.shape)} and strides {p.stride()}, a view of a slice?)"
            )

    def check(self, st, key, p, *, signed, where):
        t = st[key]
        if t.dtype != self.code_dtype(signed):
            raise RuntimeError(f"{where}: state {key!r} holds {t.dtype} codes, expected {self.code_dtype(signed)}")
        (skey,) = self.aux_keys(key)
        scales = st.get(skey)
        nb = lp.num_blocks(_local(p).numel())
        if (
            not isinstance(scales, Tensor)
            or scales.dtype != torch.float32
            or scales.shape != (nb,)
            or scales.device != p.device
        ):
            what = (
                f"{scales.dtype} {tuple(scales.shape)} on {scales.device}"
                if isinstance(scales, Tensor)
                else type(scales).__name__
            )
            raise RuntimeError(f"{where}: int8 state {key!r} needs {skey!r}, float32 ({nb},) on {p.device}; got {what}")
        # (codes of another layout and strided scales are adopted, re-laid out, by adopt)

    def check_saved(self, st, key, p, *, signed, where):
        value = st[key]
        (skey,) = self.aux_keys(key)
        if value.dtype != self.code_dtype(signed) or skey not in st:
            raise ValueError(
                f"state {key!r} of {where} holds {value.dtype} codes: expected "
                f"{self.code_dtype(signed)} codes with their {skey!r}"
            )

    def check_saved_aux(self, aux, value, p, where):
        nb = lp.num_blocks(_local(p).numel())
        if not isinstance(value, Tensor) or value.dtype != torch.float32 or value.shape != (nb,):
            what = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"state {aux!r} of {where} has {what}, expected float32 ({nb},)")

    def adopt(self, st, key, p, *, signed, dtype, fused):
        t = st[key]
        (skey,) = self.aux_keys(key)
        if not self.holds(t):
            # quantized in the parameter's layout (its memory order sets the blocks)
            fits = lp.fits_layout(t, p)
            codes, scales = lp.quantize(t if fits else torch.empty_like(p, dtype=t.dtype).copy_(t), signed)
        else:
            # codes of another layout (a checkpoint of other layouts, a non-dense view, a
            # parameter whose memory format changed) and strided scales: re-laid out
            codes, scales = lp.adopt(t, st[skey], p, signed)
        # written only when they changed: a write moves the state's version (and rebuilds the plan)
        if codes is not t:
            st[key] = codes
        if scales is not st.get(skey):
            st[skey] = scales
        return codes

    def to_values(self, st, key):
        (skey,) = self.aux_keys(key)
        return lp.dequantize(st[key], st.pop(skey))

    def check_lists(self, shaped, aux):
        # the kernels index the scales flat: a strided or expanded view would be read past its elements
        lp.check_state_lists(shaped[len(shaped) - len(aux) :], aux)


FLOAT = FloatStates()
INT8 = Int8Blocks()
#: every codec; the first that holds a stored tensor is its codec
CODECS: tuple[StateCodec, ...] = (INT8, FLOAT)
#: ``state_dtype`` values that name a codec other than floats
NAMED = {"int8": INT8}


def check_state_dtype(state_dtype: Any) -> None:
    if not (state_dtype is None or state_dtype in _FLOAT_DTYPES or _named(state_dtype) is not None):
        raise ValueError(
            "state_dtype must be None, a floating dtype (torch.float32, torch.bfloat16, ...) or "
            f"{' / '.join(repr(n) for n in NAMED)}, got {state_dtype!r}"
        )


def quantizes(state_dtype: Any) -> bool:
    """Whether ``state_dtype`` names a codec other than floats (a quantized one)."""
    return _named(state_dtype) is not None


def _named(state_dtype: Any) -> StateCodec | None:
    return NAMED.get(state_dtype) if isinstance(state_dtype, str) else None


def for_param(state_dtype: Any, p: Tensor) -> StateCodec:
    """The codec that stores ``p``'s states (complex parameters keep float states)."""
    codec = _named(state_dtype)
    return FLOAT if codec is None or p.is_complex() else codec


def float_dtype(state_dtype: Any, p: Tensor) -> torch.dtype:
    """The floating dtype of ``p``'s states (a named codec's: the parameter's, for a float fallback)."""
    if state_dtype is None or _named(state_dtype) is not None or p.is_complex():
        return p.dtype
    return state_dtype


def stored(t: Tensor) -> StateCodec | None:
    """The codec a stored slot tensor belongs to (None: no codec stores it)."""
    for codec in CODECS:
        if codec.holds(t):
            return codec
    return None


def aux_owner(key: str, slots: tuple[str, ...]) -> tuple[StateCodec, str] | None:
    """(codec, slot) when ``key`` is an auxiliary entry of one of ``slots``."""
    for codec in CODECS:
        for slot in slots:
            if key in codec.aux_keys(slot):
                return codec, slot
    return None


def kernel_keys(codec: StateCodec, slots: tuple[str, ...]) -> tuple[str, ...]:
    """The entries a bucket's kernels take, in order: the slots, then their auxiliary entries."""
    return tuple(slots) + tuple(a for s in slots for a in codec.aux_keys(s))


#: what a stored slot may be, for messages
STORED_KINDS = "a dense floating tensor (or int8 / uint8 codes with their scales)"
