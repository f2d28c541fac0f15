// Schedule closed forms on the device: a line-by-line mirror of
// clr_fused/schedule_math.py (and of clr_fused/kernels/triton_schedule.py).
// Rows are float64 [n_rows][ROW_WIDTH] = {start_step, kind, params...}; the
// step is int64.  Integer parts stay int64, the fraction is float32.
#pragma once

#include <cstdint>

namespace clr_fused {

constexpr int kRowWidth = 16;

enum Kind : int {
  kConstant = 0,
  kCyclic = 1,
  kOneCycle = 2,
  kCosine = 3,
  kWarmRestarts = 4,
  kExponential = 5,
  kStep = 6,
  kMultiStep = 7,
  kPolynomial = 8,
  kLinear = 9,
  kConstantFactor = 10,
  kPlateau = 11,
};

struct LrMom {
  float lr;
  float mom;
};

__device__ __forceinline__ float f32(const double* p, int i) { return static_cast<float>(p[i]); }
__device__ __forceinline__ int64_t i64(const double* p, int i) { return static_cast<int64_t>(p[i]); }

// base**e for base > 0 (0 otherwise), as exp2(e * log2(base)) like the other paths.
__device__ __forceinline__ float pow_pos(float base, float e) {
  return base > 0.f ? exp2f(e * log2f(base)) : 0.f;
}

// (1 + cos(pi * frac)) / 2 written as cos(pi * frac / 2)**2 (no cancellation).
__device__ __forceinline__ float cos_weight(float frac) {
  float c = cosf(frac * 1.5707963267948966f);
  return c * c;
}

__device__ __forceinline__ float anneal(float start, float end, float pct, bool linear) {
  float w = linear ? 1.f - pct : cos_weight(pct);
  return end + (start - end) * w;
}

__device__ inline LrMom cyclic(const double* p, int64_t k) {
  float base_lr = f32(p, 0), max_lr = f32(p, 1);
  int64_t up = i64(p, 2), down = i64(p, 3), mode = i64(p, 4);
  float gamma = f32(p, 5), base_m = f32(p, 6), max_m = f32(p, 7);
  int64_t total = up + down;
  int64_t cycle = k / total + 1;
  int64_t pos = k % total;
  float posf = static_cast<float>(pos);
  float scale = pos <= up ? posf / static_cast<float>(up) : (static_cast<float>(total) - posf) / static_cast<float>(down);
  float amp = 1.f;
  if (mode == 1) amp = exp2f(-static_cast<float>(cycle - 1));  // triangular2: 0.5**(cycle - 1)
  if (mode == 2) amp = pow_pos(gamma, static_cast<float>(k));   // exp_range: gamma**k
  return {base_lr + (max_lr - base_lr) * scale * amp, max_m - (max_m - base_m) * scale * amp};
}

__device__ inline LrMom one_cycle(const double* p, int64_t k) {
  float initial_lr = f32(p, 0), max_lr = f32(p, 1), min_lr = f32(p, 2);
  float end1 = f32(p, 3), end2 = f32(p, 4);
  bool three_phase = p[5] != 0.0, linear = p[6] != 0.0;
  float base_m = f32(p, 7), max_m = f32(p, 8);
  int64_t total = i64(p, 9);
  float kf = static_cast<float>(k < total - 1 ? k : total - 1);  // holds the final LR past the end
  float last = static_cast<float>(total - 1);
  float pct1 = kf / end1;
  if (kf <= end1) return {anneal(initial_lr, max_lr, pct1, linear), anneal(max_m, base_m, pct1, linear)};
  if (!three_phase) {
    float pct2 = (kf - end1) / (last - end1);
    return {anneal(max_lr, min_lr, pct2, linear), anneal(base_m, max_m, pct2, linear)};
  }
  if (kf <= end2) {
    float pct2 = (kf - end1) / (end2 - end1);
    return {anneal(max_lr, initial_lr, pct2, linear), anneal(base_m, max_m, pct2, linear)};
  }
  float pct3 = (kf - end2) / (last - end2);
  return {anneal(initial_lr, min_lr, pct3, linear), max_m};
}

__device__ inline float cosine(const double* p, int64_t k) {
  float base_lr = f32(p, 0), eta_min = f32(p, 2);
  int64_t t_max = i64(p, 1);
  int64_t pos = k % (2 * t_max);  // torch's recursion continues past T_max
  return eta_min + (base_lr - eta_min) * cos_weight(static_cast<float>(pos) / static_cast<float>(t_max));
}

__device__ inline float warm_restarts(const double* p, int64_t k) {
  float base_lr = f32(p, 0), eta_min = f32(p, 3);
  int64_t t_0 = i64(p, 1), t_mult = i64(p, 2);
  int64_t t_cur, t_i;
  if (t_mult == 1) {
    t_cur = k % t_0;
    t_i = t_0;
  } else {
    // Cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1): exact in int64.
    int64_t x = (k / t_0) * (t_mult - 1) + 1;
    int64_t power = 1;
    while (power * t_mult <= x) power *= t_mult;
    t_i = t_0 * power;
    t_cur = k - t_0 * ((power - 1) / (t_mult - 1));
  }
  return eta_min + (base_lr - eta_min) * cos_weight(static_cast<float>(t_cur) / static_cast<float>(t_i));
}

__device__ inline LrMom evaluate_row(const double* row, int64_t k, const float* plateau_lr) {
  const int kind = static_cast<int>(row[1]);
  const double* p = row + 2;
  const float b0 = f32(p, 0);
  switch (kind) {
    case kCyclic:
      return cyclic(p, k);
    case kOneCycle:
      return one_cycle(p, k);
    case kCosine:
      return {cosine(p, k), 0.f};
    case kWarmRestarts:
      return {warm_restarts(p, k), 0.f};
    case kExponential:
      return {b0 * pow_pos(f32(p, 1), static_cast<float>(k)), 0.f};
    case kStep:
      return {b0 * pow_pos(f32(p, 2), static_cast<float>(k / i64(p, 1))), 0.f};
    case kMultiStep: {
      int64_t passed = 0;
      for (int64_t i = 0; i < i64(p, 2); ++i) passed += k >= i64(p, 3 + static_cast<int>(i)) ? 1 : 0;
      return {b0 * pow_pos(f32(p, 1), static_cast<float>(passed)), 0.f};
    }
    case kPolynomial: {
      int64_t total = i64(p, 1);
      float frac = 1.f - static_cast<float>(k < total ? k : total) / static_cast<float>(total);
      float power = f32(p, 2);
      return {b0 * (frac > 0.f ? pow_pos(frac, power) : (power == 0.f ? 1.f : 0.f)), 0.f};
    }
    case kLinear: {
      int64_t total = i64(p, 3);
      float frac = static_cast<float>(k < total ? k : total) / static_cast<float>(total);
      return {b0 * (f32(p, 1) + (f32(p, 2) - f32(p, 1)) * frac), 0.f};
    }
    case kConstantFactor:
      return {b0 * (k < i64(p, 2) ? f32(p, 1) : 1.f), 0.f};
    case kPlateau:
      return {plateau_lr != nullptr ? *plateau_lr : b0, 0.f};
    default:  // kConstant
      return {b0, 0.f};
  }
}

// (lr, momentum) at global step k: the segment with the largest start <= k
// applies at local step k - start (SequentialLR).
__device__ inline LrMom evaluate_rows(const double* rows, int n_rows, int64_t k, const float* plateau_lr) {
  LrMom out = evaluate_row(rows, k, plateau_lr);
  for (int s = 1; s < n_rows; ++s) {
    const double* row = rows + s * kRowWidth;
    int64_t start = static_cast<int64_t>(row[0]);
    if (k >= start) out.lr = evaluate_row(row, k - start, plateau_lr).lr;
  }
  return out;
}

}  // namespace clr_fused
