// Fused SGD-momentum and Adam/AdamW kernels on the generic multi-tensor
// launcher, with the schedule evaluated in-kernel from the device step counter.
// Templated on the parameter storage type P (float, BFloat16, Half), the
// state storage S (P, float, BFloat16, or Q8: block-quantized 8-bit codes,
// low_precision.cuh) and kSr (bfloat16 stores round stochastically); math is
// float32, one rounding at the end.
// Header only: nvcc compiles it for the GPU (fused_optim.cu), the host compiler
// for the CPU backend (cpu_ops.cpp) and the ThreadSanitizer test (tests/cpp/).
#pragma once

#include <type_traits>

#include "multi_tensor.cuh"

namespace clr_fused {

// torch's own CPU kernels round a * b + c once (a fused multiply-add) in their
// AVX2 / AVX-512 builds -- Vectorized::fmadd in lerp_, addcmul_ and
// add(..., alpha) -- and twice in their DEFAULT build; nvcc fuses too.  kFma
// says which a copy of a kernel does, so that each copy rounds as torch's
// for-loop step does at the same CPU capability (cpu_ops.cpp picks it per
// ISA; tests/test_cpu_backend.py compares each with torch, bit for bit).
#ifdef __CUDACC__
constexpr bool kDeviceFma = true;
#else
constexpr bool kDeviceFma = false;
#endif

template <bool kFma>
__device__ __forceinline__ float madd(float a, float b, float c) {
  if constexpr (kFma) {
#ifdef __CUDACC__
    return __fmaf_rn(a, b, c);
#else
    return __builtin_fmaf(a, b, c);  // vfmadd in the copies built for FMA (cpu_ops.cpp)
#endif
  } else {
    return a * b + c;  // two roundings: built with -ffp-contract=off
  }
}

struct SgdHyper {
  float momentum, one_minus_dampening, weight_decay;  // complements taken in double on the host
  bool use_momentum, nesterov, maximize;
  bool stochastic;  // bfloat16 stores round stochastically (the launcher picks kSr from it)
  const int8_t* fresh;  // [T]: momentum buffer created this step
};

// torch.optim.SGD's for-loop step, op for op: grad.add(param, alpha=wd),
// buf.mul_(momentum).add_(grad, alpha=1 - dampening), grad.add(buf,
// alpha=momentum) (nesterov), param.add_(grad, alpha=-lr).  Weight decay,
// Nesterov and a warm (not fresh) buffer are fixed for a block: one element
// loop per combination, so the loop has no branch (a conditional fused
// multiply-add keeps GCC from if-converting, hence vectorising, it).
// __forceinline__ functions, not lambdas: the CPU build's ISA copies
// (`flatten`) must inline every one of them.
template <typename P, typename S, int NS, bool kFma, bool kSr, bool kWd, bool kNesterov, bool kWarm>
__device__ __forceinline__ void sgd_chunk(const Tables& tb, const ChunkInfo& c, const SgdHyper& h, const StatePtrs<S, NS>& s,
                                          const RandomBits& rb, float mom, float gm, float neg_lr) {
  for_each_element<P, S, NS, kSr>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end, rb,
                             [&](float& p, float g, float* st) {
                               float d = g * gm;
                               if constexpr (kWd) d = madd<kFma>(p, h.weight_decay, d);
                               if constexpr (NS > 0) {
                                 // torch starts the buffer at the first gradient, undamped
                                 float b = d;
                                 if constexpr (kWarm) b = madd<kFma>(d, h.one_minus_dampening, st[0] * mom);
                                 st[0] = b;
                                 if constexpr (kNesterov) {
                                   d = madd<kFma>(b, mom, d);
                                 } else {
                                   d = b;
                                 }
                               }
                               p = madd<kFma>(d, neg_lr, p);
                             });
}

template <typename P, typename S, int NS, bool kFma, bool kSr, bool kWd>
__device__ __forceinline__ void sgd_chunk_momentum(bool nesterov, bool warm, const Tables& tb, const ChunkInfo& c,
                                                   const SgdHyper& h, const StatePtrs<S, NS>& s, const RandomBits& rb,
                                                   float mom, float gm, float neg_lr) {
  if constexpr (NS == 0) {
    sgd_chunk<P, S, NS, kFma, kSr, kWd, false, false>(tb, c, h, s, rb, mom, gm, neg_lr);
  } else if (nesterov) {
    if (warm) {
      sgd_chunk<P, S, NS, kFma, kSr, kWd, true, true>(tb, c, h, s, rb, mom, gm, neg_lr);
    } else {
      sgd_chunk<P, S, NS, kFma, kSr, kWd, true, false>(tb, c, h, s, rb, mom, gm, neg_lr);
    }
  } else if (warm) {
    sgd_chunk<P, S, NS, kFma, kSr, kWd, false, true>(tb, c, h, s, rb, mom, gm, neg_lr);
  } else {
    sgd_chunk<P, S, NS, kFma, kSr, kWd, false, false>(tb, c, h, s, rb, mom, gm, neg_lr);
  }
}

// Per chunk: stochastic rounding's stream bases (schedule step, tensor size).
template <bool kSr>
__device__ __forceinline__ RandomBits chunk_bits(const Tables& tb, const ChunkInfo& c) {
  if constexpr (kSr) {
    return random_bits(c.k, tb.numels[c.t]);
  } else {
    return RandomBits{};
  }
}

template <typename P, typename S, int NS, bool kFma = kDeviceFma, bool kSr = false>
__global__ void __launch_bounds__(kThreads) sgd_kernel(Tables tb, StepInputs in, SgdHyper h) {
  const ChunkInfo c = chunk_info(tb, in);
  if (!c.skipped) {
    // torch's buf.mul_(momentum) and add_(grad, alpha=-lr) round their double scalars to float32
    const float mom = in.mom != nullptr ? static_cast<float>(c.mom) : h.momentum;
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    const bool warm = h.fresh[c.t] == 0;
    const float neg_lr = static_cast<float>(-c.lr);
    const StatePtrs<S, NS> s = state_ptrs<S, NS>(tb, c.t);
    const RandomBits rb = chunk_bits<kSr>(tb, c);
    if (h.weight_decay != 0.f) {
      sgd_chunk_momentum<P, S, NS, kFma, kSr, true>(h.nesterov, warm, tb, c, h, s, rb, mom, gm, neg_lr);
    } else {
      sgd_chunk_momentum<P, S, NS, kFma, kSr, false>(h.nesterov, warm, tb, c, h, s, rb, mom, gm, neg_lr);
    }
  }
  if (needs_last_block(in) && last_block(in.ticket)) finish_step(in, c);
}

struct AdamHyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;  // complements taken in double
  double beta1_exact, beta2_exact, weight_decay_exact;  // as given: torch's scalar math is float64
  bool decoupled, maximize, amsgrad;
  bool stochastic;  // as SgdHyper's
  const int64_t* steps;  // [T] addresses of the float32 per-tensor step counts
  // tensor betas (torch's capturable idiom): {beta1, 1 - beta1, beta2, 1 - beta2}
  // read on the device every launch, complements taken in double there; nullptr: the floats above
  const float* betas;
  // torch's fused CPU Adam runs its vector body over the first n - n % V
  // elements of a tensor (V: its Vectorized<float> width, 16 on AVX-512, 8 on
  // AVX2) and a scalar loop over the rest, which its compiler contracts
  // differently (exp_avg_sq: fma(v, beta2, (1 - beta2) * g * g) there,
  // fma((1 - beta2) * g, g, v * beta2) in the body).  The CPU build's FMA copies
  // round each element as the loop torch runs it in (cpu_ops.cpp sets V from
  // torch's CPU capability); 0: one form for every element (the GPU).
  int64_t torch_tail_vec = 0;
};

// torch.optim.Adam / AdamW's for-loop step, op for op: param.mul_(1 - lr *
// wd) or grad.add(param, alpha=wd); exp_avg.lerp_(grad, 1 - beta1);
// exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); the bias
// corrections, step size and sqrt(bias_correction2) in float64;
// denom = sqrt(v) / bc2_sqrt + eps; param.addcdiv_(exp_avg, denom,
// value=-step_size).  (torch's CPU sqrt is MKL's, not always correctly
// rounded: the one op not matched; see the README.)
template <typename P, typename S, int NS, bool kFma = kDeviceFma, bool kSr = false>  // NS = 2 (m, v) or 3 (max_v: amsgrad)
__global__ void __launch_bounds__(kThreads) adam_kernel(Tables tb, StepInputs in, AdamHyper h) {
  const int64_t* steps = h.steps;
  const ChunkInfo c = chunk_info(tb, in);
  const bool dev = h.betas != nullptr;
  const float beta2 = dev ? h.betas[2] : h.beta2, one_minus_beta2 = dev ? h.betas[3] : h.one_minus_beta2;
  const bool cycled = in.mom != nullptr;
  const float b1 = cycled ? static_cast<float>(c.mom) : dev ? h.betas[0] : h.beta1;
  const float one_minus_b1 = cycled ? static_cast<float>(1.0 - c.mom) : dev ? h.betas[1] : h.one_minus_beta1;
  const float step = *reinterpret_cast<const float*>(steps[c.t]) + 1.f;
  if (!c.skipped) {
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    // Once per block, in float64 as torch's Python scalars: then one rounding each.
    const double b1d = cycled ? c.mom : dev ? static_cast<double>(b1) : h.beta1_exact;
    const double b2d = dev ? static_cast<double>(beta2) : h.beta2_exact;
    const double lr = c.lr;  // torch's double: step size and decay from it, then one rounding each
    const double bc1 = 1.0 - pow(b1d, static_cast<double>(step));
    const float bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(b2d, static_cast<double>(step))));
    const float neg_step_size = static_cast<float>(-(lr / bc1));
    const float decay = static_cast<float>(1.0 - lr * h.weight_decay_exact);
    // lerp_'s two forms, chosen by the weight (uniform over the launch): one
    // multiply-add from a base, so the loop has a select, not a branch.
    const float w = one_minus_b1;
    const bool small_w = fabsf(w) < 0.5f;
    const float coeff = small_w ? w : w - 1.f;
    const StatePtrs<S, NS> s = state_ptrs<S, NS>(tb, c.t);
    const RandomBits rb = chunk_bits<kSr>(tb, c);
    // The weight-decay mode is fixed for the launch: one loop per mode, so the
    // element loop has no branch (the CPU compiler vectorises it).
    // torch's scalar tail (torch_tail_vec): plain float32 states, the CPU build's FMA copies only
    constexpr bool kTorchTail = kFma && !kDeviceFma && std::is_same_v<P, float> && std::is_same_v<S, float>;
    const int64_t n = tb.numels[c.t];
    const int64_t tail = kTorchTail && h.torch_tail_vec > 0 ? n - n % h.torch_tail_vec : n;
    const int64_t mid = c.end < tail ? c.end : (c.start > tail ? c.start : tail);
    const auto update = [&](auto wd_mode, auto tail_form, int64_t from, int64_t to) {
      constexpr int kMode = decltype(wd_mode)::value;  // 0: none, 1: decoupled (AdamW), 2: L2 (Adam)
      constexpr bool kTail = decltype(tail_form)::value;
      for_each_element<P, S, NS, kSr>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, from, to, rb,
                                      [&](float& p, float g, float* st) {
                                   g = g * gm;
                                   if constexpr (kMode == 1) p = p * decay;
                                   if constexpr (kMode == 2) g = madd<kFma>(p, h.weight_decay, g);
                                   const float m = madd<kFma>(coeff, g - st[0], small_w ? st[0] : g);
                                   float v = kTail ? madd<kFma>(st[1], beta2, (one_minus_beta2 * g) * g)
                                                   : madd<kFma>(one_minus_beta2 * g, g, st[1] * beta2);
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
                                   p = p + (neg_step_size * m) / denom;
                                 });
    };
    const auto both = [&](auto wd_mode) {
      update(wd_mode, std::false_type{}, c.start, mid);
      if constexpr (kTorchTail) {
        if (mid < c.end) update(wd_mode, std::true_type{}, mid, c.end);
      }
    };
    if (h.weight_decay == 0.f) {
      both(std::integral_constant<int, 0>{});
    } else if (h.decoupled) {
      both(std::integral_constant<int, 1>{});
    } else {
      both(std::integral_constant<int, 2>{});
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
