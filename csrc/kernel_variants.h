// Which instantiation of a kernel a step runs, for a (parameter, state)
// storage pair and the step's flags: one definition for the CUDA launcher
// (fused_optim.cu), the CPU launcher (cpu_ops.cpp) and the CUDA emulator
// (tests/gpu_sim/), so the emulator runs exactly the variants the GPU build
// registers.  go(std::integral_constant<int, NS>, std::bool_constant<kSr>)
// launches the kernel with NS state lists and stochastic rounding kSr.
#pragma once

#include <type_traits>

#include "fused_kernels.cuh"

namespace clr_fused {

// Stochastic-rounding variants only where a store is bfloat16.
template <typename P, typename S>
constexpr bool kCanRoundStochastically = StochasticStorage<P>::kApplies || StochasticStorage<S>::kApplies;

template <int N>
using NumStates = std::integral_constant<int, N>;

// SGD: a momentum buffer or none.  int8 states always have one (the op
// refuses int8 without momentum before it gets here).
template <typename P, typename S, typename Go>
void sgd_variant(const SgdHyper& h, const Go& go) {
  constexpr int kNs0 = std::is_same_v<S, Q8> ? 1 : 0;
  if constexpr (kCanRoundStochastically<P, S>) {
    if (h.stochastic) return h.use_momentum ? go(NumStates<1>{}, std::true_type{}) : go(NumStates<kNs0>{}, std::true_type{});
  }
  return h.use_momentum ? go(NumStates<1>{}, std::false_type{}) : go(NumStates<kNs0>{}, std::false_type{});
}

// Adam / AdamW: m, v, and max_v with amsgrad.
template <typename P, typename S, typename Go>
void adam_variant(const AdamHyper& h, const Go& go) {
  if constexpr (kCanRoundStochastically<P, S>) {
    if (h.stochastic) return h.amsgrad ? go(NumStates<3>{}, std::true_type{}) : go(NumStates<2>{}, std::true_type{});
  }
  return h.amsgrad ? go(NumStates<3>{}, std::false_type{}) : go(NumStates<2>{}, std::false_type{});
}

// The generic step (algorithm_kernel.cuh): the stochastic-rounding copy or
// not.  An algorithm whose states cannot be int8 codes (A::kInt8States false:
// step_entry.h refuses them before this) has no int8 kernel at all.
template <typename A, typename P, typename S, typename Go>
void algorithm_variant(bool stochastic, const Go& go) {
  if constexpr (std::is_same_v<S, Q8> && !A::kInt8States) {
    return;
  } else {
    if constexpr (kCanRoundStochastically<P, S>) {
      if (stochastic) return go(std::true_type{});
    }
    return go(std::false_type{});
  }
}

}  // namespace clr_fused
