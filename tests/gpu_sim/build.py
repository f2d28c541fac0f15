"""Builds the CUDA emulator's op library from csrc/ (or a copy of it).

Three files, compiled separately because they need different flags:
- sim_ops.cpp: the op entry (ATen, csrc/step_entry.h), plain;
- sim_kernels.cpp: the csrc/ kernels with the GPU's semantics (cuda_sim.h),
  namespace renamed; in the ``count`` build with GCC's TSan instrumentation
  (no TSan runtime) so every load and store reaches a hook;
- sim_runtime.cpp: configuration, counts and the hooks, never instrumented.
Objects are cached by the hash of their command and inputs, so a second
build with another csrc/ copy recompiles only the kernels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
# The kernels' arithmetic flags of the extension (clr_fused/_build_flags.py): no contraction beyond the
# kernels' explicit fused multiply-adds (nvcc: -fmad=false), IEEE float32.
KERNEL_MATH = ["-ffp-contract=off", "-fno-math-errno"]
VARIANTS = ("count", "asan", "tsan")


def _torch_flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    inc = [f"-I{d}" for d in include_paths()]
    libs = [f"-L{d}" for d in library_paths()] + [f"-Wl,-rpath,{d}" for d in library_paths()]
    return [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *inc], [*libs, "-lc10", "-ltorch_cpu", "-ltorch"]


def _digest(cmd: list[str], inputs: list[str]) -> str:
    h = hashlib.sha256("\0".join(cmd).encode())
    for d in inputs:
        for dirpath, _, files in sorted(os.walk(d)):
            for f in sorted(files):
                if f.endswith((".h", ".cuh", ".cpp")):
                    with open(os.path.join(dirpath, f), "rb") as fh:
                        h.update(f.encode() + fh.read())
    return h.hexdigest()[:16]


def _compile_jobs(jobs: list[tuple[list[str], str]]) -> None:
    """Runs the compiles at once (they are independent); raises with the first error."""
    procs = [
        (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out) for cmd, out in jobs
    ]
    errors = []
    for p, out in procs:
        text, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            errors.append(f"compiling {os.path.basename(out)} failed:\n{text[-4000:]}")
    if errors:
        raise RuntimeError("\n".join(errors))


def build(out_dir: str, variant: str = "count", csrc: str = CSRC, fp32_only: bool = False, coverage: bool = False,
          kernel_opt: str | None = None, extra: tuple[str, ...] = ()) -> str:  # fmt: skip
    """The path of the op library for ``variant`` ('count': access counting;
    'asan': AddressSanitizer + UBSan; the library must then run in a process
    with the sanitizer runtime preloaded, see ``sanitizer_preload``).
    coverage: the kernels built with gcov counters (``coverage_dump`` writes
    them; ``kernel_object`` names the object gcov reads).  kernel_opt: the
    kernels' optimisation level instead of the variant's (faster builds)."""
    if variant not in ("count", "asan"):
        raise ValueError(f"variant must be 'count' or 'asan', got {variant!r}")
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("the CUDA emulator needs g++")
    os.makedirs(out_dir, exist_ok=True)
    tflags, lflags = _torch_flags()
    base = [gxx, "-std=c++20", "-fPIC", "-Wno-unknown-pragmas", f"-I{csrc}", f"-I{HERE}", *tflags]
    san = SANITIZE if variant == "asan" else []
    opt = ["-O1", "-g"] if variant == "asan" else ["-O2"]
    kernel_flags = [
        *(opt if kernel_opt is None else [kernel_opt]),
        *KERNEL_MATH,
        "-Dclr_fused=clr_fused_gpusim",
        *san,
        *extra,
    ]
    if variant == "count":
        # -fno-tree-sra: a Vec<float> load stays one 16-byte access (see cuda_sim.h)
        kernel_flags += ["-fsanitize=thread", "-fno-tree-sra", "-DCUDA_SIM_COUNT_ACCESSES"]
    if fp32_only:
        kernel_flags.append("-DCUDA_SIM_FP32_ONLY")
    runtime_flags = [*opt, *san] + (["-DCUDA_SIM_COUNT_ACCESSES"] if variant == "count" else [])
    if coverage:
        kernel_flags += ["--coverage", "-fprofile-update=atomic", "-fprofile-abs-path"]
        runtime_flags.append("-DCUDA_SIM_COVERAGE")
    units = [("sim_ops.cpp", [*opt, *san]), ("sim_kernels.cpp", kernel_flags), ("sim_runtime.cpp", runtime_flags)]
    objects, jobs = [], []
    for src, flags in units:
        cmd = [*base, *flags, "-c", os.path.join(HERE, src)]
        obj = os.path.join(out_dir, f"{src[:-4]}-{_digest(cmd, [csrc, HERE])}.o")
        objects.append(obj)
        if not os.path.exists(obj):
            # (a gcov object is written in place: its notes file is named after it)
            jobs.append(([*cmd, "-o", obj if coverage else obj + ".tmp"], obj))
    _compile_jobs(jobs)
    for _, obj in jobs:
        if not coverage:
            os.replace(obj + ".tmp", obj)
    lib = os.path.join(out_dir, f"libclr_fused_sim-{variant}-{_digest(objects, [])}.so")
    if not os.path.exists(lib):
        link = [gxx, "-shared", "-o", lib + ".tmp", *objects, *lflags, *san] + (["--coverage"] if coverage else [])
        done = subprocess.run(link, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"linking the emulator failed:\n{done.stderr[-4000:]}")
        os.replace(lib + ".tmp", lib)
        with open(lib + ".objects", "w") as f:
            f.write("\n".join(objects))
    return lib


def kernel_object(lib: str) -> str:
    """The kernels' object file of a library ``build`` made (for gcov)."""
    with open(lib + ".objects") as f:
        return f.read().split("\n")[1]


def sanitizer_preload() -> str:
    """LD_PRELOAD for a process that loads the 'asan' build."""
    gxx = shutil.which("g++")
    libs = [subprocess.run([gxx, f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in ("libasan.so", "libubsan.so")]  # fmt: skip
    return " ".join(libs)


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "gpu_sim"), *sys.argv[2:3]))
