// The interface between the emulator's op entry (sim_ops.cpp: ATen, the real
// step_entry.h op bodies and launch_args.h tables) and its kernel build
// (sim_kernels.cpp: the csrc/ kernels with the GPU's semantics, cuda_sim.h).
// Only plain types cross: the kernel build renames namespace clr_fused, so
// its inline functions (GPU semantics) and the op entry's (compiled with
// cpu_launch.h) can never be merged by the linker.  Tables, StepInputs,
// SgdHyper, AdamHyper and each algorithm's Hyper are passed by address: one source, one layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cuda_sim_bridge {

enum Storage : int { kFloat = 0, kBFloat16 = 1, kHalf = 2, kQ8 = 3 };

// Byte-count categories of the allocations a launch touches.
enum Category : int {
  kParams = 0, kGrads = 1, kStates = 2,  // kStates + j: state list j (codes for int8)
  kScales = 5,                           // kScales + j: int8 scales of list j
  kAddressTables = 8, kNumels = 9, kChunkTensor = 10, kChunkStart = 11,
  kScheduleRows = 12, kScalars = 13, kStepTable = 14, kSteps = 15, kFresh = 16, kBetas = 17,
  kNumCategories = 18
};

void sgd(int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper);
void adam(int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper);
// The generic step (csrc/algorithms.h): algorithm is the id of its X-macro list, hyper its A::Hyper.
void step(int algorithm, int param, int state, unsigned grid, const void* tables, const void* inputs, const void* hyper,
          bool stochastic);

// Names of the kernel instantiations launched so far, and of every one the
// variant selection (csrc/kernel_variants.h) can pick in this build.
std::vector<std::string> launched();
std::vector<std::string> all_variants();

// sim_runtime.cpp
void configure(int order, uint64_t seed, int workers);
// [categories x (read bytes, write bytes, reads by width 1/2/4/8/16, writes by width,
//                distinct bytes read, distinct bytes written)]: accesses by the threads, and DRAM-level bytes
std::vector<int64_t> counts();
void reset_counts();
bool counting();  // the build counts accesses
bool coverage_dump();  // writes the gcov counters now (a --coverage build); false otherwise

}  // namespace cuda_sim_bridge
