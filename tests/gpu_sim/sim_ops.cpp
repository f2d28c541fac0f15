// The emulator's ops: torch.ops.clr_fused_sim.sgd_step / adam_step / step, with the
// schemas of csrc/step_api.h and the real op bodies of csrc/step_entry.h
// (argument checks, launch_args.h's tables and step inputs, the dtype
// dispatch); only the launch goes to the CUDA emulator instead of a GPU
// (sim_kernels.cpp).  The Python side passes the tables that
// clr_fused/kernels/tensor_tables.py builds for the CUDA backend.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

// The kernel headers are parsed here only for their structs (Tables,
// StepInputs, the hyperparameters); no kernel is instantiated in this file.
#include "cpu_launch.h"
#include "step_entry.h"
#include "sim_bridge.h"

namespace clr_fused {

// This library's own copy (the extension's is in ops.cpp): never stubbed.
bool kernels_stubbed() { return false; }

namespace {

template <typename T>
constexpr int storage_code() {
  if constexpr (std::is_same_v<T, float>) return cuda_sim_bridge::kFloat;
  if constexpr (std::is_same_v<T, at::BFloat16>) return cuda_sim_bridge::kBFloat16;
  if constexpr (std::is_same_v<T, at::Half>) return cuda_sim_bridge::kHalf;
  if constexpr (std::is_same_v<T, Q8>) return cuda_sim_bridge::kQ8;
  return -1;
}

// The emulator's failures (std::runtime_error) as the op's RuntimeError.
template <typename Fn>
void launch_on_emulator(const Fn& fn) {
  try {
    fn();
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what());
  }
}

template <typename P, typename S>
struct SimSgd {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    launch_on_emulator([&] { cuda_sim_bridge::sgd(storage_code<P>(), storage_code<S>(), grid, &tb, &in, &h); });
  }
};

template <typename P, typename S>
struct SimAdam {
  static void run(unsigned grid, const Tables& tb, const StepInputs& in, const AdamHyper& h) {
    launch_on_emulator([&] { cuda_sim_bridge::adam(storage_code<P>(), storage_code<S>(), grid, &tb, &in, &h); });
  }
};

// The id of algorithm A in csrc/algorithms.h's list.
template <typename A>
constexpr int algorithm_id() {
#define CLR_FUSED_SIM_ID(id, S) \
  if constexpr (std::is_same_v<A, S>) return id;
  CLR_FUSED_ALGORITHMS(CLR_FUSED_SIM_ID)
#undef CLR_FUSED_SIM_ID
  return -1;
}

template <typename A>
struct SimAlgorithm {
  template <typename P, typename S>
  struct On {
    static void run(unsigned grid, const Tables& tb, const StepInputs& in, const typename A::Hyper& h, bool stochastic) {
      launch_on_emulator([&] {
        cuda_sim_bridge::step(algorithm_id<A>(), storage_code<P>(), storage_code<S>(), grid, &tb, &in, &h, stochastic);
      });
    }
  };
};

void sgd_step_sim(CLR_FUSED_SGD_PARAMS) { sgd_step_impl<SimSgd>(CLR_FUSED_SGD_NAMES); }
void step_sim(CLR_FUSED_STEP_PARAMS) { algorithm_step_impl<SimAlgorithm>(CLR_FUSED_STEP_NAMES); }
void adam_step_sim(CLR_FUSED_ADAM_PARAMS) { adam_step_impl<SimAdam>(CLR_FUSED_ADAM_NAMES); }

void configure(int64_t order, int64_t seed, int64_t workers) {
  TORCH_CHECK(order >= 0 && order <= 2, "order must be 0 (forward), 1 (reversed) or 2 (shuffled)");
  TORCH_CHECK(workers >= 1, "workers must be >= 1");
  cuda_sim_bridge::configure(static_cast<int>(order), static_cast<uint64_t>(seed), static_cast<int>(workers));
}

at::Tensor counts() {
  const std::vector<int64_t> c = cuda_sim_bridge::counts();
  return at::tensor(c, at::kLong).view({cuda_sim_bridge::kNumCategories, -1});
}

void reset_counts() { cuda_sim_bridge::reset_counts(); }
std::vector<std::string> launched() { return cuda_sim_bridge::launched(); }
std::vector<std::string> all_variants() { return cuda_sim_bridge::all_variants(); }
bool counting() { return cuda_sim_bridge::counting(); }
bool coverage_dump() { return cuda_sim_bridge::coverage_dump(); }

}  // namespace
}  // namespace clr_fused

TORCH_LIBRARY(clr_fused_sim, m) {
  m.def(clr_fused::kSgdSchema);
  m.def(clr_fused::kAdamSchema);
  m.def(clr_fused::kStepSchema);
  m.def("configure(int order, int seed, int workers) -> ()", &clr_fused::configure);
  m.def("counts() -> Tensor", &clr_fused::counts);
  m.def("reset_counts() -> ()", &clr_fused::reset_counts);
  m.def("counting() -> bool", &clr_fused::counting);
  m.def("launched() -> str[]", &clr_fused::launched);
  m.def("all_variants() -> str[]", &clr_fused::all_variants);
  m.def("coverage_dump() -> bool", &clr_fused::coverage_dump);
}

TORCH_LIBRARY_IMPL(clr_fused_sim, CPU, m) {
  m.impl("sgd_step", &clr_fused::sgd_step_sim);
  m.impl("adam_step", &clr_fused::adam_step_sim);
  m.impl("step", &clr_fused::step_sim);
}
