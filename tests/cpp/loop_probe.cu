// Known-bad kernel for the element-loop gate of tests/test_sass_gates.py:
// the schedule (float64 math, an int64 division) evaluated per element, inside
// the loop, which is exactly what the real kernels must not do.
#include <cstdint>

__global__ void schedule_in_the_loop(float* p, const float* g, const double* rows, int64_t n, int64_t k, int64_t period) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double lr = rows[0] + (rows[1] - rows[0]) * static_cast<double>((k + i) % period) / static_cast<double>(period);
    p[i] -= static_cast<float>(lr) * g[i];
  }
}
