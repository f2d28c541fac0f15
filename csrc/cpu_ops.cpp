// The CPU backend: the kernel templates of fused_kernels.cuh, compiled by the
// host compiler (cpu_launch.h supplies the CUDA built-ins) and run with the
// chunks (blocks) spread over at::parallel_for's threads.
//
// Vectorisation (checked with g++ 12 -O3 -fopt-info-vec-optimized on this
// file, x86-64 baseline SSE2): the element loop of for_each_element, with
// blockDim.x == 1, is reported "loop vectorized using 16 byte vectors" for the
// fp32 SGD (with and without momentum) and Adam/AdamW kernels, with runtime
// alias checks (versioned loop).  -fno-math-errno lets sqrtf vectorise
// (sqrtps) without changing any result; no -ffast-math: float32 IEEE math
// with one rounding to the storage type; fused multiply-adds only where the
// kernels ask for them (madd<true>, in the AVX2 / AVX-512 copies, as torch's
// own kernels at those capabilities).  The 16-bit kernels convert through c10's scalar
// BFloat16/Half round-to-nearest-even and stay scalar.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "cpu_launch.h"
// (the kernel headers come after cpu_launch.h)
#include "step_entry.h"
// after the kernel templates, before anything instantiates them
#include "cpu_storage.h"

namespace clr_fused {

namespace {

// Below about this many elements per task, a thread costs more than it saves.
constexpr int64_t kElementsPerTask = 1 << 15;

// Chunks per at::parallel_for task, from the bucket's average chunk size.
int64_t grain_for(const Tables& tb, unsigned grid) {
  int64_t total = 0;
  for (int64_t t = 0; t < tb.num_tensors; ++t) total += tb.numels[t];
  const int64_t per_chunk = std::max<int64_t>(1, total / std::max<unsigned>(grid, 1));
  return std::max<int64_t>(1, kElementsPerTask / per_chunk);
}

template <typename Kernel>
void run_cpu_grid(unsigned grid, int64_t grain, const Kernel& kernel) {
  cpu::run_grid(
      grid, [grain](int64_t n, const auto& body) { at::parallel_for(0, n, grain, body); }, kernel);
}

// Run-time ISA dispatch.  The extension is built for the x86-64 baseline
// (SSE2) so that it loads anywhere; on a CPU with AVX2 (or AVX-512) each block
// runs a copy of the same kernel compiled for it (`flatten` inlines the whole
// kernel into the ISA-specific function, so its element loop is vectorised 8-
// or 16-wide).  Contraction is off (-ffp-contract=off, _build_flags.py), so
// the only fused multiply-adds are the kernels' explicit madd<true>: the AVX2
// and AVX-512 copies run the kFma instantiation and the baseline copy the
// other, which is how torch's own CPU kernels round at those capabilities
// (tests/test_cpu_backend.py compares each copy with torch at the same
// ATEN_CPU_CAPABILITY, bit for bit).
// CLR_FUSED_CPU_ISA=baseline|avx2|avx512 (read once) caps the choice.
enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

#if defined(__x86_64__) && defined(__GNUC__)
#define CLR_FUSED_ISA_DISPATCH 1
#define CLR_FUSED_AVX2 __attribute__((target("avx2,fma"), flatten))
#define CLR_FUSED_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,prefer-vector-width=512"), flatten))

Isa cpu_isa_choice() {
  static const Isa isa = [] {
    Isa best = Isa::kBaseline;
    if (__builtin_cpu_supports("avx2")) best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      best = Isa::kAvx512;
    }
    const char* cap = std::getenv("CLR_FUSED_CPU_ISA");
    const std::string want = cap == nullptr ? "" : cap;
    const Isa limit = want == "baseline" ? Isa::kBaseline : want == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    return best < limit ? best : limit;
  }();
  return isa;
}

// The kernel, compiled for the ISA (flatten: everything it calls is inlined into it).
template <typename Hyper, void (*Kernel)(Tables, StepInputs, Hyper)>
CLR_FUSED_AVX2 void block_avx2(Tables tb, StepInputs in, Hyper h) {
  Kernel(tb, in, h);
}
template <typename Hyper, void (*Kernel)(Tables, StepInputs, Hyper)>
CLR_FUSED_AVX512 void block_avx512(Tables tb, StepInputs in, Hyper h) {
  Kernel(tb, in, h);
}

#else
#define CLR_FUSED_ISA_DISPATCH 0
Isa cpu_isa_choice() { return Isa::kBaseline; }
#endif

// Runs every block of the grid with the copy of the kernel for this CPU's ISA:
// Plain (two roundings per multiply-add) on the baseline, Fused on AVX2 / AVX-512.
template <typename Hyper, void (*Plain)(Tables, StepInputs, Hyper), void (*Fused)(Tables, StepInputs, Hyper)>
void run_kernel(unsigned grid, int64_t grain, const Tables& tb, const StepInputs& in, const Hyper& h) {
#if CLR_FUSED_ISA_DISPATCH
  switch (cpu_isa_choice()) {
    case Isa::kAvx512:
      return run_cpu_grid(grid, grain, [&] { block_avx512<Hyper, Fused>(tb, in, h); });
    case Isa::kAvx2:
      return run_cpu_grid(grid, grain, [&] { block_avx2<Hyper, Fused>(tb, in, h); });
    case Isa::kBaseline:
      break;
  }
#endif
  run_cpu_grid(grid, grain, [&] { Plain(tb, in, h); });
}

template <typename P, typename S>
struct CpuSgd {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    const int64_t grain = grain_for(tb, grid);
    sgd_variant<P, S>(h, [&](auto ns, auto sr) {
      constexpr int kNs = decltype(ns)::value;
      constexpr bool kSr = decltype(sr)::value;
      run_kernel<SgdHyper, sgd_kernel<P, S, kNs, false, kSr>, sgd_kernel<P, S, kNs, true, kSr>>(grid, grain, tb, in, h);
    });
  }
};

// Where torch's fused CPU Adam stops running its vector-body rounding in a
// tensor (AdamHyper::torch_tail_vec), measured against torch 2.14: on AVX-512
// its 16-wide body is followed by a scalar loop that GCC vectorises 8 wide,
// with the body's contraction, so only the last n % 8 elements take the
// scalar loop's form.  tests/test_exactness.py compares every element.
int64_t torch_vector_width() {
  const std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT", ... (ATEN_CPU_CAPABILITY)
  if (cap == "AVX512" || cap == "AVX2") return 8;
  return 0;  // its DEFAULT build rounds body and tail alike (no FMA), as the baseline copy does
}

template <typename P, typename S>
struct CpuAdam {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& hyper) {
    const int64_t grain = grain_for(tb, grid);
    static const int64_t width = torch_vector_width();
    AdamHyper h = hyper;
    // CLR_FUSED_CPU_TORCH_TAIL=0 (read per launch, a few ns): every element
    // rounds as the body does, which is how the CUDA kernels round; the GPU
    // emulator's bit-for-bit comparison (tests/gpu_sim) runs the CPU build so.
    const char* tail_env = std::getenv("CLR_FUSED_CPU_TORCH_TAIL");
    h.torch_tail_vec = tail_env != nullptr && tail_env[0] == '0' ? 0 : width;
    adam_variant<P, S>(h, [&](auto ns, auto sr) {
      constexpr int kNs = decltype(ns)::value;
      constexpr bool kSr = decltype(sr)::value;
      run_kernel<AdamHyper, adam_kernel<P, S, kNs, false, kSr>, adam_kernel<P, S, kNs, true, kSr>>(grid, grain, tb, in, h);
    });
  }
};

// The generic step (algorithm_kernel.cuh) of algorithm A on the CPU.
template <typename A>
struct CpuAlgorithm {
  template <typename P, typename S>
  struct On {
    static void run(unsigned grid, const Tables& tb, const StepInputs& in, const typename A::Hyper& h, bool stochastic) {
      const int64_t grain = grain_for(tb, grid);
      algorithm_variant<A, P, S>(stochastic, [&](auto sr) {
        constexpr bool kSr = decltype(sr)::value;
        run_kernel<typename A::Hyper, algorithm_kernel<A, P, S, false, kSr>, algorithm_kernel<A, P, S, true, kSr>>(
            grid, grain, tb, in, h);
      });
    }
  };
};

void step_cpu(CLR_FUSED_STEP_PARAMS) {
  TORCH_CHECK(counter.is_cpu() && params[0].is_cpu(), "clr_fused CPU kernels need CPU tensors");
  algorithm_step_impl<CpuAlgorithm>(CLR_FUSED_STEP_NAMES);
}

void sgd_step_cpu(CLR_FUSED_SGD_PARAMS) {
  TORCH_CHECK(counter.is_cpu() && params[0].is_cpu(), "clr_fused CPU kernels need CPU tensors");
  sgd_step_impl<CpuSgd>(CLR_FUSED_SGD_NAMES);
}

void adam_step_cpu(CLR_FUSED_ADAM_PARAMS) {
  TORCH_CHECK(counter.is_cpu() && params[0].is_cpu(), "clr_fused CPU kernels need CPU tensors");
  adam_step_impl<CpuAdam>(CLR_FUSED_ADAM_NAMES);
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> algorithm_ids() {
  std::vector<std::pair<std::string, int64_t>> out;
#define CLR_FUSED_ALGORITHM_ENTRY(id, A) out.emplace_back(A::kName, id);
  CLR_FUSED_ALGORITHMS(CLR_FUSED_ALGORITHM_ENTRY)
#undef CLR_FUSED_ALGORITHM_ENTRY
  return out;
}

// What the CPU kernels run as here ("avx512", "avx2" or "baseline"), for `clr-fused info` and the tests.
const char* cpu_isa() {
  switch (cpu_isa_choice()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace clr_fused

TORCH_LIBRARY_IMPL(clr_fused, CPU, m) {
  m.impl("sgd_step", &clr_fused::sgd_step_cpu);
  m.impl("adam_step", &clr_fused::adam_step_cpu);
  m.impl("step", &clr_fused::step_cpu);
}
