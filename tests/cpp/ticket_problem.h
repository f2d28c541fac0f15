// The problem both ticket tests run (tests/cpp/ticket_tsan.cpp on the CPU
// build, tests/gpu_sim/sim_tsan.cpp on the CUDA emulator): Adam over many
// chunks of many tensors with a CyclicLR row that cycles beta1, so every
// block reads the schedule counter, the live LR / beta1 and the per-tensor
// steps, and the last block writes them.  Include after the kernel headers.
#pragma once

#include <cstdio>
#include <cstring>
#include <vector>

namespace ticket_problem {

using namespace clr_fused;

// CyclicLR(0.001, 0.01, step_size_up=3), triangular, cycled beta1 0.85..0.95
constexpr double kRows[kRowWidth] = {0, kCyclic, 0.001, 0.01, 3, 3, 0, 1.0, 1, 0.85, 0.95};

struct Problem {
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<float> step;
  int64_t counter = 0;
  int32_t ticket = 0;
  double live[2] = {0.001, 0.95};  // {lr, beta1} at step 0 (float64, as the live values)
};

inline Problem make(const std::vector<int64_t>& sizes) {
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

// The device tables and step inputs of one launch over the problem.
struct Launch {
  std::vector<int64_t> pa, ga, ma, va, sa, numels, chunk_start;
  std::vector<int32_t> chunk_tensor;
  Tables tb{};
  StepInputs in{};
  AdamHyper h{};
  unsigned grid = 0;
};

inline void prepare(Problem& pr, Launch& l) {
  for (size_t t = 0; t < pr.p.size(); ++t) {
    l.pa.push_back(reinterpret_cast<int64_t>(pr.p[t].data()));
    l.ga.push_back(reinterpret_cast<int64_t>(pr.g[t].data()));
    l.ma.push_back(reinterpret_cast<int64_t>(pr.m[t].data()));
    l.va.push_back(reinterpret_cast<int64_t>(pr.v[t].data()));
    l.sa.push_back(reinterpret_cast<int64_t>(&pr.step[t]));
    const int64_t n = static_cast<int64_t>(pr.p[t].size());
    l.numels.push_back(n);
    for (int64_t s = 0; s < n; s += kChunk) {
      l.chunk_tensor.push_back(static_cast<int32_t>(t));
      l.chunk_start.push_back(s);
    }
  }
  l.tb.addrs[0] = l.pa.data();
  l.tb.addrs[1] = l.ga.data();
  l.tb.addrs[2] = l.ma.data();
  l.tb.addrs[3] = l.va.data();
  l.tb.numels = l.numels.data();
  l.tb.chunk_tensor = l.chunk_tensor.data();
  l.tb.chunk_start = l.chunk_start.data();
  l.tb.num_tensors = static_cast<int64_t>(pr.p.size());
  l.in.rows = kRows;
  l.in.n_rows = 1;
  l.in.counter = &pr.counter;
  l.in.lr = &pr.live[0];
  l.in.mom = &pr.live[1];
  l.in.next = pr.live;
  l.in.ticket = &pr.ticket;
  l.in.advance = true;
  l.h = AdamHyper{0.9f, 0.1f, 0.999f, 0.001f, 1e-8f, 0.f, 0.9, 0.999, 0.0, false, false, false, false, l.sa.data(), nullptr};
  l.grid = static_cast<unsigned>(l.chunk_tensor.size());
}

// The counters exactly, the parameters bit for bit against a one-thread run.  Returns the failures.
inline int check(const Problem& serial, const Problem& threaded, const std::vector<int64_t>& sizes, int steps) {
  int bad = 0;
  if (threaded.counter != steps || serial.counter != steps) {
    std::printf("schedule counter %lld (threads) %lld (serial), expected %d\n", (long long)threaded.counter,
                (long long)serial.counter, steps);
    ++bad;
  }
  const LrMom want = evaluate_rows(kRows, 1, steps, nullptr);
  if (threaded.live[0] != want.lr || threaded.live[1] != want.mom) {
    std::printf("live lr/beta1 %.17g/%.17g, expected %.17g/%.17g\n", threaded.live[0], threaded.live[1], want.lr, want.mom);
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
      std::printf("tensor %zu: parameters differ from the one-thread run\n", t);
      ++bad;
    }
  }
  return bad;
}

inline size_t chunks(const std::vector<int64_t>& sizes) {
  size_t c = 0;
  for (int64_t n : sizes) c += (n + kChunk - 1) / kChunk;
  return c;
}

}  // namespace ticket_problem
