// The real kernels of csrc/, compiled with the GPU's semantics for the CUDA
// emulator (cuda_sim.h): __CUDACC__ paths, 512 threads per block, warps of 32.
// Every (parameter, state) storage pair of launch_args.h's dispatch_types and
// every variant of kernel_variants.h, as fused_optim.cu registers them.
// Built by tests/gpu_sim/build.py with -Dclr_fused=clr_fused_gpusim (see
// sim_bridge.h); CUDA_SIM_FP32_ONLY: float parameters with float or int8
// states only (the planted-bug and sanitizer builds, faster to compile).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <mutex>
#include <set>
#include <stdexcept>
#include <string>

#include "cuda_sim.h"
// the kernel headers after cuda_sim.h: they see __CUDACC__
#include "algorithm_kernel.cuh"
#include "algorithms.h"
#include "fused_kernels.cuh"
#include "kernel_variants.h"
#include "sim_bridge.h"
#include "storage_types.h"

using namespace clr_fused;
namespace br = cuda_sim_bridge;

namespace {

template <typename T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, c10::BFloat16>) return "bfloat16";
  if constexpr (std::is_same_v<T, c10::Half>) return "half";
  if constexpr (std::is_same_v<T, Q8>) return "int8";
  return "?";
}

// "sgd<float,int8,NS=1,sr=0>": one kernel instantiation.
template <typename P, typename S, int NS, bool kSr>
std::string variant_name(const char* algo) {
  return std::string(algo) + "<" + type_name<P>() + "," + type_name<S>() + ",NS=" + std::to_string(NS) + ",sr=" + (kSr ? "1" : "0") + ">";
}

std::mutex launched_mu;
std::set<std::string>& launched_set() {
  static std::set<std::string> s;
  return s;
}

void record(const std::string& name) {
  std::lock_guard<std::mutex> lock(launched_mu);
  launched_set().insert(name);
}

template <typename T>
void add(const T* p, int64_t count, int category) {
  cuda_sim::memory().add(p, static_cast<size_t>(count) * sizeof(T), category);
}

// Registers what a launch may touch: every list's tensors, the tables, the scalars.
template <typename P, typename S, int NS>
void register_memory(unsigned grid, const Tables& tb, const StepInputs& in) {
  cuda_sim::Memory& m = cuda_sim::memory();
  m.clear();
  constexpr bool kQ = std::is_same_v<S, Q8>;
  const int64_t T = tb.num_tensors;
  const int lists = 2 + NS + (kQ ? NS : 0);
  for (int l = 0; l < lists; ++l) add(tb.addrs[l], T, br::kAddressTables);
  if (tb.comp != nullptr) add(tb.comp, T, br::kAddressTables);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = tb.numels[t];
    add(reinterpret_cast<const P*>(tb.addrs[0][t]), n, br::kParams);
    // kahan_sum's compensation buffers: counted with the parameters
    if (tb.comp != nullptr) add(reinterpret_cast<const P*>(tb.comp[t]), n, br::kParams);
    add(reinterpret_cast<const P*>(tb.addrs[1][t]), n, br::kGrads);
    for (int j = 0; j < NS; ++j) {
      if constexpr (kQ) {
        add(reinterpret_cast<const int8_t*>(tb.addrs[2 + j][t]), n, br::kStates + j);
        add(reinterpret_cast<const float*>(tb.addrs[2 + NS + j][t]), (n + kQBlock - 1) / kQBlock, br::kScales + j);
      } else {
        add(reinterpret_cast<const S*>(tb.addrs[2 + j][t]), n, br::kStates + j);
      }
    }
  }
  add(tb.numels, T, br::kNumels);
  add(tb.chunk_tensor, grid, br::kChunkTensor);
  add(tb.chunk_start, grid, br::kChunkStart);
  add(in.rows, static_cast<int64_t>(in.n_rows) * kRowWidth, br::kScheduleRows);
  add(in.counter, 1, br::kScalars);
  add(in.lr, 1, br::kScalars);
  if (in.mom != nullptr) add(in.mom, 1, br::kScalars);
  if (in.next != nullptr) add(in.next, 2, br::kScalars);
  if (in.grad_mul != nullptr) add(in.grad_mul, 1, br::kScalars);
  if (in.skip != nullptr) add(in.skip, 1, br::kScalars);
  add(in.ticket, 1, br::kScalars);
}

template <typename P, typename S>
void run_sgd(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
  sgd_variant<P, S>(h, [&](auto ns, auto sr) {
    constexpr int kNs = decltype(ns)::value;
    constexpr bool kSr = decltype(sr)::value;
    record(variant_name<P, S, kNs, kSr>("sgd"));
    register_memory<P, S, kNs>(grid, tb, in);
    add(h.fresh, tb.num_tensors, br::kFresh);
    cuda_sim::launch(grid, kThreads, [&] { sgd_kernel<P, S, kNs, kDeviceFma, kSr>(tb, in, h); });
  });
}

template <typename P, typename S>
void run_adam(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
  adam_variant<P, S>(h, [&](auto ns, auto sr) {
    constexpr int kNs = decltype(ns)::value;
    constexpr bool kSr = decltype(sr)::value;
    record(variant_name<P, S, kNs, kSr>("adam"));
    register_memory<P, S, kNs>(grid, tb, in);
    add(h.steps, tb.num_tensors, br::kStepTable);
    for (int64_t t = 0; t < tb.num_tensors; ++t) add(reinterpret_cast<const float*>(h.steps[t]), 1, br::kSteps);
    if (h.betas != nullptr) add(h.betas, 4, br::kBetas);
    cuda_sim::launch(grid, kThreads, [&] { adam_kernel<P, S, kNs, kDeviceFma, kSr>(tb, in, h); });
  });
}

// The generic step of algorithm A (algorithm_kernel.cuh), as fused_optim.cu's CudaAlgorithm picks it.
template <typename A, typename P, typename S>
void run_algorithm(unsigned grid, const Tables& tb, const StepInputs& in, const typename A::Hyper& h, bool stochastic) {
  algorithm_variant<A, P, S>(stochastic, [&](auto sr) {
    constexpr bool kSr = decltype(sr)::value;
    record(variant_name<P, S, A::kStates, kSr>(A::kName));
    register_memory<P, S, A::kStates>(grid, tb, in);
    if (in.scalars != nullptr) add(in.scalars, A::kScalars, br::kScalars);
    cuda_sim::launch(grid, kThreads, [&] { algorithm_kernel<A, P, S, kDeviceFma, kSr>(tb, in, h); });
  });
}

// (param, state) storage codes -> the launcher, as launch_args.h's dispatch_types pairs them.
template <typename P, typename F>
void with_state(int state, const F& f) {
  switch (state) {
    case br::kFloat:
      return f(P{}, float{});
    case br::kQ8:
      return f(P{}, Q8{});
#ifndef CUDA_SIM_FP32_ONLY
    case br::kBFloat16:
      if constexpr (!std::is_same_v<P, c10::Half>) return f(P{}, c10::BFloat16{});
      break;
#endif
    case br::kHalf:
      if constexpr (std::is_same_v<P, c10::Half>) return f(P{}, c10::Half{});
      break;
  }
  throw std::runtime_error("CUDA emulator: no kernel for this (parameter, state) storage pair");
}

template <typename F>
void with_types(int param, int state, const F& f) {
  switch (param) {
    case br::kFloat:
      return with_state<float>(state, f);
#ifndef CUDA_SIM_FP32_ONLY
    case br::kBFloat16:
      return with_state<c10::BFloat16>(state, f);
    case br::kHalf:
      return with_state<c10::Half>(state, f);
#endif
  }
  throw std::runtime_error("CUDA emulator: this build has no kernels for that parameter dtype");
}

}  // namespace

namespace cuda_sim_bridge {

void sgd(int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper) {
  with_types(param, state, [&](auto p, auto s) {
    run_sgd<decltype(p), decltype(s)>(grid, *static_cast<const Tables*>(tables), *static_cast<const StepInputs*>(inputs),
                                      *static_cast<const SgdHyper*>(hyper));
  });
}

void adam(int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper) {
  with_types(param, state, [&](auto p, auto s) {
    run_adam<decltype(p), decltype(s)>(grid, *static_cast<const Tables*>(tables), *static_cast<const StepInputs*>(inputs),
                                       *static_cast<const AdamHyper*>(hyper));
  });
}

void step(int algorithm, int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper,
          bool stochastic) {
  const Tables& tb = *static_cast<const Tables*>(tables);
  const StepInputs& in = *static_cast<const StepInputs*>(inputs);
  switch (algorithm) {
#define CLR_FUSED_SIM_CASE(id, A)                                                                           \
  case id:                                                                                                  \
    return with_types(param, state, [&](auto p, auto s) {                                                   \
      run_algorithm<A, decltype(p), decltype(s)>(grid, tb, in, *static_cast<const A::Hyper*>(hyper), stochastic); \
    });
    CLR_FUSED_ALGORITHMS(CLR_FUSED_SIM_CASE)
#undef CLR_FUSED_SIM_CASE
  }
  throw std::runtime_error("CUDA emulator: unknown algorithm id");
}

}  // namespace cuda_sim_bridge

namespace cuda_sim_bridge {

std::vector<std::string> launched() {
  std::lock_guard<std::mutex> lock(launched_mu);
  return {launched_set().begin(), launched_set().end()};
}

// Every instantiation the variant selection can pick, over every storage
// pair and every flag that selects one (the names only: nothing runs).
std::vector<std::string> all_variants() {
  std::set<std::string> out;
  for (int param : {kFloat, kBFloat16, kHalf}) {
    for (int state : {kFloat, kBFloat16, kHalf, kQ8}) {
      try {
        with_types(param, state, [&](auto p, auto s) {
          using P = decltype(p);
          using S = decltype(s);
          for (bool flag : {false, true}) {
            for (bool stochastic : {false, true}) {
              SgdHyper sh{};
              sh.use_momentum = flag;
              sh.stochastic = stochastic;
              // Without momentum the op takes the parameter's dtype as the state type;
              // int8 needs momentum (step_entry.h refuses it otherwise).
              const bool reachable = flag ? true : std::is_same_v<S, P>;
              if (reachable) {
                sgd_variant<P, S>(sh, [&](auto ns, auto sr) { out.insert(variant_name<P, S, decltype(ns)::value, decltype(sr)::value>("sgd")); });
              }
              AdamHyper ah{};
              ah.amsgrad = flag;
              ah.stochastic = stochastic;
              adam_variant<P, S>(ah, [&](auto ns, auto sr) { out.insert(variant_name<P, S, decltype(ns)::value, decltype(sr)::value>("adam")); });
              // the generic step's algorithms (one flag: stochastic rounding)
#define CLR_FUSED_SIM_VARIANT(id, A) \
  algorithm_variant<A, P, S>(stochastic, [&](auto sr) { out.insert(variant_name<P, S, A::kStates, decltype(sr)::value>(A::kName)); });
              CLR_FUSED_ALGORITHMS(CLR_FUSED_SIM_VARIANT)
#undef CLR_FUSED_SIM_VARIANT
            }
          }
        });
      } catch (const std::runtime_error&) {
        // not a pair dispatch_types makes
      }
    }
  }
  return {out.begin(), out.end()};
}

}  // namespace cuda_sim_bridge
