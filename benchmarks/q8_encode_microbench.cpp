// Does the int8 codec's encode pay for its square roots on this CPU?
// (issue 28, item 5; README "Low-precision state", Speed.)
//
// The kernels' encode (csrc/low_precision.cuh q8_encode): code = round(127 *
// sqrt(r)) for the signed map, round(255 * sqrt(sqrt(r))) for the unsigned
// one, with correctly rounded sqrtf.  The candidate without square roots: an
// estimate of sqrt(r) (the rsqrt bit trick and one Newton step, within 0.2%,
// so within one code), corrected against the exact code boundaries: code q+1
// when K^2 r >= (q + 1/2)^2, tested exactly by the sign of one fused
// multiply-add.  Timed on 65,536 normal values, best of 50 x 20 passes, in the
// AVX-512 target the cpu backend dispatches to; then the candidate's signed
// codes are checked against the exact codes (long double) on every float in
// [0, 1].
//
//   g++ -O3 -fno-math-errno -ffp-contract=off -std=c++20 benchmarks/q8_encode_microbench.cpp -o /tmp/q8 && /tmp/q8
//
// 2026-12-03, this project's CI-like host (x86-64, AVX-512), one thread:
// signed 0.228 ns/element with sqrt, 0.429 without; unsigned 0.445 (two
// sqrts) vs 0.475-0.489 (one sqrt + the candidate); codes equal on the sample and
// 0 mismatches in the exhaustive check: the square roots are cheaper here.
// (Since 2026-12-07 the kernels take the unsigned map's 4th root as
// sqrt(sqrt(v) * sqrt(1 / scale)), sharing sqrt(v) with Adam's update; this
// file still times the two forms it was written for.)
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,prefer-vector-width=512"), noinline))

static inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
static inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

TARGET void encode_sqrt_signed(const float* x, float inv, int8_t* c, int n) {
  for (int e = 0; e < n; ++e) {
    int32_t q = static_cast<int32_t>(sqrtf(fabsf(x[e]) * inv) * 127.0f + 0.5f);
    q = q < 127 ? q : 127;
    c[e] = static_cast<int8_t>(x[e] < 0 ? -q : q);
  }
}

TARGET void encode_sqrt_unsigned(const float* x, float inv, uint8_t* c, int n) {
  for (int e = 0; e < n; ++e) {
    const int32_t q = static_cast<int32_t>(sqrtf(sqrtf(x[e] * inv)) * 255.0f + 0.5f);
    c[e] = static_cast<uint8_t>(q < 255 ? q : 255);
  }
}

static inline __attribute__((always_inline)) float approx_sqrt(float r) {
  float y = float_of(0x5f3759dfu - (bits_of(r) >> 1));
  y = y * (1.5f - 0.5f * r * y * y);
  return r * y;
}

// round-half-up(k * sqrt(r)) in real arithmetic, k * k = kk, at most qmax
static inline __attribute__((always_inline)) int32_t exact_code(float r, float k, float kk, int32_t qmax) {
  int32_t q = static_cast<int32_t>(approx_sqrt(r) * k + 0.5f);
  q = q < qmax ? q : qmax;
  const float hi = static_cast<float>(q) + 0.5f, lo = static_cast<float>(q) - 0.5f;
  q += (q < qmax) & (fmaf(r, kk, -hi * hi) >= 0.0f);
  q -= (q > 0) & (fmaf(r, kk, -lo * lo) < 0.0f);
  return q;
}

TARGET void encode_boundaries_signed(const float* x, float inv, int8_t* c, int n) {
  for (int e = 0; e < n; ++e) {
    const int32_t q = exact_code(fabsf(x[e]) * inv, 127.0f, 16129.0f, 127);
    c[e] = static_cast<int8_t>(x[e] < 0 ? -q : q);
  }
}

TARGET void encode_boundaries_unsigned(const float* x, float inv, uint8_t* c, int n) {
  for (int e = 0; e < n; ++e) c[e] = static_cast<uint8_t>(exact_code(sqrtf(x[e] * inv), 255.0f, 65025.0f, 255));
}

int main() {
  const int n = 1 << 16;
  std::vector<float> x(n), x2(n);
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  float mx = 0;
  for (int i = 0; i < n; ++i) { x[i] = normal(gen); x2[i] = x[i] * x[i]; mx = fmaxf(mx, fabsf(x[i])); }
  const float inv = 1.0f / mx, inv2 = 1.0f / (mx * mx);
  std::vector<int8_t> a(n), b(n);
  std::vector<uint8_t> au(n), bu(n);
  auto best_ns = [&](auto f) {
    double best = 1e9;
    for (int r = 0; r < 50; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < 20; ++k) f();
      const double ns = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20 / n * 1e9;
      best = best < ns ? best : ns;
    }
    return best;
  };
  std::printf("signed, sqrt:           %.3f ns/element\n", best_ns([&] { encode_sqrt_signed(x.data(), inv, a.data(), n); }));
  std::printf("signed, boundaries:     %.3f ns/element\n", best_ns([&] { encode_boundaries_signed(x.data(), inv, b.data(), n); }));
  std::printf("unsigned, two sqrts:    %.3f ns/element\n", best_ns([&] { encode_sqrt_unsigned(x2.data(), inv2, au.data(), n); }));
  std::printf("unsigned, one + bounds: %.3f ns/element\n", best_ns([&] { encode_boundaries_unsigned(x2.data(), inv2, bu.data(), n); }));
  int diff_s = 0, diff_u = 0;
  for (int i = 0; i < n; ++i) { diff_s += a[i] != b[i]; diff_u += au[i] != bu[i]; }
  std::printf("codes differing on the sample: signed %d, unsigned %d of %d\n", diff_s, diff_u, n);
  long bad = 0;
  for (uint32_t u = 0; u <= 0x3f800000u; ++u) {  // every float in [0, 1]
    const float r = float_of(u);
    const long double t = static_cast<long double>(r) * 16129.0L;  // exact: 24 + 14 bits
    int32_t ex = static_cast<int32_t>(floorl(sqrtl(t) + 0.5L));
    ex = ex > 127 ? 127 : ex;
    while (ex < 127 && t >= (ex + 0.5L) * (ex + 0.5L)) ++ex;
    while (ex > 0 && t < (ex - 0.5L) * (ex - 0.5L)) --ex;
    bad += exact_code(r, 127.0f, 16129.0f, 127) != ex;
  }
  std::printf("signed boundary codes vs exact, every float in [0, 1]: %ld mismatches\n", bad);
  return 0;
}
