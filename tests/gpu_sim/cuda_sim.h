// A CUDA execution model for the CPU: runs the real kernel sources of csrc/
// with the GPU's threads, warps, barriers and collectives, so the device-only
// paths (128-bit vector loops, blockDim-strided loops, the int8 warp lanes
// and their shuffles, the last block's barriers and ticket) execute here.
//
// Written from the CUDA C++ Programming Guide's semantics:
//   - a grid's blocks run on a pool of worker threads (Config::workers at a
//     time, in any order), each block to completion on one worker;
//   - each CUDA thread of a block is a fiber with its own stack (switched by
//     a few lines of assembly on x86-64: glibc's swapcontext makes a system
//     call per switch; ucontext elsewhere).
//     A fiber runs until it reaches __syncthreads, a warp collective or its
//     end; then the scheduler runs the next one.  The order in which the
//     block's runnable threads are run between two such points is forward,
//     reversed or shuffled (Config::order), so code that depends on another
//     thread's write without a barrier gives another result;
//   - __syncthreads is a counting barrier: it opens when every live thread
//     of the block waits at the same __syncthreads (same source line);
//   - __shfl*_sync / __ballot_sync / __any_sync / __all_sync / __syncwarp
//     are per-warp meeting points over their mask: every lane named must
//     arrive at the same collective with the same mask, and every lane's
//     result is computed from one snapshot of the values;
//   - __shared__ variables are per block (one block per worker at a time);
//   - atomicAdd is a relaxed atomic read-modify-write, __threadfence a
//     sequentially consistent fence (what the CUDA memory model promises
//     at most; x86 gives more, so ThreadSanitizer -- tests/gpu_sim/sim_tsan.cpp
//     -- is what checks the ordering argument);
//   - __fmaf_rn is a correctly rounded fused multiply-add, __float_as_uint /
//     __uint_as_float are bit casts, __isGlobal checks the registered device
//     allocations (Memory::add).
// It reports, as a failure of the launch, what a GPU would punish instead of
// computing around it: a collective whose mask names an exited lane or a lane
// waiting elsewhere, lanes of one mask at different collectives, a shuffle
// reading a lane outside its mask, a __syncthreads that some threads skip
// (exit before) or reach at different lines, a deadlock, an access to a
// registered allocation at an address not aligned to its size (a misaligned
// 16-byte float4 load faults on a GPU), a __builtin_assume that is false.
//
// What it does NOT model: nvcc's code generation (instruction selection,
// contraction -- the build uses -fmad=false, so only explicit __fmaf_rn
// fuse --, register allocation: tests/test_sass_gates.py checks the real
// machine code); the device math library (pow, exp, cos, log, sqrt in
// double are the host's libm here; CUDA's are within 1-2 ulp of it); FTZ
// and approximate math (the build uses neither); NaN payloads of conversions
// (c10's host bfloat16 conversion gives 0x7FC0, __float2bfloat16 0x7FFF);
// the memory model beyond the fence / relaxed-atomic rules above (no stale
// reads, no reordering within a thread); real warp interleavings (a warp's
// lanes run one after another between collectives, not in lock step);
// uninitialised shared memory (a __shared__ keeps the value of the previous
// block on the same worker).
//
// Include after every system, c10 or ATen header: this defines __CUDACC__,
// so the kernel headers that follow take their GPU paths.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_SIM_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(CUDA_SIM_COUNT_ACCESSES)
#include <sanitizer/tsan_interface.h>
#define CUDA_SIM_TSAN 1
#endif

#define __CUDACC__ 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __builtin_assume(cond) ::cuda_sim::assume_true((cond), #cond, __FILE__, __LINE__)

namespace cuda_sim {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

enum class Order : int { kForward = 0, kReverse = 1, kShuffle = 2 };

struct Config {
  Order order = Order::kForward;
  uint64_t seed = 1;
  int workers = 1;  // blocks run at once
  size_t stack_bytes = 64 * 1024;
};

inline Config& config() {
  static Config c;
  return c;
}

// ------------------------------------------------------------ device memory
// The allocations a launch may touch, each with a category (which list of
// the tables, the tables themselves, the scalars), so that __isGlobal can be
// checked and, in the access-counting build, every load and store of the
// kernels is attributed and its width recorded.
constexpr int kMaxCategories = 24;
constexpr int kWidths = 5;  // 1, 2, 4, 8, 16 bytes

struct Range {
  uintptr_t lo, hi;
  int category;
  uint8_t* touched;  // per byte: 1 read, 2 written in this launch (counting builds); nullptr otherwise
};

struct Counts {
  uint64_t read_bytes[kMaxCategories] = {};
  uint64_t write_bytes[kMaxCategories] = {};
  uint64_t reads[kMaxCategories][kWidths] = {};
  uint64_t writes[kMaxCategories][kWidths] = {};
  // Distinct bytes read / written per launch: what DRAM moves when every
  // byte crosses once (a warp's 32 reads of one scale are one broadcast).
  uint64_t unique_read_bytes[kMaxCategories] = {};
  uint64_t unique_write_bytes[kMaxCategories] = {};
  void add(const Counts& o) {
    for (int c = 0; c < kMaxCategories; ++c) {
      unique_read_bytes[c] += o.unique_read_bytes[c];
      unique_write_bytes[c] += o.unique_write_bytes[c];
      read_bytes[c] += o.read_bytes[c];
      write_bytes[c] += o.write_bytes[c];
      for (int w = 0; w < kWidths; ++w) {
        reads[c][w] += o.reads[c][w];
        writes[c][w] += o.writes[c][w];
      }
    }
  }
};

struct Memory {
  std::vector<Range> ranges;  // sorted by lo once a launch starts
  std::vector<std::unique_ptr<uint8_t[]>> touched;
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  Counts totals;
  std::mutex mu;
  void clear() {
    ranges.clear();
    touched.clear();
    lo = UINTPTR_MAX;
    hi = 0;
  }
  void add(const void* p, size_t bytes, int category) {
    if (bytes == 0 || p == nullptr) return;
    const auto a = reinterpret_cast<uintptr_t>(p);
    uint8_t* t = nullptr;
#ifdef CUDA_SIM_COUNT_ACCESSES
    touched.emplace_back(new uint8_t[bytes]());
    t = touched.back().get();
#endif
    ranges.push_back({a, a + bytes, category, t});
    lo = std::min(lo, a);
    hi = std::max(hi, a + bytes);
  }
  void seal() {
    // (lo, then the larger range last: an aliasing scalar resolves to the larger)
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.lo != y.lo ? x.lo < y.lo : x.hi < y.hi; });
  }
  // Adds the launch's distinct bytes to the totals and clears the marks.
  void tally() {
    for (Range& r : ranges) {
      if (r.touched == nullptr) continue;
      for (uintptr_t i = 0; i < r.hi - r.lo; ++i) {
        totals.unique_read_bytes[r.category] += r.touched[i] & 1u;
        totals.unique_write_bytes[r.category] += (r.touched[i] >> 1) & 1u;
        r.touched[i] = 0;
      }
    }
  }
  const Range* find(uintptr_t a) const {
    if (a < lo || a >= hi) return nullptr;
    auto it = std::upper_bound(ranges.begin(), ranges.end(), a, [](uintptr_t v, const Range& r) { return v < r.lo; });
    if (it == ranges.begin()) return nullptr;
    --it;
    return a < it->hi ? &*it : nullptr;
  }
};

inline Memory& memory() {
  static Memory m;
  return m;
}

// ------------------------------------------------------------ threads
enum class State { kRunnable, kBarrier, kCollective, kExited };
enum class Kind { kShflIdx, kShflXor, kShflUp, kShflDown, kBallot, kAny, kAll, kSyncWarp };

inline const char* kind_name(Kind k) {
  static const char* names[] = {"__shfl_sync", "__shfl_xor_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
  return names[static_cast<int>(k)];
}

#if defined(__x86_64__) && !defined(CUDA_SIM_UCONTEXT)
#define CUDA_SIM_FAST_SWITCH 1
// Saves the callee-saved registers and the SSE / x87 control words on the
// current stack, stores the stack pointer to *from, continues on `to`.
// Top-level assembly (a weak, hidden symbol: one copy per library whatever
// includes this), so no compiler instrumentation (TSan hooks, gcov) enters it.
extern "C" void cuda_sim_switch_stack(void** from, void* to);
asm(".text\n .weak cuda_sim_switch_stack\n .hidden cuda_sim_switch_stack\n .type cuda_sim_switch_stack, @function\n"
    "cuda_sim_switch_stack:\n"
    " pushq %rbp\n pushq %rbx\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
    " subq $8, %rsp\n stmxcsr (%rsp)\n fnstcw 4(%rsp)\n"
    " movq %rsp, (%rdi)\n movq %rsi, %rsp\n"
    " ldmxcsr (%rsp)\n fldcw 4(%rsp)\n addq $8, %rsp\n"
    " popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbx\n popq %rbp\n ret\n"
    " .size cuda_sim_switch_stack, .-cuda_sim_switch_stack\n");
inline void switch_stack(void** from, void* to) { cuda_sim_switch_stack(from, to); }

// A fresh stack that switch_stack enters at entry() (which never returns).
inline void* initial_stack(char* base, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(base + bytes) & ~static_cast<uintptr_t>(15);
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                  // entry's return address (none)
  *--sp = reinterpret_cast<uint64_t>(entry);  // switch_stack's ret lands here
  for (int r = 0; r < 6; ++r) *--sp = 0;      // rbp rbx r12 r13 r14 r15
  *--sp = 0x1F80u | (uint64_t{0x037F} << 32);  // mxcsr, x87 control word: the defaults
  return sp;
}
#endif

struct Fiber {
#ifdef CUDA_SIM_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx{};
#endif
  char* stack = nullptr;
  unsigned tid = 0;
  State state = State::kRunnable;
  // where it waits
  const char* file = nullptr;
  int line = 0;
  Kind kind = Kind::kSyncWarp;
  uint32_t mask = 0;
  uint64_t value = 0;
  int arg = 0, width = 32;
  uint64_t result = 0;
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;
  size_t stack_bytes = 0;
#ifdef CUDA_SIM_FAST_SWITCH
  void* scheduler = nullptr;
#else
  ucontext_t scheduler{};
#endif
  Fiber* current = nullptr;
  const std::function<void()>* kernel = nullptr;
  std::string error;
  Dim3 block_idx, grid_dim, block_dim;
  Counts counts;
#ifdef CUDA_SIM_ASAN
  void* fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
#ifdef CUDA_SIM_TSAN
  void* sched_fiber = nullptr;
  std::vector<void*> tsan_fibers;
  ~BlockRun() {
    for (void* f : tsan_fibers) __tsan_destroy_fiber(f);
  }
#endif
};

// initial-exec: read on every instrumented access, so no __tls_get_addr call
inline thread_local BlockRun* tls_block __attribute__((tls_model("initial-exec"))) = nullptr;

inline Dim3 thread_idx() { return Dim3{tls_block->current->tid, 0, 0}; }
inline Dim3 block_idx() { return tls_block->block_idx; }
inline Dim3 grid_dim() { return tls_block->grid_dim; }
inline Dim3 block_dim() { return tls_block->block_dim; }

// The switches between a fiber and the block's scheduler, annotated for the
// sanitizers (ASan must know the stack changes; TSan which fiber runs).
inline void switch_to_fiber(BlockRun& b, Fiber& f) {
  b.current = &f;
#ifdef CUDA_SIM_ASAN
  __sanitizer_start_switch_fiber(&b.fake_stack, f.stack, b.stack_bytes);
#endif
#ifdef CUDA_SIM_TSAN
  __tsan_switch_to_fiber(b.tsan_fibers[f.tid], 0);
#endif
#ifdef CUDA_SIM_FAST_SWITCH
  switch_stack(&b.scheduler, f.sp);
#else
  swapcontext(&b.scheduler, &f.ctx);
#endif
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(b.fake_stack, nullptr, nullptr);
#endif
}

inline void switch_to_scheduler(bool exiting = false) {
  BlockRun& b = *tls_block;
  Fiber& f = *b.current;
#ifdef CUDA_SIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, b.sched_stack_bottom, b.sched_stack_size);
#else
  (void)exiting;
#endif
#ifdef CUDA_SIM_TSAN
  __tsan_switch_to_fiber(b.sched_fiber, 0);
#endif
#ifdef CUDA_SIM_FAST_SWITCH
  switch_stack(&f.sp, b.scheduler);
#else
  swapcontext(&f.ctx, &b.scheduler);
#endif
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(fake, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
}

// A failure ends the block: the message is kept, the fiber never resumes,
// and the launch reports it.
[[noreturn]] inline void fail(const std::string& msg) {
  BlockRun& b = *tls_block;
  if (b.error.empty()) b.error = msg;
  b.current->state = State::kExited;
  for (;;) switch_to_scheduler(true);
}

inline std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

inline std::string thread_name() {
  const BlockRun& b = *tls_block;
  return "block " + std::to_string(b.block_idx.x) + " thread " + std::to_string(b.current->tid);
}

inline void assume_true(bool cond, const char* text, const char* file, int line) {
  if (!cond) fail("__builtin_assume(" + std::string(text) + ") is false at " + where(file, line) + " in " + thread_name());
}

inline void fiber_main() {
  BlockRun& b = *tls_block;
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
  (*b.kernel)();
  b.current->state = State::kExited;
  for (;;) switch_to_scheduler(true);
}

// Runs the block's threads in the configured order until each waits or ends.
inline std::vector<unsigned> run_order(const BlockRun& b, uint64_t round) {
  std::vector<unsigned> order(b.fibers.size());
  for (unsigned i = 0; i < order.size(); ++i) order[i] = i;
  const Config& c = config();
  if (c.order == Order::kReverse) {
    std::reverse(order.begin(), order.end());
  } else if (c.order == Order::kShuffle) {
    std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + b.block_idx.x * 1000003ull + round);
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

inline std::string describe(const Fiber& f) {
  switch (f.state) {
    case State::kRunnable:
      return "runnable";
    case State::kExited:
      return "exited";
    case State::kBarrier:
      return "at __syncthreads (" + where(f.file, f.line) + ")";
    case State::kCollective:
      return std::string("at ") + kind_name(f.kind) + " (" + where(f.file, f.line) + ", mask 0x" +
             [&] {
               char s[16];
               std::snprintf(s, sizeof s, "%08x", f.mask);
               return std::string(s);
             }() +
             ")";
  }
  return "?";
}

inline uint32_t lane_of(unsigned tid) { return tid % 32u; }

// Completes one warp collective whose lanes have all arrived, or reports why
// it cannot complete.  Returns true when some collective completed.
inline bool resolve_collectives(BlockRun& b, std::string& err) {
  bool progressed = false;
  const unsigned n = static_cast<unsigned>(b.fibers.size());
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    for (unsigned t = w0; t < std::min(n, w0 + 32); ++t) {
      Fiber& lead = b.fibers[t];
      if (lead.state != State::kCollective) continue;
      const uint32_t mask = lead.mask;
      if (!(mask >> lane_of(t) & 1u)) {
        err = "block " + std::to_string(b.block_idx.x) + " thread " + std::to_string(t) + ": its own lane is not in the mask of " + describe(lead);
        return false;
      }
      bool complete = true;
      for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        const unsigned u = w0 + l;
        const auto who = [&] { return "block " + std::to_string(b.block_idx.x) + " thread " + std::to_string(t) + " " + describe(lead); };
        if (u >= n) {
          err = who() + ": the mask names lane " + std::to_string(l) + ", which the block does not have";
          return false;
        }
        const Fiber& o = b.fibers[u];
        if (o.state == State::kExited) {
          err = who() + ": the mask names lane " + std::to_string(l) + ", which has exited";
          return false;
        }
        if (o.state == State::kBarrier) {
          err = who() + ": the mask names lane " + std::to_string(l) + ", which waits " + describe(o);
          return false;
        }
        if (o.state == State::kRunnable) {
          complete = false;
          break;
        }
        if (o.kind != lead.kind || o.line != lead.line || std::strcmp(o.file, lead.file) != 0 || o.mask != mask) {
          err = who() + ": lane " + std::to_string(l) + " of its mask waits at another collective, " + describe(o);
          return false;
        }
      }
      if (!complete) continue;
      // Every lane's result from one snapshot of the values.
      uint32_t votes = 0;
      for (unsigned l = 0; l < 32; ++l) {
        if ((mask >> l & 1u) && b.fibers[w0 + l].value != 0) votes |= 1u << l;
      }
      for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        Fiber& f = b.fibers[w0 + l];
        const int width = f.width;
        const unsigned seg = l & ~static_cast<unsigned>(width - 1);
        int src = static_cast<int>(l);
        switch (f.kind) {
          case Kind::kShflIdx:
            src = static_cast<int>(seg) + (f.arg & (width - 1));
            break;
          case Kind::kShflXor:
            src = static_cast<int>(l ^ static_cast<unsigned>(f.arg));
            if (src >= static_cast<int>(seg) + width) src = static_cast<int>(l);
            break;
          case Kind::kShflUp:
            src = static_cast<int>(l) - f.arg;
            if (src < static_cast<int>(seg)) src = static_cast<int>(l);
            break;
          case Kind::kShflDown:
            src = static_cast<int>(l) + f.arg;
            if (src >= static_cast<int>(seg) + width) src = static_cast<int>(l);
            break;
          default:
            break;
        }
        switch (f.kind) {
          case Kind::kShflIdx:
          case Kind::kShflXor:
          case Kind::kShflUp:
          case Kind::kShflDown:
            if (!(mask >> src & 1u)) {
              err = "block " + std::to_string(b.block_idx.x) + " thread " + std::to_string(w0 + l) + " " + describe(f) +
                    ": reads lane " + std::to_string(src) + ", which is not in the mask (undefined on a GPU)";
              return false;
            }
            f.result = b.fibers[w0 + src].value;
            break;
          case Kind::kBallot:
            f.result = votes;
            break;
          case Kind::kAny:
            f.result = votes != 0;
            break;
          case Kind::kAll:
            f.result = votes == mask;
            break;
          case Kind::kSyncWarp:
            f.result = 0;
            break;
        }
      }
      for (unsigned l = 0; l < 32; ++l) {
        if (mask >> l & 1u) b.fibers[w0 + l].state = State::kRunnable;
      }
      progressed = true;
    }
  }
  return progressed;
}

// Opens __syncthreads when every live thread waits at the same one.
inline bool resolve_barrier(BlockRun& b, std::string& err) {
  const Fiber* first = nullptr;
  unsigned exited = 0, waiting = 0;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kExited) {
      ++exited;
    } else if (f.state == State::kBarrier) {
      ++waiting;
      if (first == nullptr) first = &f;
    }
  }
  if (first == nullptr) return false;
  const std::string blk = "block " + std::to_string(b.block_idx.x) + ": ";
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kCollective) {
      err = blk + "thread " + std::to_string(f.tid) + " waits " + describe(f) + " while thread " + std::to_string(first->tid) +
            " waits " + describe(*first) + " (deadlock)";
      return false;
    }
    if (f.state == State::kBarrier && (f.line != first->line || std::strcmp(f.file, first->file) != 0)) {
      err = blk + "threads wait at different __syncthreads: thread " + std::to_string(first->tid) + " " + describe(*first) +
            ", thread " + std::to_string(f.tid) + " " + describe(f);
      return false;
    }
  }
  if (exited > 0) {
    err = blk + std::to_string(exited) + " threads exited while " + std::to_string(waiting) + " wait " + describe(*first) +
          ": a __syncthreads that some threads skip";
    return false;
  }
  for (Fiber& f : b.fibers) f.state = State::kRunnable;
  return true;
}

extern "C" inline void cuda_sim_fiber_entry() { fiber_main(); }

// Runs one block of `threads` threads to completion.  Returns "" or the failure.
inline std::string run_block(BlockRun& b, unsigned threads, const std::function<void()>& kernel) {
  const size_t stack = config().stack_bytes;
  if (b.fibers.size() != threads || b.stack_bytes != stack) {
    b.fibers.assign(threads, Fiber{});
    b.stacks.reset(new char[stack * threads]);
    b.stack_bytes = stack;
  }
  b.kernel = &kernel;
  b.error.clear();
  b.block_dim = Dim3{threads, 1, 1};
#ifdef CUDA_SIM_TSAN
  b.sched_fiber = __tsan_get_current_fiber();
  if (b.tsan_fibers.size() != threads) {
    for (void* f : b.tsan_fibers) __tsan_destroy_fiber(f);
    b.tsan_fibers.assign(threads, nullptr);
    for (auto& f : b.tsan_fibers) f = __tsan_create_fiber(0);
  }
#endif
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f = Fiber{};
    f.tid = t;
    f.stack = b.stacks.get() + stack * t;
#ifdef CUDA_SIM_FAST_SWITCH
    f.sp = initial_stack(f.stack, stack, cuda_sim_fiber_entry);
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = stack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, cuda_sim_fiber_entry, 0);
#endif
  }
  BlockRun* saved = tls_block;
  tls_block = &b;
  std::string err;
  for (uint64_t round = 0;; ++round) {
    for (unsigned t : run_order(b, round)) {
      if (b.fibers[t].state == State::kRunnable) switch_to_fiber(b, b.fibers[t]);
      if (!b.error.empty()) break;
    }
    if (!b.error.empty()) {
      err = b.error;
      break;
    }
    bool all_exited = true;
    for (const Fiber& f : b.fibers) all_exited = all_exited && f.state == State::kExited;
    if (all_exited) break;
    if (resolve_collectives(b, err)) continue;
    if (!err.empty()) break;
    if (resolve_barrier(b, err)) continue;
    if (err.empty()) err = "block " + std::to_string(b.block_idx.x) + ": deadlock";
    break;
  }
  tls_block = saved;
  return err;
}

// Launches kernel() on a grid of `grid` blocks of `threads` threads.
// Throws std::runtime_error with the first failure.
inline void launch(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
  Memory& mem = memory();
  mem.seal();
  const int workers = std::max(1, std::min<int>(config().workers, static_cast<int>(grid)));
  std::atomic<unsigned> next{0};
  std::mutex mu;
  std::string first_error;
  auto work = [&] {
    BlockRun b;
    b.grid_dim = Dim3{grid, 1, 1};
    for (unsigned blk; (blk = next.fetch_add(1)) < grid;) {
      b.block_idx = Dim3{blk, 0, 0};
      const std::string err = run_block(b, threads, kernel);
      if (!err.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.empty()) first_error = err;
        next.store(grid);
      }
    }
    std::lock_guard<std::mutex> lock(mem.mu);
    mem.totals.add(b.counts);
  };
  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(work);
    for (auto& t : pool) t.join();
  }
  mem.tally();
  if (!first_error.empty()) throw std::runtime_error("CUDA emulator: " + first_error);
}

// ------------------------------------------------------------ accesses
// The access-counting build (CUDA_SIM_COUNT_ACCESSES) compiles the kernels
// with GCC's ThreadSanitizer instrumentation and no TSan runtime: every load
// and store calls a hook (__tsan_read4, __tsan_write16, ...), defined in
// sim_runtime.cpp, an uninstrumented file.  -fno-tree-sra keeps a Vec<float>
// access one 16-byte access, so the widths recorded are the source's (the
// machine code's widths are tests/test_sass_gates.py's to check).  The hook
// counts every access to a registered allocation by category and width, and
// fails the launch on a misaligned one (a GPU faults there).
inline int width_index(size_t size) { return size >= 16 ? 4 : size >= 8 ? 3 : size >= 4 ? 2 : size >= 2 ? 1 : 0; }

// ------------------------------------------------------------ built-ins
template <typename T>
inline T collective(Kind kind, const char* file, int line, uint32_t mask, T value, int arg, int width) {
  static_assert(sizeof(T) <= 8, "collectives take 32- or 64-bit values");
  BlockRun& b = *tls_block;
  Fiber& f = *b.current;
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail("bad width " + std::to_string(width) + " at " + where(file, line));
  f.state = State::kCollective;
  f.kind = kind;
  f.file = file;
  f.line = line;
  f.mask = mask;
  f.arg = arg;
  f.width = width;
  f.value = 0;
  std::memcpy(&f.value, &value, sizeof(T));
  switch_to_scheduler();
  T out;
  std::memcpy(&out, &f.result, sizeof(T));
  return out;
}

inline void syncthreads(const char* file, int line) {
  Fiber& f = *tls_block->current;
  f.state = State::kBarrier;
  f.file = file;
  f.line = line;
  switch_to_scheduler();
}

inline void threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
#ifdef CUDA_SIM_TSAN
  // TSan does not see fences.  A fence is modelled as an acquire and a
  // release of one token (a total order of fences): synchronisation the
  // fence + relaxed RMW protocol gives, never more than that protocol needs
  // for the ticket (an over-approximation: it cannot make TSan report a race
  // that the fences prevent, and a missing fence or atomic is still a race).
  static char token;
  __tsan_acquire(&token);
  __tsan_release(&token);
#endif
}

}  // namespace cuda_sim

#define threadIdx (::cuda_sim::thread_idx())
#define blockIdx (::cuda_sim::block_idx())
#define gridDim (::cuda_sim::grid_dim())
#define blockDim (::cuda_sim::block_dim())
#define warpSize 32

#define __syncthreads() ::cuda_sim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_sim::collective<int>(::cuda_sim::Kind::kSyncWarp, __FILE__, __LINE__, ::cuda_sim::syncwarp_mask(__VA_ARGS__), 0, 0, 32)
#define __shfl_sync(mask, v, src, ...) ::cuda_sim::collective(::cuda_sim::Kind::kShflIdx, __FILE__, __LINE__, (mask), (v), (src), ::cuda_sim::width_or_32(__VA_ARGS__))
#define __shfl_xor_sync(mask, v, lm, ...) ::cuda_sim::collective(::cuda_sim::Kind::kShflXor, __FILE__, __LINE__, (mask), (v), (lm), ::cuda_sim::width_or_32(__VA_ARGS__))
#define __shfl_up_sync(mask, v, d, ...) ::cuda_sim::collective(::cuda_sim::Kind::kShflUp, __FILE__, __LINE__, (mask), (v), static_cast<int>(d), ::cuda_sim::width_or_32(__VA_ARGS__))
#define __shfl_down_sync(mask, v, d, ...) ::cuda_sim::collective(::cuda_sim::Kind::kShflDown, __FILE__, __LINE__, (mask), (v), static_cast<int>(d), ::cuda_sim::width_or_32(__VA_ARGS__))
#define __ballot_sync(mask, pred) static_cast<unsigned>(::cuda_sim::collective<uint32_t>(::cuda_sim::Kind::kBallot, __FILE__, __LINE__, (mask), (pred) ? 1u : 0u, 0, 32))
#define __any_sync(mask, pred) static_cast<int>(::cuda_sim::collective<uint32_t>(::cuda_sim::Kind::kAny, __FILE__, __LINE__, (mask), (pred) ? 1u : 0u, 0, 32))
#define __all_sync(mask, pred) static_cast<int>(::cuda_sim::collective<uint32_t>(::cuda_sim::Kind::kAll, __FILE__, __LINE__, (mask), (pred) ? 1u : 0u, 0, 32))

namespace cuda_sim {
inline uint32_t syncwarp_mask() { return 0xffffffffu; }
inline uint32_t syncwarp_mask(uint32_t m) { return m; }
inline int width_or_32() { return 32; }
inline int width_or_32(int w) { return w; }
}  // namespace cuda_sim

inline void __threadfence() { ::cuda_sim::threadfence(); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return __builtin_fma(a, b, c); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
inline bool __isGlobal(const void* p) {
  // The kernels assume their table addresses are global: a registered device allocation.
  return ::cuda_sim::memory().find(reinterpret_cast<uintptr_t>(p)) != nullptr;
}
