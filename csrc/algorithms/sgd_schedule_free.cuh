// Schedule-free SGD (schedulefree.SGDScheduleFree), op for op as its foreach
// step: grad.add_(y, alpha=wd); y.lerp_(z, ckp1);
// y.add_(grad, alpha=lr * (momentum * (1 - ckp1) - 1)); z.sub_(grad, alpha=lr).
// The parameter holds y; one state list, z.
#pragma once

#include "../algorithm_kernel.cuh"
#include "schedule_free.h"

namespace clr_fused {

struct SGDScheduleFree {
  static constexpr const char* kName = "SGDScheduleFree";
  static constexpr int kStates = 1;  // z
  static constexpr int kScalars = 2;  // lr_max, weight_sum
  static constexpr bool kInt8States = false;  // z is an iterate, not a moment (optim/schedule_free.py)

  struct Hyper {
    double momentum;
    float weight_decay;
    ScheduleFreeWeights w;
  };

  // hyper = {momentum, weight_decay, warmup_steps, r, weight_lr_power}
  static constexpr int kHyper = 5;
  static Hyper from(const double* v) { return Hyper{v[0], static_cast<float>(v[1]), {v[2], v[3], v[4]}}; }

  __device__ __forceinline__ static void finish(const StepInputs& in, const ChunkInfo& c, const Hyper& h) {
    schedule_free_finish(in, c, h.w);
  }

  template <typename P, typename S, bool kFma, bool kSr, bool kWd, bool kSmall>
  __device__ __forceinline__ static void run(const Tables& tb, const ChunkInfo& c, const StatePtrs<S, kStates>& s,
                                             const RandomBits& rb, const ScheduleFreeFactors& f, float wd) {
    const float gm = c.grad_mul, coeff = f.coeff, y_lr = f.y_lr, neg_lr = f.neg_lr;  // locals: see adamw_schedule_free.cuh
    for_each_element<P, S, kStates, kSr>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                                         rb, [&](float& y, float g, float* st) {
                                           g = g * gm;
                                           if constexpr (kWd) g = madd<kFma>(y, wd, g);
                                           schedule_free_yz<kFma, kSmall>(y, st[0], g, coeff, y_lr, neg_lr);
                                         });
  }

  template <typename P, typename S, bool kFma, bool kSr>
  __device__ __forceinline__ static void chunk(const Tables& tb, const StepInputs& in, const ChunkInfo& c,
                                               const StatePtrs<S, kStates>& s, const RandomBits& rb, const Hyper& h) {
    const ScheduleFreeFactors f = schedule_free_factors(schedule_free_step(in, c, h.w), h.momentum);
    schedule_free_loops(h.weight_decay != 0.f, f.small, [&](auto wd, auto small) {
      run<P, S, kFma, kSr, decltype(wd)::value, decltype(small)::value>(tb, c, s, rb, f, h.weight_decay);
    });
  }
};

}  // namespace clr_fused
