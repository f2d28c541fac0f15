// Runs the CUDA kernels of fused_kernels.cuh on the CPU, for tests on machines
// without a GPU: the CUDA keywords become plain C++, each block runs with one
// thread, and blocks run one after another (so the last block to draw a
// ticket is the last one).  Same entry points and argument packing as the
// real extension (step_entry.h).  Built only by the tests.
#include <cmath>
#include <cstdint>

namespace clr_fused_emulation {
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
}  // namespace clr_fused_emulation

inline clr_fused_emulation::Dim3 threadIdx, blockIdx, blockDim{1, 1, 1}, gridDim{1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
inline void __syncthreads() {}
inline void __threadfence() {}
inline int32_t atomicAdd(int32_t* p, int32_t v) {
  int32_t old = *p;
  *p += v;
  return old;
}

#include <torch/extension.h>

#include "step_entry.h"

namespace clr_fused {
namespace {

template <typename Kernel>
void run_blocks(unsigned grid, Kernel kernel) {
  gridDim.x = grid;
  blockDim.x = 1;
  threadIdx.x = 0;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    kernel();
  }
}

template <typename P, typename S>
struct EmuSgd {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    if (h.use_momentum) {
      run_blocks(grid, [&] { sgd_kernel<P, S, 1>(tb, in, h); });
    } else {
      run_blocks(grid, [&] { sgd_kernel<P, S, 0>(tb, in, h); });
    }
  }
};

template <typename P, typename S>
struct EmuAdam {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
    if (h.amsgrad) {
      run_blocks(grid, [&] { adam_kernel<P, S, 3>(tb, in, h); });
    } else {
      run_blocks(grid, [&] { adam_kernel<P, S, 2>(tb, in, h); });
    }
  }
};

void emulated_sgd_step(CLR_FUSED_SGD_PARAMS) {
  TORCH_CHECK(numels.device().is_cpu(), "the host emulation runs on CPU tensors");
  sgd_step_impl<EmuSgd>(CLR_FUSED_SGD_NAMES);
}

void emulated_adam_step(CLR_FUSED_ADAM_PARAMS) {
  TORCH_CHECK(numels.device().is_cpu(), "the host emulation runs on CPU tensors");
  adam_step_impl<EmuAdam>(CLR_FUSED_ADAM_NAMES);
}

}  // namespace
}  // namespace clr_fused

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sgd_step", &clr_fused::emulated_sgd_step);
  m.def("adam_step", &clr_fused::emulated_adam_step);
  m.attr("CHUNK") = clr_fused::kChunk;
}
