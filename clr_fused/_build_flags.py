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

# nvcc: no --use_fast_math.  It made sqrtf and '/' approximate
# (sqrt.approx.ftz.f32, div.approx.ftz.f32 in the PTX) and flushed denormals,
# so the GPU's Adam / int8 codes could not match the CPU build, torch or the
# Triton kernels.  -fmad=false: multiply-adds are fused exactly where the
# kernels ask (madd<true> -> __fmaf_rn), as in the CPU's FMA copies, so the
# element arithmetic is the one the CUDA emulator (tests/gpu_sim/) checks
# bit for bit against that copy.  The kernels are memory-bound: IEEE sqrt
# and division cost nothing measurable there.
NVCC_FLAGS = ["-O3", "-fmad=false", "-lineinfo"]
