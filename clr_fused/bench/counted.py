"""Bytes per parameter per step COUNTED from the CUDA kernels' own loads and
stores, by the CUDA emulator of tests/gpu_sim/ (the real csrc/ kernels run
with the GPU's threads, warps and vector widths on the CPU; written by
``python -m tests.gpu_sim.report``, checked in CI against a fresh count).
The roofline model (model.py, low_precision.py) divides these bytes by a
bandwidth: its bytes are counted, its time is still a model."""

from __future__ import annotations

import functools
import json
import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "counted_bytes.json")
ABOUT = ("Bytes per parameter per step that the CUDA kernels load and store (params, grads, states, int8 codes and "
         "scales), counted by the CUDA emulator (tests/gpu_sim) on one aligned 65,536-element tensor as distinct bytes "
         "per launch (a byte crosses DRAM once; thread_accesses_per_param counts every thread's access, widths "
         "by thread); the tables and scalars a launch reads per chunk are left out. Regenerate: python -m tests.gpu_sim.report")  # fmt: skip


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    with open(PATH) as f:
        return json.load(f)["rows"]


def load() -> dict:
    return dict(_table())


def bytes_per_param(algo: str, param_dtype: str, state: str, stochastic_rounding: bool = False) -> float | None:
    """The counted bytes for a model row, or None where the emulator has not counted that variant."""
    key = f"{algo}/{param_dtype}/{state}" + ("/sr" if stochastic_rounding else "")
    row = _table().get(key)
    return None if row is None else row["element_bytes_per_param"]
