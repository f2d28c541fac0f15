// Schedule-free AdamW (schedulefree.AdamWScheduleFree), op for op as its
// foreach step: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
// denom = (exp_avg_sq / bias_correction2).sqrt_() + eps; grad.div_(denom);
// grad.add_(y, alpha=wd); y.lerp_(z, ckp1);
// y.add_(grad, alpha=lr * (beta1 * (1 - ckp1) - 1)); z.sub_(grad, alpha=lr).
// The parameter holds y; state lists z and exp_avg_sq.
#pragma once

#include "../algorithm_kernel.cuh"
#include "schedule_free.h"

namespace clr_fused {

struct AdamWScheduleFree {
  static constexpr const char* kName = "AdamWScheduleFree";
  static constexpr int kStates = 2;  // z, exp_avg_sq
  static constexpr int kScalars = 2;  // lr_max, weight_sum
  static constexpr bool kInt8States = false;  // z is an iterate, not a moment (optim/schedule_free.py)

  struct Hyper {
    double beta1, beta2;
    float beta2f, one_minus_beta2, eps, weight_decay;
    ScheduleFreeWeights w;
  };

  // hyper = {beta1, beta2, eps, weight_decay, warmup_steps, r, weight_lr_power}
  static constexpr int kHyper = 7;
  static Hyper from(const double* v) {
    return Hyper{v[0],
                 v[1],
                 static_cast<float>(v[1]),
                 static_cast<float>(1.0 - v[1]),
                 static_cast<float>(v[2]),
                 static_cast<float>(v[3]),
                 {v[4], v[5], v[6]}};
  }

  __device__ __forceinline__ static void finish(const StepInputs& in, const ChunkInfo& c, const Hyper& h) {
    schedule_free_finish(in, c, h.w);
  }

  template <typename P, typename S, bool kFma, bool kSr, bool kWd, bool kSmall>
  __device__ __forceinline__ static void run(const Tables& tb, const ChunkInfo& c, const StatePtrs<S, kStates>& s,
                                             const RandomBits& rb, const Hyper& h, const ScheduleFreeFactors& f,
                                             float bc2) {
    // locals, not the structs' fields: the stores through the state pointers
    // could alias those, which would keep the CPU compiler from vectorising
    const float gm = c.grad_mul, b2 = h.beta2f, omb2 = h.one_minus_beta2, eps = h.eps, wd = h.weight_decay;
    const float coeff = f.coeff, y_lr = f.y_lr, neg_lr = f.neg_lr;
    for_each_element<P, S, kStates, kSr>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                                         rb, [&](float& y, float g, float* st) {
                                           g = g * gm;
                                           // addcmul_: fma(value * t1, t2, self) where torch's kernels fuse
                                           const float v = madd<kFma>(omb2 * g, g, st[1] * b2);
                                           st[1] = v;
                                           g = g / (sqrtf(v / bc2) + eps);
                                           if constexpr (kWd) g = madd<kFma>(y, wd, g);
                                           schedule_free_yz<kFma, kSmall>(y, st[0], g, coeff, y_lr, neg_lr);
                                         });
  }

  template <typename P, typename S, bool kFma, bool kSr>
  __device__ __forceinline__ static void chunk(const Tables& tb, const StepInputs& in, const ChunkInfo& c,
                                               const StatePtrs<S, kStates>& s, const RandomBits& rb, const Hyper& h) {
    const ScheduleFreeFactors f = schedule_free_factors(schedule_free_step(in, c, h.w), h.beta1);
    // 1 - beta2 ** (k + 1), in float64; torch's div_ by the Python float rounds it to float32
    const float bc2 = static_cast<float>(1.0 - pow(h.beta2, static_cast<double>(c.k) + 1.0));
    schedule_free_loops(h.weight_decay != 0.f, f.small, [&](auto wd, auto small) {
      run<P, S, kFma, kSr, decltype(wd)::value, decltype(small)::value>(tb, c, s, rb, h, f, bc2);
    });
  }
};

}  // namespace clr_fused
