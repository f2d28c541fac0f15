"""Bytes per parameter per step, counted by the CUDA emulator from the
kernels' own loads and stores, for the variants the roofline model covers
(``clr-fused bench --model`` / ``--low-precision``); writes the table that
``clr_fused/bench/counted.py`` serves: ``python -m tests.gpu_sim.report``
(builds the emulator first).  tests/test_gpu_sim.py checks the committed
table against a fresh count and the model."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

from clr_fused.bench import counted
from clr_fused.bench import low_precision as lp

from . import build, harness

# (algo, optimizer, kwargs); (param dtype, state): the model's rows
ALGOS = [("sgd-momentum", "SGD", dict(momentum=0.9)), ("adamw", "AdamW", {})]
STATES = {
    torch.float32: [("param", {}), ("bf16", dict(state_dtype=torch.bfloat16)), ("int8", dict(state_dtype="int8"))],
    torch.bfloat16: [
        ("param", {}),
        ("fp32", dict(state_dtype=torch.float32)),
        ("int8", dict(state_dtype="int8")),
        ("int8", dict(state_dtype="int8", stochastic_rounding=True)),
    ],  # fmt: skip
}


def count_all(ops) -> dict[str, dict]:
    """Per model row: the element data's bytes (params, grads, states, int8 codes and scales);
    the tables and scalars a launch also reads are per chunk, not per parameter, and left out."""
    out = {}
    for algo, cls, kw in ALGOS:
        for dtype, states in STATES.items():
            for state, extra in states:
                sr = bool(extra.get("stochastic_rounding"))
                key = f"{algo}/{str(dtype).split('.')[-1]}/{state}" + ("/sr" if sr else "")
                row = harness.counted_bytes(ops, cls, {**kw, **extra}, dtype)
                model_algo = "adamw" if algo == "adamw" else "sgd"
                out[key] = {"algo": algo, "param_dtype": str(dtype).split(".")[-1], "state": state, "stochastic_rounding": sr,
                            "element_bytes_per_param": row["element_bytes_per_param"],
                            "model_bytes_per_param": lp.bytes_per_param(model_algo, dtype, state),
                            "per_param": row["per_param"], "thread_accesses_per_param": row["thread_accesses_per_param"],
                            "widths": row["widths"]}  # fmt: skip
    return json.loads(json.dumps(out))  # the JSON form (int keys become strings), as the file holds it


if __name__ == "__main__":
    out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gpu_sim-")
    ops = harness.load(build.build(out_dir, "count"))
    table = count_all(ops)
    with open(counted.PATH, "w") as f:
        json.dump({"about": counted.ABOUT, "rows": table}, f, indent=1, sort_keys=True)
        f.write("\n")
    for k, r in table.items():
        print(f"{k}: {r['element_bytes_per_param']:.4f} B/param counted, model {r['model_bytes_per_param']:.4f}")
    print("wrote", os.path.relpath(counted.PATH))
