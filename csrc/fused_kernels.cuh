// Fused SGD-momentum and Adam/AdamW kernels on the generic multi-tensor
// launcher, with the schedule evaluated in-kernel from the device step counter.
// Templated on the parameter storage type P (float, BFloat16, Half) and the
// state storage type S (P or float); math is float32, one rounding at the end.
// Header only: nvcc compiles it for the GPU (fused_optim.cu), the host compiler
// for the CPU backend (cpu_ops.cpp) and the ThreadSanitizer test (tests/cpp/).
#pragma once

#include <type_traits>

#include "multi_tensor.cuh"

namespace clr_fused {

struct SgdHyper {
  float momentum, one_minus_dampening, weight_decay;  // complements taken in double on the host
  bool use_momentum, nesterov, maximize;
  const int8_t* fresh;  // [T]: momentum buffer created this step
};

template <typename P, typename S, int NS>
__global__ void __launch_bounds__(kThreads) sgd_kernel(Tables tb, StepInputs in, SgdHyper h) {
  const ChunkInfo c = chunk_info(tb, in);
  if (!c.skipped) {
    const float mom = in.mom != nullptr ? c.mom : h.momentum;
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    const bool fresh = h.fresh[c.t] != 0;
    const float lr = c.lr;
    S* s[NS > 0 ? NS : 1] = {NS > 0 ? addr<S>(tb.addrs[2], c.t) : nullptr};
    for_each_element<P, S, NS>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                               [&](float& p, float g, float* st) {
                                 float d = g * gm;
                                 if (h.weight_decay != 0.f) d += h.weight_decay * p;
                                 if constexpr (NS > 0) {
                                   // torch starts the buffer at the first gradient, undamped
                                   float b = fresh ? d : st[0] * mom + h.one_minus_dampening * d;
                                   st[0] = b;
                                   d = h.nesterov ? d + b * mom : b;
                                 }
                                 p = p - d * lr;
                               });
  }
  if (needs_last_block(in) && last_block(in.ticket)) finish_step(in, c);
}

struct AdamHyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;  // complements taken in double
  bool decoupled, maximize, amsgrad;
  const int64_t* steps;  // [T] addresses of the float32 per-tensor step counts
  // tensor betas (torch's capturable idiom): {beta1, 1 - beta1, beta2, 1 - beta2}
  // read on the device every launch, complements taken in double there; nullptr: the floats above
  const float* betas;
};

template <typename P, typename S, int NS>  // NS = 2 (m, v) or 3 (with max_v: amsgrad)
__global__ void __launch_bounds__(kThreads) adam_kernel(Tables tb, StepInputs in, AdamHyper h) {
  const int64_t* steps = h.steps;
  const ChunkInfo c = chunk_info(tb, in);
  const bool dev = h.betas != nullptr;
  const float beta2 = dev ? h.betas[2] : h.beta2, one_minus_beta2 = dev ? h.betas[3] : h.one_minus_beta2;
  const bool cycled = in.mom != nullptr;
  const float b1 = cycled ? c.mom : dev ? h.betas[0] : h.beta1;
  const float one_minus_b1 = cycled ? 1.f - c.mom : dev ? h.betas[1] : h.one_minus_beta1;
  const float step = *reinterpret_cast<const float*>(steps[c.t]) + 1.f;
  if (!c.skipped) {
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    const float lr = c.lr;
    const float bc1 = 1.f - exp2f(step * log2f(b1));
    const float bc2_sqrt = sqrtf(1.f - exp2f(step * log2f(beta2)));
    const float step_size = lr / bc1;
    S* s[NS];
    s[0] = addr<S>(tb.addrs[2], c.t);
    s[1] = addr<S>(tb.addrs[3], c.t);
    if constexpr (NS == 3) s[2] = addr<S>(tb.addrs[4], c.t);
    // The weight-decay mode is fixed for the launch: one loop per mode, so the
    // element loop has no branch (the CPU compiler vectorises it).
    const auto update = [&](auto wd_mode) {
      constexpr int kMode = decltype(wd_mode)::value;  // 0: none, 1: decoupled (AdamW), 2: L2 (Adam)
      for_each_element<P, S, NS>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                                 [&](float& p, float g, float* st) {
                                   g = g * gm;
                                   if constexpr (kMode == 1) p = p * (1.f - lr * h.weight_decay);
                                   if constexpr (kMode == 2) g = g + h.weight_decay * p;
                                   const float m = st[0] * b1 + g * one_minus_b1;
                                   float v = st[1] * beta2 + one_minus_beta2 * g * g;
                                   st[0] = m;
                                   st[1] = v;
                                   if constexpr (NS == 3) {
                                     // torch.maximum: NaN wins (fmaxf would drop it); also a
                                     // compare + select the CPU compiler vectorises.
                                     const float vmax = st[NS - 1];
                                     v = (vmax != vmax || vmax > v) ? vmax : v;
                                     st[NS - 1] = v;
                                   }
                                   const float denom = sqrtf(v) / bc2_sqrt + h.eps;
                                   p = p - m / denom * step_size;
                                 });
    };
    if (h.weight_decay == 0.f) {
      update(std::integral_constant<int, 0>{});
    } else if (h.decoupled) {
      update(std::integral_constant<int, 1>{});
    } else {
      update(std::integral_constant<int, 2>{});
    }
  }
  // The last block advances every tensor's step (and the schedule counter).
  if (last_block(in.ticket)) {
    if (!c.skipped) {
      for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
        float* sp = reinterpret_cast<float*>(steps[t]);
        *sp = *sp + 1.f;
      }
    }
    finish_step(in, c);
  }
}

}  // namespace clr_fused
