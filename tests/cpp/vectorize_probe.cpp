// The kernels of fused_kernels.cuh as the CPU backend compiles them,
// instantiated as out-of-line symbols so their machine code can be read
// (tests/test_cpu_backend.py counts packed SSE arithmetic in each: the
// element loop was vectorised).  Nothing runs this file.  CLR_FUSED_PROBE_FMA
// picks the instantiation: false (the baseline copy), or true (the AVX2 /
// AVX-512 copies' fused multiply-adds; compiled with -mavx2 -mfma).
#include "cpu_launch.h"
// kernel headers after cpu_launch.h, then the CPU conversions (as cpu_ops.cpp)
#include "fused_kernels.cuh"
#include "algorithms.h"
#include "cpu_storage.h"
// (bf16 stochastic stores: as launch_args.h specialises it for the extension)
namespace clr_fused {
template <>
struct StochasticStorage<c10::BFloat16> {
  static constexpr bool kApplies = true;
  static c10::BFloat16 from_bits(uint16_t bits) { return c10::BFloat16(bits, c10::BFloat16::from_bits()); }
};
}  // namespace clr_fused

#ifndef CLR_FUSED_PROBE_FMA
#define CLR_FUSED_PROBE_FMA false
#endif

namespace clr_fused {
template void sgd_kernel<float, float, 0, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, SgdHyper);
template void sgd_kernel<float, float, 1, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, SgdHyper);
template void adam_kernel<float, float, 2, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
template void adam_kernel<float, float, 3, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
template void sgd_kernel<c10::BFloat16, c10::BFloat16, 1, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, SgdHyper);
template void sgd_kernel<c10::BFloat16, float, 1, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, SgdHyper);
template void adam_kernel<c10::BFloat16, c10::BFloat16, 2, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
template void adam_kernel<c10::BFloat16, float, 2, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
// low-precision states (low_precision.cuh): bf16 and int8 (Q8) states for fp32 parameters,
// int8 states and stochastic rounding for bf16 parameters
template void adam_kernel<float, c10::BFloat16, 2, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
template void adam_kernel<float, Q8, 2, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, AdamHyper);
template void sgd_kernel<float, Q8, 1, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, SgdHyper);
template void adam_kernel<c10::BFloat16, Q8, 2, CLR_FUSED_PROBE_FMA, true>(Tables, StepInputs, AdamHyper);
// the generic step's algorithms (algorithms.h), fp32
template void algorithm_kernel<Lion, float, float, CLR_FUSED_PROBE_FMA>(Tables, StepInputs, Lion::Hyper);
template void algorithm_kernel<SGDScheduleFree, float, float, CLR_FUSED_PROBE_FMA>(Tables, StepInputs,
                                                                                     SGDScheduleFree::Hyper);
template void algorithm_kernel<AdamWScheduleFree, float, float, CLR_FUSED_PROBE_FMA>(Tables, StepInputs,
                                                                                       AdamWScheduleFree::Hyper);
}  // namespace clr_fused
