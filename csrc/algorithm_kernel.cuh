// The generic fused step of an algorithm (csrc/algorithms/*.cuh): one kernel
// template for every algorithm, on the multi-tensor launcher.  An algorithm is
// a struct with
//   kName, kStates                      its name (the Python class's) and state lists (list 0: the signed int8 map)
//   kInt8States                         whether its states may be int8 codes (no int8 kernels otherwise)
//   struct Hyper, from(const double*, n) its hyperparameters, from the op's `hyper` floats (checked there)
//   chunk<P, S, kFma, kSr>(...)         one block's chunk: its scalars (from the step inputs: lr, a cycled
//                                       momentum, the group's running scalars), then for_each_element over it
//   kScalars, finish(in, c, h)          its per-group running float64 scalars (0: none) and, in the last block
//                                       of the group's last launch, their values for the next step
// so that the launchers (cpu_ops.cpp, fused_optim.cu), the op (step_entry.h),
// the plan (step_plan.cpp) and the bindings know no algorithm: they iterate
// CLR_FUSED_ALGORITHMS (algorithms.h).
#pragma once

#include "fused_kernels.cuh"

namespace clr_fused {

template <typename A, typename P, typename S, bool kFma = kDeviceFma, bool kSr = false>
__global__ void __launch_bounds__(kThreads) algorithm_kernel(Tables tb, StepInputs in, typename A::Hyper h) {
  const ChunkInfo c = chunk_info(tb, in);
  if (!c.skipped) {
    const StatePtrs<S, A::kStates> s = state_ptrs<S, A::kStates>(tb, c.t);
    const RandomBits rb = chunk_bits<kSr>(tb, c);
    A::template chunk<P, S, kFma, kSr>(tb, in, c, s, rb, h);
  }
  if (needs_last_block(in) && last_block(in.ticket)) {
    // the group's running scalars of the next step (a skipped step keeps them)
    if (in.write_scalars && !c.skipped && threadIdx.x == 0) A::finish(in, c, h);
    finish_step(in, c);
  }
}

}  // namespace clr_fused
