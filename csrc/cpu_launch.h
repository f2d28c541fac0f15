// The CUDA built-ins that multi_tensor.cuh and fused_kernels.cuh use, defined
// for the host compiler, so that the very same kernel templates run on the
// CPU.  A CUDA block becomes one task on one CPU thread:
//   - threadIdx.x is the constant 0 and blockDim.x the constant 1, so the
//     kernels' element loop is a plain unit-stride loop (vectorised by the
//     compiler) and per-block code runs once;
//   - blockIdx / gridDim are thread_local: blocks of one grid run
//     concurrently on several threads;
//   - __shared__ variables are per thread (one thread per block);
//   - the last-block ticket is a real atomic (acq_rel fetch_add), so the
//     epilogue's "every block has read the counters" argument holds under
//     real concurrency (tests/cpp/ticket_tsan.cpp runs it under TSan).
// Include it after any ATen/torch header and before the kernel headers.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>

namespace clr_fused::cpu {
struct Index {
  unsigned x = 0;
};
struct ConstZero {
  static constexpr unsigned x = 0;
};
struct ConstOne {
  static constexpr unsigned x = 1;
};
}  // namespace clr_fused::cpu

inline thread_local clr_fused::cpu::Index blockIdx, gridDim;
constexpr clr_fused::cpu::ConstZero threadIdx{};
constexpr clr_fused::cpu::ConstOne blockDim{};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static thread_local
#define __launch_bounds__(...)

// The ticket's memory order.  tests/cpp/ticket_tsan.cpp also builds it
// __ATOMIC_RELAXED to show that ThreadSanitizer then reports the race.
#ifndef CLR_FUSED_TICKET_ORDER
#define CLR_FUSED_TICKET_ORDER __ATOMIC_ACQ_REL
#endif

inline void __syncthreads() {}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int32_t atomicAdd(int32_t* p, int32_t v) { return __atomic_fetch_add(p, v, CLR_FUSED_TICKET_ORDER); }
inline int32_t atomicExch(int32_t* p, int32_t v) { return __atomic_exchange_n(p, v, CLR_FUSED_TICKET_ORDER); }

namespace clr_fused::cpu {

// Runs kernel() for every block of a grid of `grid` blocks.  parallel_for(n,
// body) must call body(begin, end) over a partition of [0, n), concurrently
// or not: at::parallel_for in the extension, std::thread in the TSan test.
template <typename ParallelFor, typename Kernel>
void run_grid(unsigned grid, const ParallelFor& parallel_for, const Kernel& kernel) {
  parallel_for(static_cast<int64_t>(grid), [&](int64_t begin, int64_t end) {
    gridDim.x = grid;
    for (int64_t b = begin; b < end; ++b) {
      blockIdx.x = static_cast<unsigned>(b);
      kernel();
    }
  });
}

}  // namespace clr_fused::cpu
