// The 16-bit storage types the kernels take (c10's BFloat16 and Half: header
// only, no ATen) and which of them round stochastically.  Shared by the ops
// (launch_args.h) and the CUDA emulator's build of the kernels (tests/gpu_sim/).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "multi_tensor.cuh"

namespace clr_fused {

// bfloat16 stores may round stochastically (low_precision.cuh; store_as).
template <>
struct StochasticStorage<c10::BFloat16> {
  static constexpr bool kApplies = true;
  __device__ __forceinline__ static c10::BFloat16 from_bits(uint16_t bits) {
    return c10::BFloat16(bits, c10::BFloat16::from_bits());
  }
};

}  // namespace clr_fused
