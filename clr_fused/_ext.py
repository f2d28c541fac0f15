"""The one place that loads the compiled extension (CPU kernels, CUDA kernels
when built with CUDA, the ``torch.ops.clr_fused`` ops and the C++ step plan).

Order: ``CLR_FUSED_EXT_PATH`` (a .so of the same sources built otherwise, e.g.
with sanitizers); the prebuilt ``clr_fused._C`` from ``pip install``; else, on a machine
with a CUDA device, a JIT build of csrc/ with ``torch.utils.cpp_extension.load``
(cached on disk under TORCH_EXTENSIONS_DIR).  The failure is kept, not
raised: ``backend="auto"`` falls back silently, and only an explicit
``backend="cuda"`` / ``"cpu"`` raises it (see ``backends.py``).
"""

from __future__ import annotations

import os

from ._build_flags import CXX_FLAGS, LINK_FLAGS, NVCC_FLAGS

_module = None
_error: BaseException | None = None
_tried = False

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def _jit_build():
    import torch
    from torch.utils.cpp_extension import load

    if not torch.cuda.is_available():
        raise ImportError("no prebuilt clr_fused._C, and no CUDA device to JIT-build it for")
    if not os.path.isdir(_CSRC):
        raise ImportError(f"no prebuilt clr_fused._C and no sources at {_CSRC}")
    from . import schedule_codegen

    schedule_codegen.write_headers(_CSRC)  # the generated schedule kinds' C++
    include = [_CSRC]
    try:
        import nvidia

        include += [
            os.path.join(b, "cu13", "include")
            for b in nvidia.__path__
            if os.path.isdir(os.path.join(b, "cu13", "include"))
        ]
    except ImportError:
        pass
    sources = ["bindings.cpp", "ops.cpp", "cpu_ops.cpp", "step_plan.cpp", "fused_optim.cu"]
    return load(
        name="clr_fused_C",
        sources=[os.path.join(_CSRC, s) for s in sources],
        extra_include_paths=include,
        extra_cflags=[*CXX_FLAGS, "-DCLR_FUSED_WITH_CUDA=1"],
        extra_ldflags=LINK_FLAGS,
        extra_cuda_cflags=NVCC_FLAGS,
    )


def _load_from(path: str):
    import importlib.machinery
    import importlib.util

    name = os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load():
    """The extension module, or ``None``; the failure is kept for :func:`error`."""
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            path = os.environ.get("CLR_FUSED_EXT_PATH")
            if path:
                # another build of the same sources (tests/test_sanitizers.py: ASan + UBSan)
                _module = _load_from(path)
            else:
                from . import _C  # type: ignore[attr-defined]  # built by setup.py

                _module = _C
            _check_constants(_module)
        except ImportError as prebuilt_error:
            _module = None
            if os.environ.get("CLR_FUSED_NO_JIT", "0") == "1":
                _error = prebuilt_error
            else:
                try:
                    _module = _jit_build()
                    _check_constants(_module)
                except Exception as exc:  # noqa: BLE001 - kept and reported, never raised here
                    _module = None
                    _error = ImportError(f"{prebuilt_error}; JIT build: {exc}")
    return _module


def _check_constants(module) -> None:
    """The numbers Python and the C++ build must share: the chunk size and the
    schedule kind codes (one definition each: ``kernels/compiled.py`` and
    ``schedule_math.py``).  An extension built from other sources is refused."""
    from . import schedule_math as sm
    from .kernels.compiled import CHUNK

    if getattr(module, "CHUNK", None) != CHUNK:
        raise ImportError(f"clr_fused._C has chunk size {getattr(module, 'CHUNK', None)}, Python {CHUNK}: rebuild it")
    kinds = dict(getattr(module, "SCHEDULE_KINDS", {}))
    if kinds != sm.KINDS:
        raise ImportError(
            f"clr_fused._C's schedule kinds {kinds} differ from schedule_math.KINDS {sm.KINDS}: rebuild it"
        )


def error() -> BaseException | None:
    """Why the extension is unavailable (``None`` when it loaded)."""
    load()
    return _error
