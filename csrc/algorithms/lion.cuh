// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as
// lion_pytorch.Lion computes it, op for op:
//   p.mul_(1 - lr * wd); c = exp_avg * beta1 + grad * (1 - beta1);
//   p.add_(sign(c), alpha=-lr); exp_avg = exp_avg * beta2 + grad * (1 - beta2)
// (torch's add(..., alpha) is one fused multiply-add at AVX2 / AVX-512 and on
// the GPU: madd<kFma>).  One state list, exp_avg (signed int8 map).
#pragma once

#include <cmath>

#include "../algorithm_kernel.cuh"

namespace clr_fused {

struct Lion {
  static constexpr const char* kName = "Lion";
  static constexpr int kStates = 1;
  static constexpr bool kInt8States = true;
  static constexpr int kScalars = 0;  // no per-group running scalars

  struct Hyper {
    float beta1, one_minus_beta1, beta2, one_minus_beta2;  // complements taken in double on the host
    double weight_decay;  // the decay factor 1 - lr * wd is computed in double, as lion_pytorch's Python float
  };

  // hyper = {beta1, beta2, weight_decay}
  static constexpr int kHyper = 3;
  static Hyper from(const double* v) {
    return Hyper{static_cast<float>(v[0]), static_cast<float>(1.0 - v[0]), static_cast<float>(v[1]),
                 static_cast<float>(1.0 - v[1]), v[2]};
  }

  template <typename P, typename S, bool kFma, bool kSr, bool kWd>
  __device__ __forceinline__ static void run(const Tables& tb, const ChunkInfo& c, const StatePtrs<S, kStates>& s,
                                             const RandomBits& rb, float b1, float omb1, float b2, float omb2,
                                             float decay, float neg_lr) {
    const float gm = c.grad_mul;
    for_each_element<P, S, kStates, kSr>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                                         rb, [&](float& p, float g, float* st) {
                                           g = g * gm;
                                           if constexpr (kWd) p = p * decay;
                                           const float u = madd<kFma>(g, omb1, st[0] * b1);
                                           // sign(u): 0 stays 0 (its sign too) and NaN stays NaN, as torch.sgn;
                                           // one select, no compare-to-constant pair (GCC left the baseline copy scalar)
                                           const float pm = copysignf(1.f, u);
                                           const float sgn = ((u == 0.f) | (u != u)) ? u : pm;
                                           p = madd<kFma>(sgn, neg_lr, p);
                                           st[0] = madd<kFma>(g, omb2, st[0] * b2);
                                         });
  }

  __device__ __forceinline__ static void finish(const StepInputs&, const ChunkInfo&, const Hyper&) {}

  template <typename P, typename S, bool kFma, bool kSr>
  __device__ __forceinline__ static void chunk(const Tables& tb, const StepInputs& in, const ChunkInfo& c,
                                               const StatePtrs<S, kStates>& s, const RandomBits& rb, const Hyper& h) {
    // a cycled beta1 (CyclicLR / OneCycleLR cycle_momentum): the live value, its complement in double
    const bool cycled = in.mom != nullptr;
    const float b1 = cycled ? static_cast<float>(c.mom) : h.beta1;
    const float omb1 = cycled ? static_cast<float>(1.0 - c.mom) : h.one_minus_beta1;
    const float neg_lr = static_cast<float>(-c.lr);  // torch's add_(alpha=-lr) rounds the double to float32
    const float decay = static_cast<float>(1.0 - c.lr * h.weight_decay);
    if (h.weight_decay != 0.0) {
      run<P, S, kFma, kSr, true>(tb, c, s, rb, b1, omb1, h.beta2, h.one_minus_beta2, decay, neg_lr);
    } else {
      run<P, S, kFma, kSr, false>(tb, c, s, rb, b1, omb1, h.beta2, h.one_minus_beta2, decay, neg_lr);
    }
  }
};

}  // namespace clr_fused
