// The last-block ticket on the CUDA emulator, under ThreadSanitizer.
//
// csrc/fused_kernels.cuh's Adam kernel with the GPU's semantics (cuda_sim.h:
// relaxed atomicAdd, __threadfence a fence, 512 threads per block as fibers
// that TSan is told about) on the problem of tests/cpp/ticket_problem.h,
// blocks on 4 worker threads at once.  A data race (a missing fence, a
// non-atomic ticket, the plain-store ticket reset this found) is TSan's to
// report; the counters and the parameters are checked against a one-worker
// run.  Built and run by tests/test_gpu_sim.py (also with the planted bugs
// of planted.py).
#include "cuda_sim.h"
// kernel headers after cuda_sim.h
#include "fused_kernels.cuh"
#include "ticket_problem.h"

using namespace ticket_problem;

namespace {

void run(Problem& pr, int workers, int steps) {
  cuda_sim::Memory& mem = cuda_sim::memory();
  mem.clear();  // what __isGlobal accepts: the tensors
  for (size_t t = 0; t < pr.p.size(); ++t) {
    for (auto* list : {&pr.p, &pr.g, &pr.m, &pr.v}) mem.add((*list)[t].data(), (*list)[t].size() * sizeof(float), 0);
  }
  Launch l;
  prepare(pr, l);
  cuda_sim::config().workers = workers;
  for (int s = 0; s < steps; ++s) {
    cuda_sim::launch(l.grid, kThreads, [&] { adam_kernel<float, float, 2>(l.tb, l.in, l.h); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 40;
  std::vector<int64_t> sizes;
  for (int i = 0; i < 12; ++i) sizes.push_back(1 + (i * 7919) % 3 * kChunk / 2 + i);
  sizes.push_back(2 * kChunk + 3);
  Problem serial = make(sizes), threaded = make(sizes);
  try {
    run(serial, 1, steps);
    run(threaded, 4, steps);
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
  const int bad = check(serial, threaded, sizes, steps);
  std::printf("%s: %zu tensors, %zu chunks of 512 threads, 4 workers, %d steps\n", bad ? "FAILED" : "ok", sizes.size(),
              chunks(sizes), steps);
  return bad ? 1 : 0;
}
