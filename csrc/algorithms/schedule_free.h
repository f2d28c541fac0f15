// Schedule-free learning (Defazio et al. 2024, "The Road Less Scheduled"), as
// the `schedulefree` package computes it: the per-step scalars of both
// schedule-free algorithms, in float64 as its Python floats, evaluated by
// every block from the step counter, the live LR and the group's running
// scalars {lr_max, weight_sum} (StepInputs::scalars; the last block of the
// group's last launch writes the new ones, ScheduleFreeScalars::finish).
#pragma once

#include <cmath>
#include <type_traits>

#include "../fused_kernels.cuh"  // madd, and the launcher (multi_tensor.cuh)

namespace clr_fused {

struct ScheduleFreeWeights {
  double warmup_steps, r, weight_lr_power;
};

struct ScheduleFreeStep {
  double lr;  // group lr * linear warm-up
  double lr_max, weight_sum;  // the running scalars after this step
  double ckp1;  // weight / weight_sum: the averaging weight of this step
};

// schedulefree's step(), before its tensor ops:
//   sched = (k + 1) / warmup_steps if k < warmup_steps else 1; lr = group lr * sched
//   lr_max = max(lr, lr_max); weight = (k + 1)**r * lr_max**weight_lr_power
//   weight_sum += weight; ckp1 = weight / weight_sum (0 when weight_sum is 0)
__device__ __forceinline__ ScheduleFreeStep schedule_free_step(const StepInputs& in, const ChunkInfo& c,
                                                               const ScheduleFreeWeights& w) {
  ScheduleFreeStep s;
  const double k1 = static_cast<double>(c.k) + 1.0;
  const double sched = static_cast<double>(c.k) < w.warmup_steps ? k1 / w.warmup_steps : 1.0;
  s.lr = c.lr * sched;
  const double old_max = in.scalars[0];
  s.lr_max = old_max > s.lr ? old_max : s.lr;  // Python's max(lr, lr_max)
  const double weight = pow(k1, w.r) * pow(s.lr_max, w.weight_lr_power);
  s.weight_sum = in.scalars[1] + weight;
  s.ckp1 = s.weight_sum != 0.0 ? weight / s.weight_sum : 0.0;
  return s;
}

__device__ __forceinline__ void schedule_free_finish(const StepInputs& in, const ChunkInfo& c,
                                                     const ScheduleFreeWeights& w) {
  const ScheduleFreeStep s = schedule_free_step(in, c, w);
  in.scalars[0] = s.lr_max;
  in.scalars[1] = s.weight_sum;
}

// The interpolation y <- lerp(y, z, ckp1) as torch's lerp_ (a float32 weight;
// one multiply-add from a base, the form chosen by |weight| < 0.5) and the
// float32 factors of the y and z updates.
struct ScheduleFreeFactors {
  float coeff;  // weight or weight - 1
  bool small;  // base y (small weight) or z
  float y_lr;  // float32(lr * (beta * (1 - ckp1) - 1)): y.add_(grad, alpha=...)
  float neg_lr;  // float32(-lr): z.sub_(grad, alpha=lr)
};

__device__ __forceinline__ ScheduleFreeFactors schedule_free_factors(const ScheduleFreeStep& s, double beta) {
  ScheduleFreeFactors f;
  const float w = static_cast<float>(s.ckp1);
  f.small = fabsf(w) < 0.5f;
  f.coeff = f.small ? w : w - 1.f;
  f.y_lr = static_cast<float>(s.lr * (beta * (1.0 - s.ckp1) - 1.0));
  f.neg_lr = static_cast<float>(-s.lr);
  return f;
}

// One element's y and z after its gradient step direction g (weight decay
// included): y.lerp_(z, ckp1); y.add_(g, alpha=y_lr); z.sub_(g, alpha=lr),
// each rounded as torch's op (kSmall: the lerp's form, from |ckp1| < 0.5).
template <bool kFma, bool kSmall>
__device__ __forceinline__ void schedule_free_yz(float& y, float& z, float g, float coeff, float y_lr, float neg_lr) {
  const float z0 = z;
  y = madd<kFma>(coeff, z0 - y, kSmall ? y : z0);
  y = madd<kFma>(g, y_lr, y);
  z = madd<kFma>(g, neg_lr, z0);
}

// Weight decay and the lerp's form are uniform over a launch: one element
// loop for each combination, with no select on them inside (GCC does not
// vectorise a loop that selects on a uniform bool).  Calls
// loop(std::bool_constant<weight decay>, std::bool_constant<small weight>).
template <typename Loop>
__device__ __forceinline__ void schedule_free_loops(bool weight_decay, bool small, const Loop& loop) {
  if (weight_decay && small) {
    loop(std::true_type{}, std::true_type{});
  } else if (weight_decay) {
    loop(std::true_type{}, std::false_type{});
  } else if (small) {
    loop(std::false_type{}, std::true_type{});
  } else {
    loop(std::false_type{}, std::false_type{});
  }
}

}  // namespace clr_fused
