// The CUDA kernels of the two ops: launchers of fused_kernels.cuh for every
// (parameter, state) storage type, registered with the dispatcher.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "step_entry.h"

namespace clr_fused {

namespace {

template <typename P, typename S>
struct SgdLaunch {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    sgd_variant<P, S>(h, [&](auto ns, auto sr) {
      sgd_kernel<P, S, decltype(ns)::value, kDeviceFma, decltype(sr)::value><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(tb, in, h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

template <typename P, typename S>
struct AdamLaunch {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
    adam_variant<P, S>(h, [&](auto ns, auto sr) {
      adam_kernel<P, S, decltype(ns)::value, kDeviceFma, decltype(sr)::value><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(tb, in, h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

// The generic step (algorithm_kernel.cuh) of algorithm A on the GPU.
template <typename A>
struct CudaAlgorithm {
  template <typename P, typename S>
  struct On {
    static void run(unsigned grid, const Tables& tb, const StepInputs& in, const typename A::Hyper& h, bool stochastic) {
      algorithm_variant<A, P, S>(stochastic, [&](auto sr) {
        algorithm_kernel<A, P, S, kDeviceFma, decltype(sr)::value><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(tb, in, h);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  };
};

void step_cuda(CLR_FUSED_STEP_PARAMS) {
  TORCH_CHECK(counter.is_cuda(), "clr_fused CUDA kernels need CUDA tensors");
  const c10::cuda::CUDAGuard guard(counter.device());
  algorithm_step_impl<CudaAlgorithm>(CLR_FUSED_STEP_NAMES);
}

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
  m.impl("step", &clr_fused::step_cuda);
}
