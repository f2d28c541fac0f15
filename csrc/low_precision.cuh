// Low-precision storage for the kernels: stochastic rounding to bfloat16 and
// the block-quantized 8-bit state codec ("int8" states).  One definition for
// every compiler (nvcc, the host compiler); the torch backend evaluates the
// same operations in clr_fused/kernels/low_precision.py and the Triton
// kernels in clr_fused/kernels/triton_update.py, so the backends agree bit
// for bit (tests/test_low_precision.py).
#pragma once

#include <cstdint>

namespace clr_fused {

// ---------------------------------------------------------------- random bits
// Stochastic rounding's bits are a hash of (schedule step, tensor size,
// stream, element index): reproducible, capturable (the step is the device
// counter the kernels already read), no RNG state.  mix32 is an integer
// finaliser (xorshift-multiply); its multipliers are below 2**31 so the torch
// backend can evaluate it in int64 without overflow.
constexpr uint32_t kMixA = 0x7feb352du;
constexpr uint32_t kMixB = 0x297a2d39u;
constexpr uint32_t kGolden = 0x9e3779b9u;

__device__ __forceinline__ uint32_t float_bits(float x) {
#ifdef __CUDACC__
  return __float_as_uint(x);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

__device__ __forceinline__ float bits_float(uint32_t bits) {
#ifdef __CUDACC__
  return __uint_as_float(bits);
#else
  float x;
  __builtin_memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMixA;
  x ^= x >> 15;
  x *= kMixB;
  x ^= x >> 16;
  return x;
}

// Per chunk: one base and one multiplier per stream (0: the parameter, 1 + j:
// state list j), drawn from the tensor's step seed.
struct RandomBits {
  uint32_t base[4];
  uint32_t mul[4];
};

__device__ __forceinline__ RandomBits random_bits(int64_t step, int64_t numel) {
  RandomBits r;
  const uint32_t seed = mix32(static_cast<uint32_t>(step) ^ mix32(static_cast<uint32_t>(numel)));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    r.base[j] = mix32(seed + kGolden * static_cast<uint32_t>(j + 1));
    r.mul[j] = (mix32(seed + kGolden * static_cast<uint32_t>(j + 5)) >> 1) | 1u;
  }
  return r;
}

// The 32 random bits of element i in stream j (index taken modulo 2**32): a
// Weyl sequence, base_j + i * mul_j -- one multiply-add per element, where a
// hash per element (mix32: two multiplies, six shifts and xors) made the
// stochastic-rounding kernels compute-bound on the CPU.  Both base and
// multiplier are drawn afresh each step: with a fixed multiplier two elements'
// bits would stay a fixed offset apart at every step (elements 144 apart, 0.3%
// of the range), so their rounding decisions would repeat together and the
// drift of a parameter would follow a few random numbers per step, not one per
// element (tests/test_low_precision.py: the drift variance).  With a random odd
// multiplier the offset of any two elements is uniform and new each step;
// within a step the sequence stays equidistributed.  The multipliers are odd
// and below 2**31 so the torch backend computes the product in int64 without
// overflow.
__device__ __forceinline__ uint32_t element_bits(const RandomBits& rb, int stream, int64_t i) {
  return rb.base[stream] + static_cast<uint32_t>(i) * rb.mul[stream];
}

// float -> bfloat16 bits, rounded stochastically: the 16 random bits are
// added below the kept mantissa and the sum truncated, so a value rounds up
// with probability (its distance from the lower neighbour) / ulp.  The sum
// never carries out of an infinity's exponent (its low 16 bits are zero), so
// +-inf stays +-inf; a NaN (whose payload could carry) becomes the canonical
// 0x7FC0, as torch's conversion makes it.  Values above the largest bf16 may
// round up to inf (with the probability of their distance to it).
__device__ __forceinline__ uint16_t bf16_bits_stochastic(float x, uint32_t random) {
  const uint32_t sr = (float_bits(x) + (random >> 16)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7FC0u : sr);
}

// ---------------------------------------------------------------- int8 states
// Block-wise quantized state: per block of kQBlock consecutive elements (in
// the tensor's memory order, counted from its own first element, so a block
// never spans two tensors or two FSDP2 shards) one float32 scale, the block's
// largest magnitude, and one 8-bit code per element.  Power maps, closed form
// both ways (vectorisable, no table search):
//   signed (exp_avg, momentum_buffer): int8 q in [-127, 127],
//       x = scale * a * |a|, a = q / 127          (square: finer near 0)
//   unsigned (exp_avg_sq, max_exp_avg_sq): uint8 q in [0, 255],
//       x = scale * a^4, a = q / 255              (4th power: v spans decades;
//       the smallest non-zero is 2.4e-10 * scale, so a v never becomes 0
//       beside a non-zero m, which a linear map does and Adam then divides by eps)
// Encoding rounds to the nearest code of the companded value (q8_encode).  README:
// "Low-precision state" has the measurements behind the choice.
constexpr int64_t kQBlock = 128;  // a warp's 32 lanes x 4 elements on the GPU; 1.03 bytes per element
// The reciprocals as float32 (double 1/127 rounded once, as Python's and Triton's constants).
#define CLR_FUSED_INV127 static_cast<float>(1.0 / 127.0)
#define CLR_FUSED_INV255 static_cast<float>(1.0 / 255.0)

struct Q8 {};  // the state storage tag: codes + scales (the lists after the codes in the tables)

template <bool kSigned>
__device__ __forceinline__ float q8_decode(int32_t q, float scale) {
  if constexpr (kSigned) {
    const float a = static_cast<float>(q) * CLR_FUSED_INV127;
    return (a * fabsf(a)) * scale;
  }
  const float a = static_cast<float>(q) * CLR_FUSED_INV255;
  const float a2 = a * a;
  return (a2 * a2) * scale;
}

// What the encode takes.  The signed map: the value and inv = 1 / scale (0
// for an all-zero block).  The unsigned map: root = sqrt(value) and inv =
// sqrt(1 / scale), its code round(255 * sqrt(root * inv)): the 4th root taken
// as two square roots, of which sqrt(value) is the one Adam's update has just
// taken for its denominator (the compilers compute it once after inlining:
// one square root per element fewer on the CPU, where the int8 step is bound
// by the divide / square-root unit), and sqrt(1 / scale) once per block.
template <bool kSigned>
__device__ __forceinline__ float q8_encode_input(float x) {
  if constexpr (kSigned) return x;
  return sqrtf(x);
}

__device__ __forceinline__ float inverse_scale(float scale) { return scale > 0.0f ? 1.0f / scale : 0.0f; }

template <bool kSigned>
__device__ __forceinline__ float q8_encode_factor(float scale) {
  if constexpr (kSigned) return inverse_scale(scale);
  return sqrtf(inverse_scale(scale));
}

// |x| * inv <= 1 + 2**-23 (root * inv <= 1 + 2**-22), so the rounded code
// never exceeds 127 / 255 by more than the integer clamp catches; the clamp is
// on the integer (a float select is not if-converted by GCC under the default
// -ftrapping-math, and the loop would stay scalar).  A NaN's code is whatever
// the conversion gives: its block's scale is NaN, so it decodes as NaN
// whatever the code.
template <bool kSigned>
__device__ __forceinline__ int32_t q8_encode(float x, float inv) {
  if constexpr (kSigned) {
    int32_t q = static_cast<int32_t>(sqrtf(fabsf(x) * inv) * 127.0f + 0.5f);
    q = q < 127 ? q : 127;
    return x < 0.0f ? -q : q;
  }
  const int32_t q = static_cast<int32_t>(sqrtf(x * inv) * 255.0f + 0.5f);
  return q < 255 ? q : 255;
}

// |x| as ordered integer bits: the block maximum is an integer max (NaN above
// +inf, so a NaN state makes its block's scale NaN, on every backend alike).
__device__ __forceinline__ uint32_t magnitude_bits(float x) { return float_bits(x) & 0x7FFFFFFFu; }

}  // namespace clr_fused
