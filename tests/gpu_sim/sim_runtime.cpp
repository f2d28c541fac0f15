// The emulator's runtime that must not be instrumented: its configuration,
// the byte counts, and (CUDA_SIM_COUNT_ACCESSES) the access hooks that GCC's
// -fsanitize=thread instrumentation of sim_kernels.cpp calls, with no TSan
// runtime linked: each load / store of the kernels reaches on_access.
#include <cstddef>
#include <cstdint>

#include "cuda_sim.h"
#include "sim_bridge.h"

namespace cuda_sim_bridge {

void configure(int order, uint64_t seed, int workers) {
  cuda_sim::Config& c = cuda_sim::config();
  c.order = static_cast<cuda_sim::Order>(order);
  c.seed = seed;
  c.workers = workers;
#if defined(__SANITIZE_ADDRESS__)
  c.stack_bytes = 256 * 1024;  // ASan's redzones make frames bigger
#endif
}

std::vector<int64_t> counts() {
  const cuda_sim::Counts& t = cuda_sim::memory().totals;
  std::vector<int64_t> out;
  for (int c = 0; c < kNumCategories; ++c) {
    out.push_back(static_cast<int64_t>(t.read_bytes[c]));
    out.push_back(static_cast<int64_t>(t.write_bytes[c]));
    for (int w = 0; w < cuda_sim::kWidths; ++w) out.push_back(static_cast<int64_t>(t.reads[c][w]));
    for (int w = 0; w < cuda_sim::kWidths; ++w) out.push_back(static_cast<int64_t>(t.writes[c][w]));
    out.push_back(static_cast<int64_t>(t.unique_read_bytes[c]));
    out.push_back(static_cast<int64_t>(t.unique_write_bytes[c]));
  }
  return out;
}

void reset_counts() { cuda_sim::memory().totals = cuda_sim::Counts{}; }

bool counting() {
#ifdef CUDA_SIM_COUNT_ACCESSES
  return true;
#else
  return false;
#endif
}

#ifdef CUDA_SIM_COVERAGE
extern "C" void __gcov_dump();
bool coverage_dump() {
  __gcov_dump();
  return true;
}
#else
bool coverage_dump() { return false; }
#endif

}  // namespace cuda_sim_bridge

#ifdef CUDA_SIM_COUNT_ACCESSES
namespace {

// Instrumented code called from inside a hook (the header's inline helpers
// may be the instrumented copies) must not recurse into it.
thread_local bool in_hook __attribute__((tls_model("initial-exec"))) = false;

void on_access(const void* p, size_t size, bool write) {
  if (in_hook) return;
  cuda_sim::BlockRun* b = cuda_sim::tls_block;
  if (b == nullptr || b->current == nullptr) return;
  in_hook = true;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const cuda_sim::Range* r = cuda_sim::memory().find(a);
  if (r == nullptr) {
    in_hook = false;
    return;
  }
  if (a % size != 0 || a + size > r->hi) {
    in_hook = false;
    cuda_sim::fail(std::string(a % size != 0 ? "misaligned " : "out-of-bounds ") + std::to_string(size) + "-byte " +
                   (write ? "store" : "load") + " in category " + std::to_string(r->category) + " at byte offset " +
                   std::to_string(a - r->lo) + " of a " + std::to_string(r->hi - r->lo) + "-byte allocation, " +
                   cuda_sim::thread_name());
  }
  for (size_t i = 0; i < size; ++i) __atomic_fetch_or(r->touched + (a - r->lo) + i, write ? 2 : 1, __ATOMIC_RELAXED);
  const int w = cuda_sim::width_index(size);
  if (write) {
    b->counts.write_bytes[r->category] += size;
    b->counts.writes[r->category][w] += 1;
  } else {
    b->counts.read_bytes[r->category] += size;
    b->counts.reads[r->category][w] += 1;
  }
  in_hook = false;
}

}  // namespace

#define CUDA_SIM_HOOKS(N)                                                                 \
  extern "C" void __tsan_read##N(void* p) { on_access(p, N, false); }                     \
  extern "C" void __tsan_write##N(void* p) { on_access(p, N, true); }                     \
  extern "C" void __tsan_unaligned_read##N(void* p) { on_access(p, N, false); }           \
  extern "C" void __tsan_unaligned_write##N(void* p) { on_access(p, N, true); }
CUDA_SIM_HOOKS(1)
CUDA_SIM_HOOKS(2)
CUDA_SIM_HOOKS(4)
CUDA_SIM_HOOKS(8)
CUDA_SIM_HOOKS(16)
extern "C" void __tsan_read_range(void* p, size_t n) {
  for (size_t i = 0; i < n; ++i) on_access(static_cast<char*>(p) + i, 1, false);
}
extern "C" void __tsan_write_range(void* p, size_t n) {
  for (size_t i = 0; i < n; ++i) on_access(static_cast<char*>(p) + i, 1, true);
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
extern "C" void __tsan_ignore_thread_begin() {}
extern "C" void __tsan_ignore_thread_end() {}

// The instrumented atomics: real atomics, at the order asked (GCC passes the
// __ATOMIC_* value).  The kernels' ticket is the only atomic they make.
#define CUDA_SIM_ATOMICS(BITS, T)                                                                       \
  extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int mo) { return __atomic_load_n(a, mo); } \
  extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int mo) { __atomic_store_n(a, v, mo); } \
  extern "C" T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int mo) { return __atomic_exchange_n(a, v, mo); } \
  extern "C" T __tsan_atomic##BITS##_fetch_add(volatile T* a, T v, int mo) { return __atomic_fetch_add(a, v, mo); } \
  extern "C" T __tsan_atomic##BITS##_fetch_sub(volatile T* a, T v, int mo) { return __atomic_fetch_sub(a, v, mo); } \
  extern "C" T __tsan_atomic##BITS##_fetch_and(volatile T* a, T v, int mo) { return __atomic_fetch_and(a, v, mo); } \
  extern "C" T __tsan_atomic##BITS##_fetch_or(volatile T* a, T v, int mo) { return __atomic_fetch_or(a, v, mo); }   \
  extern "C" T __tsan_atomic##BITS##_fetch_xor(volatile T* a, T v, int mo) { return __atomic_fetch_xor(a, v, mo); } \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* e, T v, int mo, int fmo) {         \
    return __atomic_compare_exchange_n(a, e, v, false, mo, fmo);                                                   \
  }                                                                                                              \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* e, T v, int mo, int fmo) {           \
    return __atomic_compare_exchange_n(a, e, v, true, mo, fmo);                                                    \
  }                                                                                                              \
  extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T e, T v, int mo, int fmo) {               \
    __atomic_compare_exchange_n(a, &e, v, false, mo, fmo);                                                         \
    return e;                                                                                                    \
  }
CUDA_SIM_ATOMICS(8, uint8_t)
CUDA_SIM_ATOMICS(16, uint16_t)
CUDA_SIM_ATOMICS(32, uint32_t)
CUDA_SIM_ATOMICS(64, uint64_t)
extern "C" void __tsan_atomic_thread_fence(int mo) { __atomic_thread_fence(mo); }
extern "C" void __tsan_atomic_signal_fence(int mo) { __atomic_signal_fence(mo); }
#endif
