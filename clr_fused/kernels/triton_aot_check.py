"""Compile the Triton kernels for a GPU target without a GPU (PTX/cubin).

The interpreter runs kernels as numpy and accepts code that the real
compiler rejects (types that differ between branches, unsupported casts), so
CI also compiles every kernel variant here for sm_80 and sm_90:
``python -m clr_fused.kernels.triton_aot_check``.
"""

from __future__ import annotations

import itertools
import os
import sys


def _compile_all(arch: int) -> int:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_update as tu

    target = GPUTarget("cuda", arch, 32)
    ptr_args = {
        "p_addrs": "*i64", "g_addrs": "*i64", "buf_addrs": "*i64", "m_addrs": "*i64", "v_addrs": "*i64",
        "vmax_addrs": "*i64", "step_addrs": "*i64", "numels": "*i64", "fresh": "*i8", "chunk_tensor": "*i32",
        "chunk_start": "*i64", "rows": "*fp64", "counter": "*i64", "plateau_lr": "*fp32", "grad_mul": "*fp32",
        "skip": "*i1", "ticket": "*i32", "betas": "*fp32",
    }  # fmt: skip
    scalar_args = {"n_rows": "i32", "num_tensors": "i32"}
    count = 0
    dtypes = [(tl.float32, tl.float32), (tl.bfloat16, tl.bfloat16), (tl.float16, tl.float32)]
    for kernel, flag_names in (
        (tu._sgd_kernel, ["USE_MOMENTUM", "CYCLE_MOMENTUM", "NESTEROV", "HAS_SKIP"]),
        (tu._adam_kernel, ["CYCLE_MOMENTUM", "AMSGRAD", "DECOUPLED", "HAS_SKIP"]),
    ):
        n = len(flag_names)
        patterns = [(False,) * n, (True,) * n, tuple(i % 2 == 0 for i in range(n)), tuple(i % 2 == 1 for i in range(n))]
        for (p_dt, s_dt), flags in itertools.product(dtypes, patterns):
            constexprs = dict(zip(flag_names, flags))
            constexprs.update(
                P_DT=p_dt, G_DT=p_dt, S_DT=s_dt, MAXIMIZE=flags[0], HAS_WD=True, HAS_GRAD_MUL=flags[-1],
                HAS_PLATEAU=flags[1], ADVANCE=True, CHUNK=tu.CHUNK, BLOCK=tu.BLOCK,
            )  # fmt: skip
            if kernel is tu._adam_kernel:
                constexprs["BLOCK_T"] = tu.BLOCK_T
                constexprs["HAS_BETAS"] = flags[2]
            signature = {}
            for name in kernel.arg_names:
                if name in constexprs:
                    signature[name] = "constexpr"
                elif name in ptr_args:
                    signature[name] = ptr_args[name]
                elif name in scalar_args:
                    signature[name] = scalar_args[name]
                else:
                    signature[name] = "fp32"
            src = ASTSource(fn=kernel, signature=signature, constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
            triton.compile(src, target=target)
            count += 1
    return count


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile the kernels", file=sys.stderr)
        return 2
    for arch in (80, 90):
        n = _compile_all(arch)
        print(f"sm_{arch}: compiled {n} kernel variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
