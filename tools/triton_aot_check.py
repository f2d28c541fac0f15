"""Compile the Triton kernels for a GPU target without a GPU (PTX/cubin).

The interpreter runs kernels as numpy and accepts code that the real
compiler rejects (types that differ between branches, unsupported casts), so
CI also compiles every kernel variant here for sm_80 and sm_90:
``python -m tools.triton_aot_check`` (from the repository root).
"""

from __future__ import annotations

import itertools
import os
import sys

_PTR_ARGS = {
    "p_addrs": "*i64", "g_addrs": "*i64", "buf_addrs": "*i64", "m_addrs": "*i64", "v_addrs": "*i64",
    "vmax_addrs": "*i64", "step_addrs": "*i64", "numels": "*i64", "fresh": "*i8", "chunk_tensor": "*i32",
    "chunk_start": "*i64", "rows": "*fp64", "counter": "*i64", "lr_ptr": "*fp32", "mom_ptr": "*fp32",
    "next_lr": "*fp32", "grad_mul": "*fp32", "skip": "*i1", "ticket": "*i32", "betas": "*fp32",
    "bs_addrs": "*i64", "ms_addrs": "*i64", "vs_addrs": "*i64", "vmaxs_addrs": "*i64",  # int8 states' scales
    "c_addrs": "*i64",  # kahan_sum's compensation buffers
}  # fmt: skip
_SCALAR_ARGS = {"n_rows": "i32", "num_tensors": "i32"}


def compile_variant(kernel, constexprs: dict, arch: int):
    """One kernel variant compiled for ``sm_<arch>`` by the real compiler (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = _PTR_ARGS.get(name) or _SCALAR_ARGS.get(name) or "fp32"
    # As the JIT specialises a launch: every pointer argument 16-byte aligned
    # (torch's allocations are).  The element pointers come from the address
    # tables, so this says nothing about them: ALIGNED does.
    attrs = {
        (i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if signature[name].startswith("*")
    }
    src = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
        attrs=attrs,
    )
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def variant_constexprs(kernel, p_dt, s_dt, flags: dict, **extra) -> dict:
    """Every constexpr of ``kernel``: the given flags, the rest defaulted."""
    import torch
    import triton.language as tl

    from clr_fused.kernels import triton_update as tu

    out = dict(P_DT=p_dt, G_DT=p_dt, S_DT=s_dt, MAXIMIZE=False, HAS_WD=True, HAS_GRAD_MUL=False, HAS_SKIP=False,
               NEXT=True, ADVANCE=True, SR=False, Q8=False)  # fmt: skip
    if kernel is tu._adam_kernel:
        out.update(CYCLE_MOMENTUM=False, AMSGRAD=False, DECOUPLED=False, HAS_BETAS=False, BLOCK_T=tu.BLOCK_T)
    else:
        out.update(USE_MOMENTUM=True, CYCLE_MOMENTUM=False, NESTEROV=False)
    out.update(flags)
    out.update(extra)
    if kernel is tu._adam_kernel:
        out["V_DT"] = tl.uint8 if out.get("Q8") else out["S_DT"]  # exp_avg_sq's codes are unsigned
    # the element loops' shape, exactly as a launch derives it
    torch_dt = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float16: torch.float16, tl.int8: torch.int8}
    aligned = out.get("ALIGNED", True) and not out.get("Q8", False)  # int8 states: the 2-D loop (no ALIGNED variant)
    out.update(tu.loop_constexprs(aligned, *(torch_dt[out[k]] for k in ("P_DT", "G_DT", "S_DT"))))
    return out


def _compile_all(arch: int) -> int:
    import triton.language as tl

    from clr_fused.kernels import triton_update as tu

    count = 0
    dtypes = [(tl.float32, tl.float32), (tl.bfloat16, tl.bfloat16), (tl.float16, tl.float32)]
    for kernel, flag_names in (
        (tu._sgd_kernel, ["USE_MOMENTUM", "CYCLE_MOMENTUM", "NESTEROV", "HAS_SKIP"]),
        (tu._adam_kernel, ["CYCLE_MOMENTUM", "AMSGRAD", "DECOUPLED", "HAS_SKIP"]),
    ):
        n = len(flag_names)
        patterns = [(False,) * n, (True,) * n, tuple(i % 2 == 0 for i in range(n)), tuple(i % 2 == 1 for i in range(n))]
        for (p_dt, s_dt), flags in itertools.product(dtypes, patterns):
            extra = dict(MAXIMIZE=flags[0], HAS_GRAD_MUL=flags[-1], NEXT=flags[1], ALIGNED=flags[0])
            if kernel is tu._adam_kernel:
                extra["HAS_BETAS"] = flags[2]
            compile_variant(kernel, variant_constexprs(kernel, p_dt, s_dt, dict(zip(flag_names, flags)), **extra), arch)
            count += 1
        # low-precision states and stochastic rounding: bf16 states for fp32 params, int8 states
        # (fp32 / bf16 params), bf16 params rounded stochastically
        lowp = [(tl.float32, tl.bfloat16, dict(SR=True)), (tl.float32, tl.int8, dict(Q8=True)),
                (tl.bfloat16, tl.int8, dict(Q8=True, SR=True)), (tl.bfloat16, tl.bfloat16, dict(SR=True))]  # fmt: skip
        for (p_dt, s_dt, lp_flags), flags in itertools.product(lowp, patterns[:2]):
            base = dict(zip(flag_names, flags))
            if lp_flags.get("Q8") and kernel is tu._sgd_kernel:
                base["USE_MOMENTUM"] = True  # int8 states need a buffer
            compile_variant(kernel, variant_constexprs(kernel, p_dt, s_dt, base, ALIGNED=flags[0], **lp_flags), arch)
            count += 1
    return count


def memory_ops(arch: int = 90) -> dict:
    """Global memory instructions (cuobjdump -sass) of the fp32 SGD and Adam
    kernels and their bf16-parameter / fp32-state (AMP) variants (and
    shared-memory accesses, barriers), with ALIGNED set and not:
    {kernel: {"aligned"|"scalar"[-bf16-fp32state]: {op: n}}},
    and "loop_violations": float64 / integer division in their element loops."""
    import collections
    import re
    import subprocess
    import tempfile

    import triton
    import triton.language as tl

    from clr_fused.kernels import triton_update as tu
    from tools.sass_loops import element_loop_violations

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out: dict = {"loop_violations": []}
    for kernel in (tu._sgd_kernel, tu._adam_kernel):
        for (p_dt, s_dt, suffix), aligned in itertools.product(
            [(tl.float32, tl.float32, ""), (tl.bfloat16, tl.float32, "-bf16-fp32state")], (True, False)
        ):
            compiled = compile_variant(kernel, variant_constexprs(kernel, p_dt, s_dt, {}, ALIGNED=aligned), arch)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
            ops = collections.Counter(
                re.findall(r"\b((?:LDG|STG|LD|ST)\.E(?:\.\w+)*|(?:STS|LDS)(?:\.\w+)*|BAR\.SYNC)\b", sass)
            )
            out["loop_violations"] += element_loop_violations(sass)
            out.setdefault(kernel.__name__, {})[("aligned" if aligned else "scalar") + suffix] = dict(ops)
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile the kernels", file=sys.stderr)
        return 2
    if "--memory-ops" in sys.argv:
        import json

        print(json.dumps(memory_ops()))
        return 0
    for arch in (80, 90):
        n = _compile_all(arch)
        print(f"sm_{arch}: compiled {n} kernel variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
