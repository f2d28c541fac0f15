"""Build hook: the optional extension ``clr_fused._C`` from csrc/.

What gets built:
- torch with CUDA and nvcc found: the CPU kernels, the CUDA kernels and the
  ops (``torch.ops.clr_fused.*``), with ninja;
- torch without CUDA, or no nvcc: the CPU kernels and the ops only (a C++
  compiler is all it needs);
- ``CLR_FUSED_SKIP_CUDA_BUILD=1``: as without nvcc;
  ``CLR_FUSED_SKIP_BUILD=1``: no extension (pure Python).
A failing compile never fails ``pip install``: the extension is optional,
the error is printed, and ``clr-fused info`` then reports it absent
(backend "torch" / "triton" still work).  Arch list: ``TORCH_CUDA_ARCH_LIST``
or sm_80 + sm_90.  MAX_JOBS is capped by cores and memory (about 4 GiB per
nvcc job).
"""

import os
import runpy
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["csrc/bindings.cpp", "csrc/ops.cpp", "csrc/cpu_ops.cpp", "csrc/step_plan.cpp"]
# One list for this build, the JIT build and the tests (without importing the package).
_FLAGS = runpy.run_path(os.path.join(HERE, "clr_fused", "_build_flags.py"))
CXX_FLAGS, LINK_FLAGS, NVCC_FLAGS = _FLAGS["CXX_FLAGS"], _FLAGS["LINK_FLAGS"], _FLAGS["NVCC_FLAGS"]


def _say(msg: str) -> None:
    print(f"clr_fused: {msg}", file=sys.stderr)


def _find_cuda_home() -> None:
    """Point CUDA_HOME at a toolkit with headers (torch would take the folder
    above the first nvcc on PATH, which may hold no headers)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + ["/usr/local/cuda"]
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(home, "bin", "nvcc")
        ):
            os.environ["CUDA_HOME"] = home
            return


def _nvidia_includes() -> list:
    """torch's CUDA 13 headers also want the nvidia/cu13/include folder of site-packages."""
    try:
        import nvidia
    except ImportError:
        return []
    return [
        os.path.join(b, "cu13", "include") for b in nvidia.__path__ if os.path.isdir(os.path.join(b, "cu13", "include"))
    ]


def _extension():
    if os.environ.get("CLR_FUSED_SKIP_BUILD", "0") == "1":
        _say("CLR_FUSED_SKIP_BUILD=1, no extension (pure Python)")
        return None
    _find_cuda_home()  # before torch reads CUDA_HOME at import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        _say(f"torch not importable at build time ({exc}); pure-Python install")
        return None
    # csrc/schedule_generated*.h: the generated schedule kinds' C++ (from schedule_math.py)
    runpy.run_path(os.path.join(HERE, "clr_fused", "schedule_codegen.py"))["write_headers"]()
    with_cuda = os.environ.get("CLR_FUSED_SKIP_CUDA_BUILD", "0") != "1"
    if with_cuda:
        home = cpp_extension.CUDA_HOME
        with_cuda = (
            torch.version.cuda is not None and home is not None and os.path.exists(os.path.join(home, "bin", "nvcc"))
        )
        if not with_cuda:
            _say("no CUDA torch or no nvcc: building the CPU kernels only")
    else:
        _say("CLR_FUSED_SKIP_CUDA_BUILD=1: building the CPU kernels only")
    if "MAX_JOBS" not in os.environ:
        try:
            mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError):
            mem_gib = 8
        os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, int(mem_gib // 4))))
    include_dirs = [os.path.join(HERE, "csrc")]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            name="clr_fused._C",
            sources=CPU_SOURCES + ["csrc/fused_optim.cu"],
            include_dirs=include_dirs + _nvidia_includes(),
            define_macros=[("CLR_FUSED_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    else:
        ext = cpp_extension.CppExtension(
            name="clr_fused._C",
            sources=CPU_SOURCES,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=LINK_FLAGS,
        )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """A compile or link error leaves a working pure-Python install."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - reported, never fatal
                _say(f"building the extension failed, installing without it: {exc}")

    return ext, OptionalBuildExt.with_options(use_ninja=shutil.which("ninja") is not None)


_built = _extension()
if _built is None:
    setup()
else:
    setup(ext_modules=[_built[0]], cmdclass={"build_ext": _built[1]})
