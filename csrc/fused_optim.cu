// The CUDA kernels of the two ops: launchers of fused_kernels.cuh for every
// (parameter, state) storage type, registered with the dispatcher.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "step_entry.h"

namespace clr_fused {

namespace {

// Stochastic-rounding variants only where a store is bfloat16.
template <typename P, typename S>
constexpr bool kCanRoundStochastically = StochasticStorage<P>::kApplies || StochasticStorage<S>::kApplies;

template <typename P, typename S>
struct SgdLaunch {
  template <int NS, bool kSr>
  static void go(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    sgd_kernel<P, S, NS, kDeviceFma, kSr><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(tb, in, h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    if constexpr (std::is_same_v<S, Q8>) {
      TORCH_CHECK(h.use_momentum, "sgd_step: int8 states need momentum");
    }
    constexpr int kNs0 = std::is_same_v<S, Q8> ? 1 : 0;
    if constexpr (kCanRoundStochastically<P, S>) {
      if (h.stochastic) return h.use_momentum ? go<1, true>(grid, tb, in, h) : go<kNs0, true>(grid, tb, in, h);
    }
    return h.use_momentum ? go<1, false>(grid, tb, in, h) : go<kNs0, false>(grid, tb, in, h);
  }
};

template <typename P, typename S>
struct AdamLaunch {
  template <int NS, bool kSr>
  static void go(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
    adam_kernel<P, S, NS, kDeviceFma, kSr><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(tb, in, h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
    if constexpr (kCanRoundStochastically<P, S>) {
      if (h.stochastic) return h.amsgrad ? go<3, true>(grid, tb, in, h) : go<2, true>(grid, tb, in, h);
    }
    return h.amsgrad ? go<3, false>(grid, tb, in, h) : go<2, false>(grid, tb, in, h);
  }
};

void sgd_step_cuda(CLR_FUSED_SGD_PARAMS) {
  TORCH_CHECK(counter.is_cuda(), "clr_fused CUDA kernels need CUDA tensors");
  const c10::cuda::CUDAGuard guard(counter.device());
  sgd_step_impl<SgdLaunch>(CLR_FUSED_SGD_NAMES);
}

void adam_step_cuda(CLR_FUSED_ADAM_PARAMS) {
  TORCH_CHECK(counter.is_cuda(), "clr_fused CUDA kernels need CUDA tensors");
  const c10::cuda::CUDAGuard guard(counter.device());
  adam_step_impl<AdamLaunch>(CLR_FUSED_ADAM_NAMES);
}

}  // namespace

}  // namespace clr_fused

TORCH_LIBRARY_IMPL(clr_fused, CUDA, m) {
  m.impl("sgd_step", &clr_fused::sgd_step_cuda);
  m.impl("adam_step", &clr_fused::adam_step_cuda);
}
