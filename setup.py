"""Build hook: the optional CUDA extension ``clr_fused._C`` from csrc/.

Built with ninja when torch has CUDA and nvcc is found, unless
``CLR_FUSED_SKIP_CUDA_BUILD=1``.  Without them this is a pure-Python install
(``clr-fused info`` then reports the extension as absent, and the cuda
backend can still be JIT-built on first use on a CUDA machine).
Arch list: ``TORCH_CUDA_ARCH_LIST`` or sm_80 + sm_90.  MAX_JOBS is capped by
cores and memory (about 4 GiB per nvcc job).
"""

import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home() -> None:
    """Point CUDA_HOME at a toolkit with headers (torch would take the folder
    above the first nvcc on PATH, which may hold no headers)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + ["/usr/local/cuda"]
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and os.path.exists(os.path.join(home, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = home
            return


def _cuda_extension():
    if os.environ.get("CLR_FUSED_SKIP_CUDA_BUILD", "0") == "1":
        print("clr_fused: CLR_FUSED_SKIP_CUDA_BUILD=1, skipping the CUDA extension", file=sys.stderr)
        return None
    _find_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        print(f"clr_fused: torch not importable at build time ({exc}); pure-Python install", file=sys.stderr)
        return None
    if torch.version.cuda is None or CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        print("clr_fused: no CUDA torch or no nvcc; pure-Python install", file=sys.stderr)
        return None
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    if "MAX_JOBS" not in os.environ:
        try:
            mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError):
            mem_gib = 8
        os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, int(mem_gib // 4))))
    # torch's CUDA 13 headers also want the nvidia/cu13/include folder of site-packages.
    include_dirs = [os.path.join(HERE, "csrc")]
    try:
        import nvidia

        for base in nvidia.__path__:
            cand = os.path.join(base, "cu13", "include")
            if os.path.isdir(cand):
                include_dirs.append(cand)
    except ImportError:
        pass
    ext = CUDAExtension(
        name="clr_fused._C",
        sources=["csrc/bindings.cpp", "csrc/fused_optim.cu"],
        include_dirs=include_dirs,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return ext, BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


_built = _cuda_extension()
if _built is None:
    setup()
else:
    setup(ext_modules=[_built[0]], cmdclass={"build_ext": _built[1]})
