"""Low-precision storage in torch ops: stochastic rounding to bfloat16 and the
block-quantized int8 state codec.

The same operations, in the same order, as ``csrc/low_precision.cuh`` (the
CUDA and CPU kernels) and ``triton_update.py``, so every backend stores the
same bits (tests/test_low_precision.py).  Used by the ``torch`` backend and
to quantize / dequantize states when a checkpoint of another kind loads.

Elements are taken in the tensor's memory order (``flat``), as the kernels
address them, so blocks and random bits agree across backends for any dense
layout (channels_last included).
"""

from __future__ import annotations

import torch
from torch import Tensor

QBLOCK = 128  # csrc/low_precision.cuh kQBlock
MASK32 = 0xFFFFFFFF
_MIX_A, _MIX_B, _GOLDEN = 0x7FEB352D, 0x297A2D39, 0x9E3779B9
# float32 constants as the kernels round them (double 1/127 -> float32)
INV127 = float(torch.tensor(1.0 / 127.0, dtype=torch.float32))
INV255 = float(torch.tensor(1.0 / 255.0, dtype=torch.float32))


def num_blocks(numel: int) -> int:
    return (numel + QBLOCK - 1) // QBLOCK


def check_scales(codes: Tensor, scales: object, what: str = "int8 state") -> None:
    """What every backend relies on of an int8 state's scales, checked before
    anything is written: float32, one per block of the codes' (local)
    elements, contiguous (the kernels index them as a flat array: a strided
    or expanded view would be read past its elements), on the codes' device;
    and codes dense in memory (blocks run along memory)."""
    c = codes.to_local() if hasattr(codes, "to_local") else codes
    nb = num_blocks(c.numel())
    if (
        not isinstance(scales, Tensor)
        or scales.dtype != torch.float32
        or scales.shape != (nb,)
        or scales.device != c.device
        or not scales.is_contiguous()
    ):
        got = (
            f"{scales.dtype} {tuple(scales.shape)} strides {scales.stride()} on {scales.device}"
            if isinstance(scales, Tensor)
            else type(scales).__name__
        )
        raise RuntimeError(f"{what}: its scales must be a contiguous float32 ({nb},) tensor on {c.device}, got {got}")
    if c.dtype not in (torch.int8, torch.uint8) or not is_dense(c):
        raise RuntimeError(
            f"{what}: its codes must be int8 / uint8 and dense in memory, got {c.dtype} strides {c.stride()}"
        )


def check_state_lists(codes: list[list[Tensor]], scales: list[list[Tensor]]) -> None:
    """``check_scales`` over a bucket's int8 state lists (code lists, scale lists)."""
    if len(codes) != len(scales):
        raise RuntimeError(f"int8 states: {len(codes)} code lists with {len(scales)} scale lists")
    for cs, ss in zip(codes, scales):
        for c, sc in zip(cs, ss):
            check_scales(c, sc)


def adopt(codes: Tensor, scales: Tensor, like: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """An int8 state (codes, scales) of any layout -- loaded from a checkpoint
    of other layouts, a non-dense view, or left by a parameter whose memory
    format changed -- as the kernels take it: codes in ``like``'s layout (its
    memory order sets the blocks) and contiguous scales.  Returned as they are
    when they already fit; scales only copied dense (exact); codes of another
    layout re-quantized from their values in ``like``'s layout."""
    scales = scales if scales.is_contiguous() else scales.contiguous()
    if fits_layout(codes, like):
        return codes, scales
    c = codes.to_local() if hasattr(codes, "to_local") else codes
    order = memory_order(c)
    values = unflat(decode(flat(c, order), scales), c, order)
    return quantize(torch.empty_like(like, dtype=torch.float32).copy_(values), signed)


def fits_layout(state: Tensor, like: Tensor) -> bool:
    """Whether a state (codes or float values) has its parameter's layout, so
    its memory order -- which sets the int8 blocks -- is the parameter's
    (DTensors: their local shards)."""
    s = state.to_local() if hasattr(state, "to_local") else state
    p = like.to_local() if hasattr(like, "to_local") else like
    return is_dense(s) and (p.numel() <= 1 or s.stride() == p.stride())


# ------------------------------------------------------------ memory order
def memory_order(t: Tensor) -> list[int]:
    """Dimensions from the largest stride to the smallest: ``t.permute(order)``
    is contiguous for a dense tensor (its memory order)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))


def is_dense(t: Tensor) -> bool:
    return t.permute(memory_order(t)).is_contiguous()


def flat(t: Tensor, order: list[int]) -> Tensor:
    """``t``'s elements as 1-D, in the order ``order`` (a view when ``t`` is laid out that way)."""
    return t.permute(order).reshape(-1)


def unflat(x: Tensor, like: Tensor, order: list[int]) -> Tensor:
    """Inverse of ``flat``: ``x`` shaped as ``like`` (a view)."""
    inv = sorted(range(len(order)), key=lambda d: order[d])
    return x.view([like.shape[d] for d in order]).permute(inv)


# ------------------------------------------------------------ random bits
def mix32(x: Tensor) -> Tensor:
    """csrc's mix32 in int64 (values below 2**32; the multipliers below 2**31: no overflow)."""
    x = x ^ (x >> 16)
    x = (x * _MIX_A) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX_B) & MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * _MIX_A) & MASK32
    x ^= x >> 15
    x = (x * _MIX_B) & MASK32
    return x ^ (x >> 16)


def stream_bases(step: Tensor, numel: int) -> Tensor:
    """int64 [8] on step's device: the bases (0..3) and odd multipliers (4..7) of
    streams 0 (parameter) and 1.. (state lists) for one tensor at schedule step
    ``step`` (an int64 device scalar; no host read): random_bits in low_precision.cuh."""
    seed = mix32((step.reshape(()) & MASK32) ^ _mix32_int(numel & MASK32))
    golden = (torch.arange(1, 9, dtype=torch.int64, device=step.device) * _GOLDEN) & MASK32  # a device op: no copy
    h = mix32((seed + golden) & MASK32)
    return torch.cat([h[:4], (h[4:] >> 1) | 1])


def element_bits(rb: Tensor, n: int, stream: int) -> Tensor:
    """The 32 random bits of elements 0..n-1 of a stream: base + i * multiplier
    (mod 2**32), both drawn afresh every step (why: element_bits in low_precision.cuh)."""
    idx = torch.arange(n, dtype=torch.int64, device=rb.device) & MASK32
    return (rb[stream] + idx * rb[4 + stream]) & MASK32


def bf16_stochastic(x: Tensor, random: Tensor) -> Tensor:
    """float32 ``x`` -> bfloat16, rounded stochastically with 32-bit ``random`` (int64)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & MASK32
    sr = (bits + (random >> 16)) >> 16  # (an infinity's low 16 bits are 0: it stays itself)
    out = torch.where(x != x, 0x7FC0, sr)
    out = torch.where(out >= 0x8000, out - 0x10000, out)  # two's complement, for int16
    return out.to(torch.int16).view(torch.bfloat16)


# ------------------------------------------------------------ int8 codec
def decode(codes: Tensor, scales: Tensor) -> Tensor:
    """Codes (1-D, memory order) and per-block scales -> float32 values."""
    n = codes.numel()
    s = scales[: num_blocks(n)].repeat_interleave(QBLOCK)[:n]
    if codes.dtype == torch.int8:
        a = codes.to(torch.float32) * INV127
        return (a * a.abs()) * s
    a = codes.to(torch.float32) * INV255
    a2 = a * a
    return (a2 * a2) * s


def _sqrt(x: Tensor) -> Tensor:
    """Correctly rounded float32 square root (as sqrtf and Triton's sqrt_rn):
    through float64, whose rounding back to float32 is exact for sqrt."""
    return torch.sqrt(x.double()).float()


def encode(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """float32 values (1-D, memory order) -> (codes, scales): each block's
    scale is its largest magnitude (an integer max of the bits: NaN wins)."""
    n = x.numel()
    nb = num_blocks(n)
    padded = torch.zeros(nb * QBLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = x
    mag = padded.view(torch.int32) & 0x7FFFFFFF
    scales = mag.view(nb, QBLOCK).amax(dim=1).view(torch.float32)
    inv = torch.where(scales > 0, 1.0 / scales, torch.zeros_like(scales))
    # per block, as q8_encode_factor (csrc/low_precision.cuh): 1 / scale, or its sqrt for the unsigned map
    factor = (inv if signed else _sqrt(inv)).repeat_interleave(QBLOCK)[:n]
    if signed:
        q = (_sqrt(x.abs() * factor) * 127.0 + 0.5).to(torch.int32)
        q = torch.where(q < 127, q, 127)
        return torch.where(x < 0, -q, q).to(torch.int8), scales
    # the 4th root as sqrt(sqrt(x) * sqrt(1 / scale)), as q8_encode takes it
    q = (_sqrt(_sqrt(x) * factor) * 255.0 + 0.5).to(torch.int32)
    return torch.where(q < 255, q, 255).to(torch.uint8), scales


def quantize(t: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """A float state shaped like its parameter -> (codes shaped like it, scales);
    ``signed``: int8 codes (a first moment), else uint8 (a second moment).
    (A DTensor state: its local shard's blocks; the codes as a DTensor alike.)"""
    if hasattr(t, "to_local"):
        codes, scales = quantize(t.to_local(), signed)
        return type(t).from_local(codes, t.device_mesh, t.placements, shape=t.shape, stride=t.stride()), scales
    order = memory_order(t)
    codes, scales = encode(flat(t, order).to(torch.float32), signed)
    out = torch.empty_like(t, dtype=torch.int8 if signed else torch.uint8, memory_format=torch.preserve_format)
    flat_out = flat(out, memory_order(out))
    flat_out.copy_(codes)
    return out, scales


def dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """Codes shaped like their parameter -> float32 values of that shape and layout."""
    if hasattr(codes, "to_local"):
        v = dequantize(codes.to_local(), scales)
        return type(codes).from_local(v, codes.device_mesh, codes.placements, shape=codes.shape, stride=codes.stride())
    order = memory_order(codes)
    return unflat(decode(flat(codes, order), scales), codes, order)
