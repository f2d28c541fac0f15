// The emulator checked on its own: each case is a tiny kernel that a GPU
// runs correctly, or one it punishes (hang, undefined result, fault), and
// the emulator must compute the first and report the second.
// Usage: sim_selftest CASE [order]; prints "ok: ..." or "reported: <message>"
// and exits 0 when the case behaved as expected.  tests/test_gpu_sim.py runs
// every case in every order.
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_sim.h"

namespace {

using Kernel = std::function<void()>;

// Runs one block of `threads`; returns the failure ("" if none).
std::string run(unsigned threads, const Kernel& k, unsigned grid = 1) {
  try {
    cuda_sim::launch(grid, threads, k);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

bool expect_report(const std::string& err, const std::string& needle) {
  if (err.find(needle) == std::string::npos) {
    std::printf("expected a report containing '%s', got '%s'\n", needle.c_str(), err.c_str());
    return false;
  }
  std::printf("reported: %s\n", err.c_str());
  return true;
}

bool expect_ok(const std::string& err, bool cond, const char* what) {
  if (!err.empty() || !cond) {
    std::printf("FAILED %s: %s\n", what, err.empty() ? "wrong result" : err.c_str());
    return false;
  }
  std::printf("ok: %s\n", what);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  cuda_sim::config().order = static_cast<cuda_sim::Order>(argc > 2 ? std::atoi(argv[2]) : 0);
  std::vector<int> out(64, -1);
  std::vector<float> data(64, 0.f);
  cuda_sim::memory().clear();
  cuda_sim::memory().add(data.data(), data.size() * sizeof(float), 0);

  if (which == "shuffles") {  // every collective's result, two warps
    std::vector<unsigned> r(64 * 6);
    const std::string err = run(64, [&] {
      const unsigned t = threadIdx.x, l = t % 32;
      r[t * 6 + 0] = __shfl_xor_sync(0xffffffffu, t * 10, 5);
      r[t * 6 + 1] = __shfl_sync(0xffffffffu, t, 7);
      r[t * 6 + 2] = __shfl_down_sync(0xffffffffu, t, 3);
      r[t * 6 + 3] = __shfl_up_sync(0xffffffffu, t, 2, 16);
      r[t * 6 + 4] = __ballot_sync(0xffffffffu, l % 3 == 0);
      r[t * 6 + 5] = static_cast<unsigned>(__any_sync(0xffffffffu, l == 31)) + 2u * __all_sync(0xffffffffu, l < 31);
      __syncwarp();
    });
    bool good = true;
    uint32_t ballot = 0;
    for (unsigned l = 0; l < 32; l += 3) ballot |= 1u << l;
    for (unsigned t = 0; t < 64; ++t) {
      const unsigned w = t / 32 * 32, l = t % 32;
      good = good && r[t * 6 + 0] == (w + (l ^ 5)) * 10 && r[t * 6 + 1] == w + 7;
      good = good && r[t * 6 + 2] == (l + 3 < 32 ? t + 3 : t) && r[t * 6 + 3] == (l % 16 >= 2 ? t - 2 : t);
      good = good && r[t * 6 + 4] == ballot && r[t * 6 + 5] == 1u;
    }
    return expect_ok(err, good, "xor / idx / down / up(width 16) shuffles, ballot, any, all") ? 0 : 1;
  }
  if (which == "barrier") {  // a barrier orders a write before the others' reads, in any order
    const std::string err = run(64, [&] {
      __shared__ int flag;
      if (threadIdx.x == 0) flag = 42;
      __syncthreads();
      out[threadIdx.x] = flag;
    });
    bool good = true;
    for (int t = 0; t < 64; ++t) good = good && out[t] == 42;
    return expect_ok(err, good, "__shared__ write, __syncthreads, every thread reads it") ? 0 : 1;
  }
  if (which == "missing-barrier") {  // without it, the reversed order reads the stale value
    const std::string err = run(64, [&] {
      __shared__ int flag;
      if (threadIdx.x == 0) flag = 0;
      __syncthreads();
      if (threadIdx.x == 0) flag = 42;
      out[threadIdx.x] = flag;
    });
    int stale = 0;
    for (int t = 1; t < 64; ++t) stale += out[t] != 42;
    std::printf("%d threads read the value before thread 0 wrote it\n", stale);
    return err.empty() && (cuda_sim::config().order == cuda_sim::Order::kForward ? stale == 0 : stale > 0) ? 0 : 1;
  }
  if (which == "exited-lane") {
    return expect_report(run(32, [&] {
                           if (threadIdx.x == 3) return;
                           out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
                         }),
                         "which has exited")
               ? 0
               : 1;
  }
  if (which == "different-collectives") {
    return expect_report(run(32, [&] {
                           if (threadIdx.x < 16) {
                             out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
                           } else {
                             out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
                           }
                         }),
                         "waits at another collective")
               ? 0
               : 1;
  }
  if (which == "lane-outside-mask") {
    return expect_report(run(32, [&] { out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 16); }), "not in the mask")
               ? 0
               : 1;
  }
  if (which == "skipped-barrier") {
    return expect_report(run(64, [&] {
                           if (threadIdx.x == 63) return;
                           __syncthreads();
                         }),
                         "a __syncthreads that some threads skip")
               ? 0
               : 1;
  }
  if (which == "different-barriers") {
    return expect_report(run(64, [&] {
                           if (threadIdx.x % 2) {
                             __syncthreads();
                           } else {
                             __syncthreads();
                           }
                         }),
                         "different __syncthreads")
               ? 0
               : 1;
  }
  if (which == "deadlock") {  // half a warp at a barrier, the other half in a collective naming it
    return expect_report(run(32, [&] {
                           if (threadIdx.x < 16) {
                             __syncthreads();
                           } else {
                             out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
                           }
                         }),
                         "which waits at __syncthreads")
               ? 0
               : 1;
  }
  if (which == "assume") {
    int local = 0;
    return expect_report(run(32, [&] { __builtin_assume(__isGlobal(&local)); }), "is false") ? 0 : 1;
  }
  if (which == "blocks") {  // many blocks on several workers: a relaxed atomic counter, the ticket
    cuda_sim::config().workers = 4;
    int ticket = 0, last = 0;
    const std::string err = run(
        64,
        [&] {
          __shared__ bool is_last;
          __syncthreads();
          if (threadIdx.x == 0) {
            __threadfence();
            is_last = atomicAdd(&ticket, 1) == static_cast<int>(gridDim.x) - 1;
          }
          __syncthreads();
          if (is_last && threadIdx.x == 0) last += 1;
        },
        40);
    return expect_ok(err, ticket == 40 && last == 1, "40 blocks on 4 workers: one last block") ? 0 : 1;
  }
  std::printf("unknown case '%s'\n", which.c_str());
  return 2;
}
