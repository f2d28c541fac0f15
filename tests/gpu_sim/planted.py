"""GPU-only bugs planted in a copy of csrc/, each invisible to the CPU build
(blockDim 1, no vector path, one lane per int8 block), to show the emulator
rejects them.  Each is (name, file, original text, replacement, how it must
show, the harness case set that shows it): 'differs' (wrong bytes in some
thread order), 'error' (the emulator reports it), 'race' (ThreadSanitizer
reports it: sim_tsan.cpp)."""

from __future__ import annotations

import os
import shutil

from .build import CSRC

BUGS = [
    (
        "shuffle stage dropped",
        "multi_tensor.cuh",
        "for (int o = kQLanes / 2; o > 0; o >>= 1) {",
        "for (int o = kQLanes / 4; o > 0; o >>= 1) {",
        "differs",
        "int8",
    ),
    (
        "vector tail off by one",
        "multi_tensor.cuh",
        "const int64_t tail = end - (end - start) % kILP;",
        "const int64_t tail = end - (end - start) % kILP + 1;",
        "differs",
        "adamw",
    ),
    (
        "one lane skips store_vec",
        "multi_tensor.cuh",
        "      store_vec(p + i, pv);\n",
        "      if (threadIdx.x != 37) store_vec(p + i, pv);\n",
        "differs",
        "adamw",
    ),
    (
        "second barrier of last_block removed",
        "multi_tensor.cuh",
        "  __syncthreads();\n  if (is_last) __threadfence();",
        "  if (is_last) __threadfence();",
        "differs",
        "adamw",
    ),
    (
        "a thread skips the last block's barriers",
        "fused_kernels.cuh",
        "  if (needs_last_block(in) && last_block(in.ticket)) finish_step(in, c);",
        "  if (threadIdx.x == 511) return;\n  if (needs_last_block(in) && last_block(in.ticket)) finish_step(in, c);",
        "error",
        "sgd",
    ),
    (
        "shuffle mask leaves out its own lane",
        "multi_tensor.cuh",
        "__shfl_xor_sync(0xffffffffu, v, o)",
        "__shfl_xor_sync(0x7fffffffu, v, o)",
        "error",
        "int8",
    ),
    (
        "int8 lanes misaligned by one element",
        "multi_tensor.cuh",
        "const int64_t first = b0 + lane * kQPerLane;",
        "const int64_t first = b0 + lane * kQPerLane + (lane == 5 ? 1 : 0);",
        "error",
        "int8",
    ),
    (
        "vector path taken without the alignment check",
        "multi_tensor.cuh",
        "bool vec_ok = aligned(p) && aligned(g) && (!kKahan || aligned(c));",
        "bool vec_ok = kVectorPath;",
        "error",
        "adamw",
    ),
    (
        "ticket fence removed",
        "multi_tensor.cuh",
        "    __threadfence();\n    int32_t drawn = atomicAdd(ticket, 1);",
        "    int32_t drawn = atomicAdd(ticket, 1);",
        "race",
        None,
    ),
    (
        "ticket incremented without an atomic",
        "multi_tensor.cuh",
        "int32_t drawn = atomicAdd(ticket, 1);",
        "int32_t drawn = (*ticket)++;",
        "race",
        None,
    ),
]


def plant(dest: str, file: str, old: str, new: str) -> str:
    """A copy of csrc/ at ``dest`` with ``old`` replaced by ``new`` in ``file`` (exactly once)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(CSRC, dest)
    path = os.path.join(dest, file)
    with open(path) as f:
        text = f.read()
    assert text.count(old) == 1, f"{file}: the text to replace is not there exactly once: {old!r}"
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    return dest
