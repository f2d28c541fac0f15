// The fused ops, as registered with the dispatcher (ops.cpp): their C++
// argument lists (macros, so the schema's CPU, CUDA and autograd kernels
// cannot drift) and the schema strings.  Host-compiler safe: no device code.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

// compensation: kahan_sum's buffers, one per parameter of its 16-bit dtype, or
// empty (their address table is the last of `tables`; multi_tensor.cuh).
// scales: the int8 states' per-block scales (every state list's, flattened;
// empty otherwise; the kernels find them through the tables).  stochastic:
// bfloat16 writes round stochastically.  params, the state lists, the step counter, the ticket and `next` (the live
// LR the last block writes; it may alias `lr` / `mom`) are mutated (the
// schemas' (x!) annotations); grads, the tables, lr and mom are read.  tables holds
// the device address tables [params, grads, states...], then numels,
// chunk_tensor, chunk_start (clr_fused/kernels/tensor_tables.py).
#define CLR_FUSED_SGD_PARAMS                                                                                        \
  at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList scales,              \
      at::TensorList tables, const at::Tensor &fresh, const at::Tensor &rows, const at::Tensor &counter, const at::Tensor &lr,             \
      const std::optional<at::Tensor>&mom, const std::optional<at::Tensor>&next,                                    \
      const std::optional<at::Tensor>&grad_mul, const std::optional<at::Tensor>&skip, const at::Tensor &ticket,     \
      double momentum, double dampening, double weight_decay, bool use_momentum, bool nesterov, bool maximize,      \
      bool stochastic, bool advance, at::TensorList compensation

#define CLR_FUSED_SGD_NAMES                                                                                   \
  params, grads, momentum_buffers, scales, tables, fresh, rows, counter, lr, mom, next, grad_mul, skip, ticket,  \
      momentum, dampening, weight_decay, use_momentum, nesterov, maximize, stochastic, advance, compensation

#define CLR_FUSED_ADAM_PARAMS                                                                                    \
  at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,             \
      at::TensorList max_exp_avg_sqs, at::TensorList scales, at::TensorList steps, at::TensorList tables,         \
      const at::Tensor &step_table,                                                                              \
      const at::Tensor &rows, const at::Tensor &counter, const at::Tensor &lr, const std::optional<at::Tensor>&mom, \
      const std::optional<at::Tensor>&next, const std::optional<at::Tensor>&grad_mul,                             \
      const std::optional<at::Tensor>&skip, const at::Tensor &ticket, const std::optional<at::Tensor>&betas,      \
      double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool decoupled, bool maximize,    \
      bool stochastic, bool advance, at::TensorList compensation

#define CLR_FUSED_ADAM_NAMES                                                                                        \
  params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scales, steps, tables, step_table, rows, counter, lr, mom,  \
      next, grad_mul, skip, ticket, betas, beta1, beta2, eps, weight_decay, amsgrad, decoupled, maximize, stochastic,   \
      advance, compensation

// The generic step of an algorithm on algorithm_kernel.cuh (algorithms.h):
// `algorithm` its id, `states` its state lists flattened list by list
// (kStates * n tensors), `scales` the int8 states' scales likewise, `hyper`
// its hyperparameters (Algorithm::from reads them).
#define CLR_FUSED_STEP_PARAMS                                                                                       \
  int64_t algorithm, at::TensorList params, at::TensorList grads, at::TensorList states, at::TensorList scales,    \
      at::TensorList tables, const at::Tensor &rows, const at::Tensor &counter, const at::Tensor &lr,              \
      const std::optional<at::Tensor>&mom, const std::optional<at::Tensor>&next,                                    \
      const std::optional<at::Tensor>&grad_mul, const std::optional<at::Tensor>&skip, const at::Tensor &ticket,     \
      at::ArrayRef<double> hyper, bool stochastic, bool advance, const std::optional<at::Tensor>&scalars,          \
      bool write_scalars, at::TensorList compensation

#define CLR_FUSED_STEP_NAMES                                                                                      \
  algorithm, params, grads, states, scales, tables, rows, counter, lr, mom, next, grad_mul, skip, ticket, hyper,  \
      stochastic, advance, scalars, write_scalars, compensation

namespace clr_fused {

constexpr const char* kStepSchema =
    "step(int algorithm, Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] states, Tensor(c!)[] scales, "
    "Tensor[] tables, Tensor rows, Tensor(d!) counter, Tensor lr, Tensor? mom, Tensor(e!)? next, Tensor? grad_mul, "
    "Tensor? skip, Tensor(f!) ticket, float[] hyper, bool stochastic, bool advance, Tensor(g!)? scalars=None, "
    "bool write_scalars=False, Tensor(k!)[] compensation) -> ()";

constexpr const char* kSgdSchema =
    "sgd_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor(f!)[] scales, "
    "Tensor[] tables, Tensor fresh, "
    "Tensor rows, Tensor(c!) counter, Tensor lr, Tensor? mom, Tensor(e!)? next, Tensor? grad_mul, Tensor? skip, "
    "Tensor(d!) ticket, float momentum, float dampening, float weight_decay, bool use_momentum, bool nesterov, "
    "bool maximize, bool stochastic, bool advance, Tensor(k!)[] compensation) -> ()";

constexpr const char* kAdamSchema =
    "adam_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor(i!)[] scales, Tensor(e!)[] steps, Tensor[] tables, Tensor step_table, Tensor rows, "
    "Tensor(f!) counter, Tensor lr, Tensor? mom, Tensor(h!)? next, Tensor? grad_mul, Tensor? skip, Tensor(g!) ticket, "
    "Tensor? betas, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, bool decoupled, "
    "bool maximize, bool stochastic, bool advance, Tensor(k!)[] compensation) -> ()";

// Benchmarks only (`clr-fused bench --host`): when set, the CPU and CUDA
// kernels pack their arguments and return without running the grid, so the
// host cost of a step can be timed alone.  Counters do not advance then.
bool kernels_stubbed();

// The generic step's algorithms (algorithms.h) as (class name, id): _C.ALGORITHMS.
std::vector<std::pair<std::string, int64_t>> algorithm_ids();
void set_kernels_stubbed(bool on);

}  // namespace clr_fused
