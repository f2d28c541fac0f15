"""What every bench report shares: the copy bandwidth a step is measured
against, the cache that can make a step look faster than memory, readable
ratios and the machine's load.

The copy is measured beside the steps, in the same process and with the same
threads, over the step's own memory (its footprint: the distinct bytes of
parameters, gradients and states, which an in-place update reads once and
writes back; capped well past the cache), best of several trials: a
percentage of it is then a fair "how close to memory speed".  A step whose
footprint fits in the last-level cache stays there from one step to the
next (a 480 MiB L3 holds ResNet-50's fp32 Adam: 409 MB), so its row says
"fits in cache" instead of a percentage above 100.
"""

from __future__ import annotations

import functools
import glob
import os
import statistics
import time

import torch

COPY_CAP_BYTES = 1 << 30  # footprint; raised to 4x the cache: past that a copy's GB/s no longer depends on its size
HIGH_LOAD = 0.75  # load average per core above which figures are called noisy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_cap(cache: int) -> int:
    """The largest copy measured: 4x the last-level cache, at least COPY_CAP_BYTES."""
    return max(COPY_CAP_BYTES, 4 * cache)


def copy_bandwidth(device: torch.device, footprint: int, trials: int = 5, reps: int = 5) -> float:
    """GB/s (bytes read + written) of a same-device copy whose source and
    destination together span ``footprint`` bytes (capped at ``copy_cap``):
    the best of ``trials`` medians of ``reps``."""
    nbytes = max(4096, min(int(footprint), copy_cap(cache_bytes(device))))
    src = torch.empty(nbytes // 8, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    for _ in range(trials):
        ts = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            dst.copy_(src)
            _sync(device)
            ts.append(time.perf_counter() - t0)
        best = max(best, 2 * src.numel() * 4 / statistics.median(ts) / 1e9)
    return best


def rotations(names: list[str], rounds: int):
    """The providers' order for each round of an interleaved timing: rotated by
    one each round, so no provider always runs first (or right after another)."""
    for r in range(rounds):
        k = r % len(names)
        yield names[k:] + names[:k]


@functools.cache
def cache_bytes(device: torch.device) -> int:
    """The last-level cache: the GPU's L2, or the CPU's largest cache level (0 if unknown)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    best = (0, 0)
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        best = max(best, (level, int(size.rstrip("KMG")) * mult))
    return best[1]


def pct_of_copy(gbps: float, copy_gbps: float, footprint: int, cache: int) -> float | None:
    """The step's GB/s as a percentage of the copy's; None where the step's
    footprint fits in the cache (not a memory-bound figure)."""
    if cache and footprint <= cache:
        return None
    return 100 * gbps / copy_gbps


def pct_text(pct: float | None) -> str:
    """A table cell: never a percentage above 100."""
    if pct is None:
        return "fits in cache"
    if pct > 100:
        return "≥ copy"  # beyond the cache yet faster than the copy: the reader sees no fake percentage
    return f"{pct:.0f}%"


def above_copy_note(pcts) -> str:
    """A sentence for a report with a step faster than the copy (a '≥ copy' cell)."""
    if not any(p is not None and p > 100 for p in pcts):
        return ""
    return (
        " '≥ copy': the step moved its bytes faster than the copy moved its own. On a CPU a copy's stores "
        "first read their destination lines (read for ownership), which its byte count leaves out, while an "
        "in-place update writes lines it has just read; a GPU's copy has no such reads."
    )


def speed_text(ratio: float) -> str:
    """``ours_ms / theirs_ms`` as a reader wants it: "2.41x faster", "1.30x slower"."""
    if not ratio > 0:
        return "n/a"
    if 0.995 <= ratio <= 1.005:
        return "same"
    return f"{1 / ratio:.3g}x faster" if ratio < 1 else f"{ratio:.3g}x slower"


def machine_load() -> dict:
    """The 1-minute load average against the cores; ``high`` when figures are noisy."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return dict(load=None, cores=cores, high=False)
    return dict(load=round(load, 2), cores=cores, high=load > HIGH_LOAD * cores)


def load_note(before: dict, after: dict) -> str:
    """A sentence for the report header; empty where the machine was quiet."""
    loads = [x["load"] for x in (before, after) if x["load"] is not None]
    if not loads or not (before["high"] or after["high"]):
        return ""
    return (
        f" Machine load {max(loads):.1f} on {before['cores']} cores (high): other work competed with these "
        "steps, so absolute times are noisy; the ratios of interleaved medians are the figures to read."
    )


def write_results(out_dir: str, name: str, meta: dict, data: dict, md: str) -> str:
    """Writes ``<name>-<date>[-quick].json`` ({"meta": meta, **data}) and the
    markdown beside it in ``out_dir``, prints the markdown; returns the stem."""
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{name}-{meta['date']}{'-quick' if meta.get('quick') else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, **data), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md")
    return stem
