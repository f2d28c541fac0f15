// Schedule closed forms on the device.  Most kinds are generated from their
// one definition in clr_fused/schedule_math.py (its closed_form registry:
// schedule_generated.cuh, included below); SGDR's cycle walk, the LambdaLR
// table and the plateau are mirrored here by hand, line by line (as in
// clr_fused/kernels/triton_schedule.py).
// Rows are float64 [n_rows][ROW_WIDTH] = {start_step, kind, params...}; the
// step is int64.  Integer parts stay int64, the rest is float64.
#pragma once

#include <cmath>
#include <cstdint>

#include "schedule_kinds.h"

namespace clr_fused {

constexpr int kRowWidth = 16;

// Kind codes (kConstant, kCyclic, ...): schedule_kinds.h and the generated list it includes,, checked against schedule_math.py at import.

// Everything below is float64, rounded once to float32 by the caller
// (finish_step): the rows keep every parameter in float64 (gamma**k must not
// drift at 1e7 steps), and the last block evaluates once per step, so the
// double-precision units cost nothing.  Integers are bounded by 2**53 (the
// specs and the optimizers refuse larger), so no int64 sum or product here
// overflows and the SGDR loop runs at most 64 times.
struct LrMom {
  double lr;
  double mom;
};

__device__ __forceinline__ double f64(const double* p, int i) { return p[i]; }
__device__ __forceinline__ int64_t i64(const double* p, int i) { return static_cast<int64_t>(p[i]); }

// base**e for base > 0 (0 otherwise), as schedule_math's pow.
__device__ __forceinline__ double pow_pos(double base, double e) { return base > 0.0 ? pow(base, e) : 0.0; }

// (1 + cos(pi * frac)) / 2 written as cos(pi * frac / 2)**2 (no cancellation).
__device__ __forceinline__ double cos_weight(double frac) {
  double c = cos(frac * 1.5707963267948966);
  return c * c;
}

constexpr int64_t kMaxInt = int64_t{1} << 53;  // schedule_math.MAX_INT

__device__ inline double warm_restarts(const double* p, int64_t k) {
  double base_lr = f64(p, 0), eta_min = f64(p, 3);
  int64_t t_0 = i64(p, 1), t_mult = i64(p, 2);
  int64_t t_cur;
  double t_i;
  if (t_mult == 1) {
    t_cur = k % t_0;
    t_i = static_cast<double>(t_0);
  } else {
    // Walk the cycles (starts T_0 * (T_mult**n - 1) / (T_mult - 1)) as
    // schedule_math.restart_table does: exact, and a cycle's start never
    // passes 2**53, so neither the sum nor the product overflows.
    int64_t start = 0, len = t_0;
    t_i = static_cast<double>(t_0);
    bool last = false;  // the cycle holding k is known: the next one would start past 2**53
    while (!last && start + len <= k) {  // start <= k <= 2**53 and len <= 2**53: no overflow
      start += len;
      if (len > kMaxInt / t_mult) {
        last = true;
        t_i = static_cast<double>(len) * static_cast<double>(t_mult);  // float(len * t_mult), as Python
      } else {
        len *= t_mult;
        t_i = static_cast<double>(len);
      }
    }
    t_cur = k - start;
  }
  return eta_min + (base_lr - eta_min) * cos_weight(static_cast<double>(t_cur) / t_i);
}

// Python's // and % on int64 (floor semantics; 0 for a zero divisor, whose
// branch straight-line code evaluates without taking it).  Used by the
// generated kinds.
__device__ __forceinline__ int64_t py_floordiv(int64_t a, int64_t b) {
  if (b == 0) return 0;
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int64_t py_mod(int64_t a, int64_t b) { return b == 0 ? 0 : a - py_floordiv(a, b) * b; }

}  // namespace clr_fused

#include "schedule_generated.cuh"

namespace clr_fused {

__device__ inline LrMom evaluate_row(const double* row, int64_t k, const float* plateau_lr, int64_t avail) {
  const int kind = static_cast<int>(row[1]);
  const double* p = row + 2;
  const double b0 = f64(p, 0);
  switch (kind) {
    case kWarmRestarts:
      return {warm_restarts(p, k), 0.0};
    case kPlateau:
      return {plateau_lr != nullptr ? static_cast<double>(*plateau_lr) : b0, 0.0};
    case kTable: {
      // `avail`: floats from this row to the end of the rows (a table outside them reads nothing)
      const int64_t n = i64(p, 1), offset = i64(p, 2);
      const int64_t j = k < n - 1 ? k : n - 1;
      const bool inside = n >= 1 && offset >= kRowWidth && j >= 0 && offset + j < avail;
      return {inside ? b0 * row[inside ? offset + j : 0] : 0.0, 0.0};
    }
    default: {  // a generated kind, else kConstant
      LrMom out{b0, 0.0};
      generated::evaluate(kind, p, k, &out);
      return out;
    }
  }
}

// (lr, momentum) at global step k: the segment with the largest start <= k
// applies at local step k - start (SequentialLR).
__device__ inline LrMom evaluate_rows(const double* rows, int n_rows, int64_t k, const float* plateau_lr) {
  const int64_t total = static_cast<int64_t>(n_rows) * kRowWidth;
  LrMom out = evaluate_row(rows, k, plateau_lr, total);
  for (int s = 1; s < n_rows; ++s) {
    const double* row = rows + s * kRowWidth;
    if (static_cast<int>(row[1]) == kTableData) break;  // the rest are table values
    int64_t start = static_cast<int64_t>(row[0]);
    if (k >= start) out.lr = evaluate_row(row, k - start, plateau_lr, total - static_cast<int64_t>(s) * kRowWidth).lr;
  }
  return out;
}

}  // namespace clr_fused
