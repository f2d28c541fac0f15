// The last-block ticket on the CUDA emulator, under ThreadSanitizer.
//
// csrc/fused_kernels.cuh's Adam kernel with the GPU's semantics (cuda_sim.h:
// relaxed atomicAdd, __threadfence a fence, 512 threads per block as fibers
// that TSan is told about), many chunks, blocks on 4 worker threads at once,
// hundreds of steps with a CyclicLR row that cycles beta1: every block reads
// the schedule counter, the live LR / beta1 and the per-tensor steps, the
// last block writes them.  A data race (a missing fence, a non-atomic ticket)
// is TSan's to report; the counters and the parameters are checked against
// a one-worker run.  Built and run by tests/test_gpu_sim.py (also with the
// planted bugs of planted.py).
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_sim.h"
// kernel headers after cuda_sim.h
#include "fused_kernels.cuh"

using namespace clr_fused;

namespace {

// CyclicLR(0.001, 0.01, step_size_up=3), triangular, cycled beta1 0.85..0.95
constexpr double kRows[kRowWidth] = {0, kCyclic, 0.001, 0.01, 3, 3, 0, 1.0, 1, 0.85, 0.95};

struct Problem {
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<float> step;
  int64_t counter = 0;
  int32_t ticket = 0;
  float live[2] = {0.001f, 0.95f};
};

Problem make(const std::vector<int64_t>& sizes) {
  Problem pr;
  uint32_t s = 12345;
  auto rnd = [&s] {
    s = s * 1664525u + 1013904223u;
    return static_cast<float>(s >> 8) / 16777216.f - 0.5f;
  };
  for (int64_t n : sizes) {
    pr.p.emplace_back(n);
    pr.g.emplace_back(n);
    pr.m.emplace_back(n, 0.f);
    pr.v.emplace_back(n, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      pr.p.back()[i] = rnd();
      pr.g.back()[i] = rnd();
    }
  }
  pr.step.assign(sizes.size(), 0.f);
  return pr;
}

void run(Problem& pr, int workers, int steps) {
  const int64_t T = static_cast<int64_t>(pr.p.size());
  std::vector<int64_t> pa, ga, ma, va, sa, numels, chunk_start;
  std::vector<int32_t> chunk_tensor;
  cuda_sim::Memory& mem = cuda_sim::memory();
  mem.clear();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = static_cast<int64_t>(pr.p[t].size());
    for (auto* list : {&pr.p, &pr.g, &pr.m, &pr.v}) mem.add((*list)[t].data(), n * sizeof(float), 0);
    pa.push_back(reinterpret_cast<int64_t>(pr.p[t].data()));
    ga.push_back(reinterpret_cast<int64_t>(pr.g[t].data()));
    ma.push_back(reinterpret_cast<int64_t>(pr.m[t].data()));
    va.push_back(reinterpret_cast<int64_t>(pr.v[t].data()));
    sa.push_back(reinterpret_cast<int64_t>(&pr.step[t]));
    numels.push_back(n);
    for (int64_t s = 0; s < n; s += kChunk) {
      chunk_tensor.push_back(static_cast<int32_t>(t));
      chunk_start.push_back(s);
    }
  }
  Tables tb{};
  tb.addrs[0] = pa.data();
  tb.addrs[1] = ga.data();
  tb.addrs[2] = ma.data();
  tb.addrs[3] = va.data();
  tb.numels = numels.data();
  tb.chunk_tensor = chunk_tensor.data();
  tb.chunk_start = chunk_start.data();
  tb.num_tensors = T;
  StepInputs in{};
  in.rows = kRows;
  in.n_rows = 1;
  in.counter = &pr.counter;
  in.lr = &pr.live[0];
  in.mom = &pr.live[1];
  in.next = pr.live;
  in.ticket = &pr.ticket;
  in.advance = true;
  AdamHyper h{0.9f, 0.1f, 0.999f, 0.001f, 1e-8f, 0.f, 0.9, 0.999, 0.0, false, false, false, false, sa.data(), nullptr};
  cuda_sim::config().workers = workers;
  const unsigned grid = static_cast<unsigned>(chunk_tensor.size());
  for (int s = 0; s < steps; ++s) {
    cuda_sim::launch(grid, kThreads, [&] { adam_kernel<float, float, 2>(tb, in, h); });
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
  int bad = 0;
  if (threaded.counter != steps || serial.counter != steps) {
    std::printf("schedule counter %lld (4 workers) %lld (1), expected %d\n", (long long)threaded.counter, (long long)serial.counter, steps);
    ++bad;
  }
  const LrMom want = evaluate_rows(kRows, 1, steps, nullptr);
  if (threaded.live[0] != static_cast<float>(want.lr) || threaded.live[1] != static_cast<float>(want.mom)) {
    std::printf("live lr/beta1 %g/%g, expected %g/%g\n", threaded.live[0], threaded.live[1], static_cast<float>(want.lr),
                static_cast<float>(want.mom));
    ++bad;
  }
  if (threaded.ticket != 0 || serial.ticket != 0) {
    std::printf("ticket left at %d / %d\n", threaded.ticket, serial.ticket);
    ++bad;
  }
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (threaded.step[t] != static_cast<float>(steps)) {
      std::printf("tensor %zu: Adam step %f, expected %d\n", t, threaded.step[t], steps);
      ++bad;
    }
    if (std::memcmp(threaded.p[t].data(), serial.p[t].data(), sizes[t] * sizeof(float)) != 0) {
      std::printf("tensor %zu: parameters differ from the one-worker run\n", t);
      ++bad;
    }
  }
  size_t chunks = 0;
  for (int64_t n : sizes) chunks += (n + kChunk - 1) / kChunk;
  std::printf("%s: %zu tensors, %zu chunks of 512 threads, 4 workers, %d steps\n", bad ? "FAILED" : "ok", sizes.size(), chunks, steps);
  return bad ? 1 : 0;
}
