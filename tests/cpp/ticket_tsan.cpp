// The kernels' last-block ticket under real concurrency, for ThreadSanitizer.
//
// Compiles csrc/fused_kernels.cuh for the CPU exactly as the extension does
// (cpu_launch.h), but with std::thread instead of at::parallel_for (TSan
// does not see through libgomp's barriers) and without torch.  Many chunks
// spread over several threads, hundreds of steps: every block reads the
// schedule counter, the live LR / beta1 and Adam's per-tensor steps; the last
// block advances them and writes the next LR / beta1 into the same floats.
// Checks the counters exactly and the parameters bit for bit against a
// one-thread run; any data race is TSan's to report (tests/test_cpu_backend.py
// builds this with -fsanitize=thread and fails on a report).
#include "cpu_launch.h"
// kernel headers after cpu_launch.h
#include "fused_kernels.cuh"

#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

using namespace clr_fused;

namespace {

// CyclicLR(0.001, 0.01, step_size_up=3), triangular, cycled beta1 0.85..0.95
constexpr double kRows[kRowWidth] = {0, kCyclic, 0.001, 0.01, 3, 3, 0, 1.0, 1, 0.85, 0.95};

struct Problem {
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<float> step;
  int64_t counter = 0;
  int32_t ticket = 0;
  float live[2] = {0.001f, 0.95f};  // {lr, beta1} at step 0
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

// Runs `steps` Adam steps with a CyclicLR row on `threads` threads.
void run(Problem& pr, int threads, int steps) {
  const int64_t T = static_cast<int64_t>(pr.p.size());
  std::vector<int64_t> pa, ga, ma, va, sa, numels;
  std::vector<int32_t> chunk_tensor;
  std::vector<int64_t> chunk_start;
  for (int64_t t = 0; t < T; ++t) {
    pa.push_back(reinterpret_cast<int64_t>(pr.p[t].data()));
    ga.push_back(reinterpret_cast<int64_t>(pr.g[t].data()));
    ma.push_back(reinterpret_cast<int64_t>(pr.m[t].data()));
    va.push_back(reinterpret_cast<int64_t>(pr.v[t].data()));
    sa.push_back(reinterpret_cast<int64_t>(&pr.step[t]));
    const int64_t n = static_cast<int64_t>(pr.p[t].size());
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
  AdamHyper h{0.9f, 0.1f, 0.999f, 0.001f, 1e-8f, 0.f, 0.9, 0.999, 0.0, false, false, false, false, sa.data()};
  const unsigned grid = static_cast<unsigned>(chunk_tensor.size());
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
    cpu::run_grid(grid, parallel_for, [&] { adam_kernel<float, float, 2>(tb, in, h); });
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
  int bad = 0;
  if (threaded.counter != steps || serial.counter != steps) {
    std::printf("schedule counter %lld (threads) %lld (serial), expected %d\n", (long long)threaded.counter,
                (long long)serial.counter, steps);
    ++bad;
  }
  const LrMom want = evaluate_rows(kRows, 1, steps, nullptr);
  if (threaded.live[0] != static_cast<float>(want.lr) || threaded.live[1] != static_cast<float>(want.mom)) {
    std::printf("live lr/beta1 %g/%g, expected %g/%g\n", threaded.live[0], threaded.live[1], static_cast<float>(want.lr), static_cast<float>(want.mom));
    ++bad;
  }
  if (threaded.ticket != 0) {
    std::printf("ticket left at %d\n", threaded.ticket);
    ++bad;
  }
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (threaded.step[t] != static_cast<float>(steps)) {
      std::printf("tensor %zu: Adam step %f, expected %d\n", t, threaded.step[t], steps);
      ++bad;
    }
    if (std::memcmp(threaded.p[t].data(), serial.p[t].data(), sizes[t] * sizeof(float)) != 0) {
      std::printf("tensor %zu: parameters differ from the one-thread run\n", t);
      ++bad;
    }
  }
  size_t chunks = 0;
  for (int64_t n : sizes) chunks += (n + kChunk - 1) / kChunk;
  std::printf("%s: %zu tensors, %zu chunks, 4 threads, %d steps\n", bad ? "FAILED" : "ok", sizes.size(), chunks, steps);
  return bad ? 1 : 0;
}
