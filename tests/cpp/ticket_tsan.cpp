// The kernels' last-block ticket under real concurrency, for ThreadSanitizer.
//
// Compiles csrc/fused_kernels.cuh for the CPU exactly as the extension does
// (cpu_launch.h), but with std::thread instead of at::parallel_for (TSan
// does not see through libgomp's barriers) and without torch: the Adam
// problem of ticket_problem.h over many chunks on several threads, hundreds
// of steps.  Checks the counters exactly and the parameters bit for bit
// against a one-thread run; any data race is TSan's to report
// (tests/test_cpu_backend.py builds this with -fsanitize=thread and fails
// on a report).  tests/gpu_sim/sim_tsan.cpp runs the same problem on the
// CUDA emulator.
#include "cpu_launch.h"
// kernel headers after cpu_launch.h
#include "fused_kernels.cuh"
#include "ticket_problem.h"

#include <thread>

using namespace ticket_problem;

namespace {

// Runs `steps` Adam steps on `threads` threads.
void run(Problem& pr, int threads, int steps) {
  Launch l;
  prepare(pr, l);
  auto parallel_for = [threads](int64_t n, const auto& body) {
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w) {
      // interleave the ranges so neighbouring chunks race
      pool.emplace_back([&, w] {
        for (int64_t b = w; b < n; b += threads) body(b, b + 1);
      });
    }
    for (auto& th : pool) th.join();
  };
  for (int s = 0; s < steps; ++s) {
    cpu::run_grid(l.grid, parallel_for, [&] { adam_kernel<float, float, 2>(l.tb, l.in, l.h); });
  }
}

}  // namespace

int main() {
  std::vector<int64_t> sizes;
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + (i * 7919) % 3 * kChunk / 2 + i);  // 1..~2 chunks each
  sizes.push_back(5 * kChunk + 3);
  const int steps = 200;
  Problem serial = make(sizes), threaded = make(sizes);
  run(serial, 1, steps);
  run(threaded, 4, steps);
  const int bad = check(serial, threaded, sizes, steps);
  std::printf("%s: %zu tensors, %zu chunks, 4 threads, %d steps\n", bad ? "FAILED" : "ok", sizes.size(), chunks(sizes), steps);
  return bad ? 1 : 0;
}
