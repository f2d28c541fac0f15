"""Compiler flags of the extension's C++ (CPU) sources, in one place: setup.py,
the JIT build (_ext.py) and the vectorisation test read them.

-O3 vectorises the kernels' element loop; -fno-math-errno lets sqrtf
vectorise (sqrtps) without changing any result; -fopenmp for
at::parallel_for (torch's own OpenMP runtime is the one loaded).  No
-ffast-math: IEEE float32 with one rounding to the storage type, as on the GPU.
-ffp-contract=off: no fused multiply-adds, so the AVX2 / AVX-512 copies of
the kernels (csrc/cpu_ops.cpp, where FMA is available) compute exactly what
the baseline copy does.
"""

CXX_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-Wno-unknown-pragmas"]
LINK_FLAGS = ["-fopenmp"]
