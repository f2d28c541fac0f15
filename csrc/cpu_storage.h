// CPU specialisations of the kernels' storage conversions (multi_tensor.cuh).
// Include after the kernel headers and before any kernel is instantiated.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace clr_fused {

// c10's float -> bfloat16 is the same round-to-nearest-even, but it branches
// on NaN, which keeps the element loop scalar; as a select it vectorises.
// Bit-identical to c10::BFloat16(float) for every input (NaN becomes the
// canonical 0x7FC0, as there), checked by tests/test_cpu_backend.py.
template <>
inline c10::BFloat16 to_storage<c10::BFloat16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(x != x ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

}  // namespace clr_fused
