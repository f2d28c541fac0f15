// The entry points of the extension: argument lists (as macros, so the
// declaration, the CUDA definition and the host emulation cannot drift) and
// declarations.  Host-compiler safe: no device code here.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#define CLR_FUSED_SGD_PARAMS                                                                                         \
  const std::vector<at::Tensor>&addr_tables, const at::Tensor &numels, const at::Tensor &chunk_tensor,               \
      const at::Tensor &chunk_start, const at::Tensor &fresh, const at::Tensor &rows, at::Tensor counter,            \
      const std::optional<at::Tensor>&plateau_lr, const std::optional<at::Tensor>&grad_mul,                          \
      const std::optional<at::Tensor>&skip, at::Tensor ticket, double momentum, double dampening,                    \
      double weight_decay, bool use_momentum, bool cycle_momentum, bool nesterov, bool maximize, bool advance,       \
      at::ScalarType param_dtype, at::ScalarType state_dtype

#define CLR_FUSED_SGD_NAMES                                                                                      \
  addr_tables, numels, chunk_tensor, chunk_start, fresh, rows, counter, plateau_lr, grad_mul, skip, ticket,      \
      momentum, dampening, weight_decay, use_momentum, cycle_momentum, nesterov, maximize, advance, param_dtype, \
      state_dtype

#define CLR_FUSED_ADAM_PARAMS                                                                                   \
  const std::vector<at::Tensor>&addr_tables, const at::Tensor &step_addrs, const at::Tensor &numels,            \
      const at::Tensor &chunk_tensor, const at::Tensor &chunk_start, const at::Tensor &rows, at::Tensor counter, \
      const std::optional<at::Tensor>&plateau_lr, const std::optional<at::Tensor>&grad_mul,                     \
      const std::optional<at::Tensor>&skip, at::Tensor ticket, double beta1, double beta2, double eps,          \
      double weight_decay, bool amsgrad, bool cycle_momentum, bool decoupled, bool maximize, bool advance,      \
      at::ScalarType param_dtype, at::ScalarType state_dtype

#define CLR_FUSED_ADAM_NAMES                                                                                        \
  addr_tables, step_addrs, numels, chunk_tensor, chunk_start, rows, counter, plateau_lr, grad_mul, skip, ticket,    \
      beta1, beta2, eps, weight_decay, amsgrad, cycle_momentum, decoupled, maximize, advance, param_dtype,          \
      state_dtype

namespace clr_fused {

constexpr int64_t kChunk = 16384;  // elements per block; must equal CHUNK in kernels/cuda_update.py

void sgd_step(CLR_FUSED_SGD_PARAMS);
void adam_step(CLR_FUSED_ADAM_PARAMS);

}  // namespace clr_fused
