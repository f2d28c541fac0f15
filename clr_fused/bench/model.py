"""``clr-fused bench --model h100``: a roofline MODEL of one optimizer step.

Not a measurement.  No GPU has run these kernels (see the README); this
predicts, from the bytes a step must move and the launches it makes, what an
H100 would take, for our fused kernels and for torch's fused ones, so the
figures can be checked against a real run once one exists.

Model, per parameter set, algorithm and dtype:
- bytes = parameters x bytes per parameter, as COUNTED from the CUDA
  kernels' own loads and stores by the CUDA emulator (``counted.py``; the
  formula ``traffic.bytes_per_param`` gives the same: Adam reads p, g, m, v and
  writes p, m, v; SGD-momentum reads p, g, buf and writes p, buf);
- time = launches x launch cost + bytes / bandwidth (memory-bound: the
  arithmetic is a few flops per byte);
- ours: one launch per (param group, dtype) bucket, one 512-thread block per
  16,384-element chunk of one tensor (csrc/multi_tensor.cuh), so the grid,
  the waves on 132 SMs x 2 resident blocks (the <= 64-register gate) and the
  fill of the last wave are reported too, with the partially filled blocks
  (each tensor's last chunk) and a bound on what the tail costs: blocks
  handed to the 264 slots in launch order as slots free up, each taking time
  in proportion to its elements (a constant speed per block: an upper bound
  for a bandwidth-bound kernel, where fewer running blocks each get more
  bandwidth), makespan over the perfectly balanced time.  ResNet-50 2.1%,
  GPT-2 small 1.0%: nothing there worth a change of the chunking;
- torch fused: ``multi_tensor_apply`` packs at most 36 tensors (Adam, 4
  lists) or 48 (SGD with momentum, 3 lists) and 320 chunks of 65,536
  elements per launch; each full pack is a launch.
The host side (Python, CyclicLR.step) is not modelled: ``--host`` measures it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

import torch

from . import counted
from .param_sets import numel, param_sets
from .traffic import bytes_per_param


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth: float  # bytes / s a streaming kernel attains
    launch_s: float  # device-side cost of one kernel launch in a stream
    sms: int
    blocks_per_sm: int


# H100 SXM: 3.35 TB/s HBM3 peak; a good copy kernel reaches about 90% of it.
H100 = Hardware("H100 SXM (model: 3.0 TB/s attained, 4 us per launch)", 3.0e12, 4e-6, 132, 2)
HARDWARE = {"h100": H100}

OUR_CHUNK = 16384
TORCH_CHUNK = 65536
TORCH_MAX_TENSORS = {"adam": 36, "sgd-momentum": 48}
TORCH_MAX_CHUNKS = 320


def torch_launches(sizes: list[int], algo: str) -> int:
    """Launches of torch's multi_tensor_apply over ``sizes``: a launch goes out
    when its tensor table or its block table is full, or at the end; a tensor
    cut by a full block table continues in the next launch."""
    max_tensors = TORCH_MAX_TENSORS[algo]
    launches, tensors, blocks = 0, 0, 0
    nonempty = [n for n in sizes if n > 0]
    for i, n in enumerate(nonempty):
        tensors += 1
        chunks = math.ceil(n / TORCH_CHUNK)
        for c in range(chunks):
            blocks += 1
            last_chunk = c == chunks - 1
            if (
                (tensors == max_tensors and last_chunk)
                or blocks == TORCH_MAX_CHUNKS
                or (i == len(nonempty) - 1 and last_chunk)
            ):
                launches += 1
                blocks = 0
                tensors = 0 if last_chunk else 1
    return launches


def block_sizes(sizes: list[int]) -> list[int]:
    """Elements of each of our blocks, in launch order (one per 16,384-element chunk of a tensor)."""
    return [min(OUR_CHUNK, n - start) for n in sizes for start in range(0, max(n, 1), OUR_CHUNK)]


def tail_bound(blocks: list[int], slots: int) -> float:
    """Greedy in-order makespan over the balanced time, minus one (see the module doc)."""
    finish = [0] * slots
    for b in blocks:
        heapq.heapreplace(finish, finish[0] + b)
    total = sum(blocks)
    return max(finish) * slots / total - 1.0 if total else 0.0


def predict(set_name: str, shapes, algo: str, dtype: torch.dtype, hw: Hardware = H100) -> dict:
    sizes = [math.prod(s) for s in shapes]
    n = numel(shapes)
    # Our kernels' bytes as counted from their own loads and stores by the CUDA emulator
    # (tests/gpu_sim; equal to the formula, checked in CI); torch's fused step moves the same.
    dname = str(dtype).replace("torch.", "")
    per_param = counted.bytes_per_param("adamw" if algo == "adam" else algo, dname, "param")
    nbytes = n * (per_param if per_param is not None else bytes_per_param(algo, dtype))
    blocks = block_sizes(sizes)
    grid = len(blocks)
    per_wave = hw.sms * hw.blocks_per_sm
    waves = math.ceil(grid / per_wave)
    t_bytes = nbytes / hw.bandwidth
    ours_ms = (hw.launch_s + t_bytes) * 1e3
    tl = torch_launches(sizes, algo)
    torch_ms = (tl * hw.launch_s + t_bytes) * 1e3
    return dict(
        set=set_name, algo=algo, dtype=dname, params=n, tensors=len(sizes), bytes=nbytes, bytes_counted=per_param is not None,
        grid=grid, waves=waves, last_wave_fill=(grid - (waves - 1) * per_wave) / per_wave,
        partial_blocks=sum(1 for b in blocks if b < OUR_CHUNK), tail_bound=tail_bound(blocks, per_wave),
        ours_launches=1, torch_launches=tl, ours_ms=ours_ms, torch_fused_ms=torch_ms, ratio=ours_ms / torch_ms,
    )  # fmt: skip


def table(hw: Hardware = H100) -> list[dict]:
    rows = []
    for set_name, shapes in param_sets(full=True).items():
        for algo in ("sgd-momentum", "adam"):
            for dtype in (torch.float32, torch.bfloat16):
                rows.append(predict(set_name, shapes, algo, dtype, hw))
    return rows


def markdown(rows: list[dict], hw: Hardware = H100) -> str:
    lines = [f"# MODEL, not a measurement: {hw.name}", "",
             "MB moved: our kernels' bytes per parameter as counted from their own loads and stores by the CUDA "
             "emulator (tests/gpu_sim, clr_fused/bench/counted_bytes.json); the times are the model's.", "",
             "| set | algo | dtype | MB moved | our grid (waves, last-wave fill) | partial blocks, tail bound | launches ours / torch | predicted ms ours / torch fused | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['algo']} | {r['dtype']} | {r['bytes'] / 1e6:,.0f} | {r['grid']:,} ({r['waves']}, {r['last_wave_fill']:.0%}) "
            f"| {r['partial_blocks']:,}, {r['tail_bound']:.1%} "
            f"| {r['ours_launches']} / {r['torch_launches']} | {r['ours_ms']:.3f} / {r['torch_fused_ms']:.3f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(name: str, out_dir: str) -> int:
    import json
    import os

    hw = HARDWARE[name]
    rows = table(hw)
    md = markdown(rows, hw)
    print(md)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"model-{name}")
    with open(stem + ".json", "w") as f:
        json.dump({"label": "model, not a measurement", "hardware": asdict(hw), "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(f"wrote {stem}.json and {stem}.md")
    return 0
