// The ops' bodies, templated on the launcher: CUDA (fused_optim.cu) or the
// CPU (cpu_ops.cpp).  Launch<P, S>::run(grid, tables, inputs, hyper) runs the
// kernel grid.
#pragma once

#include "algorithms.h"
#include "fused_kernels.cuh"
#include "kernel_variants.h"
#include "launch_args.h"
#include "step_api.h"

namespace clr_fused {

// int8 states (int8 codes in the first state list): one float32 scale tensor
// per state tensor, ns lists of n (their address tables after the codes').
inline void check_scales(at::ScalarType state, at::TensorList scales, size_t ns, size_t n, const char* op) {
  if (state != at::kChar) {
    TORCH_CHECK(scales.empty(), op, ": scales are for int8 states only");
    return;
  }
  TORCH_CHECK(ns > 0 && scales.size() == ns * n, op, ": int8 states need one scale tensor per state tensor");
  for (const at::Tensor& s : scales) TORCH_CHECK(s.scalar_type() == at::kFloat, op, ": scales must be float32");
}

// The address tables: params, grads, ns state lists (int8 states: and as many
// scale lists), then kahan_sum's compensation list if there are buffers: none,
// or one per parameter, of the parameters' 16-bit dtype.  Returns whether
// there are any.
inline bool check_compensation(at::TensorList compensation, at::TensorList params, bool stochastic, at::TensorList tables,
                               size_t ns, at::ScalarType state, const char* op) {
  const size_t lists = 2 + ns * (state == at::kChar ? 2 : 1);
  if (compensation.empty()) {
    TORCH_CHECK(tables.size() == lists + 3, op, ": ", lists + 3, " tables expected, got ", tables.size());
    return false;
  }
  const at::ScalarType pt = params[0].scalar_type();
  TORCH_CHECK(pt == at::kBFloat16 || pt == at::kHalf, op, ": compensation (kahan_sum) is for bfloat16 / float16 parameters, got ", pt);
  TORCH_CHECK(compensation.size() == params.size(), op, ": one compensation buffer per parameter");
  for (const at::Tensor& c : compensation) TORCH_CHECK(c.scalar_type() == pt, op, ": compensation buffers must be ", pt);
  TORCH_CHECK(!stochastic, op, ": kahan_sum and stochastic_rounding are exclusive");
  TORCH_CHECK(tables.size() == lists + 4, op, ": ", lists + 4, " tables expected (the compensation list's last), got ",
              tables.size());
  return true;
}

template <template <typename, typename> class Launch>
void sgd_step_impl(CLR_FUSED_SGD_PARAMS) {
  TORCH_CHECK(!params.empty() && params.size() == grads.size(), "sgd_step: params and grads must be non-empty lists of one length");
  TORCH_CHECK(!use_momentum || momentum_buffers.size() == params.size(), "sgd_step: one momentum buffer per parameter");
  TORCH_CHECK(fresh.scalar_type() == at::kChar && fresh.numel() == static_cast<int64_t>(params.size()), "sgd_step: fresh must be int8 [T]");
  const at::ScalarType state = use_momentum ? momentum_buffers[0].scalar_type() : params[0].scalar_type();
  TORCH_CHECK(state != at::kChar || use_momentum, "sgd_step: int8 states need momentum");
  const size_t ns = use_momentum ? 1 : 0;
  check_scales(state, scales, ns, params.size(), "sgd_step");
  const bool kahan = check_compensation(compensation, params, stochastic, tables, ns, state, "sgd_step");
  if (kernels_stubbed()) return;
  const Tables tb = make_tables(tables, kahan);
  const StepInputs in = make_inputs(rows, counter, lr, mom, next, grad_mul, skip, ticket, advance);
  const SgdHyper h{static_cast<float>(momentum), static_cast<float>(1.0 - dampening), static_cast<float>(weight_decay),
                   use_momentum, nesterov, maximize, stochastic, fresh.data_ptr<int8_t>()};
  dispatch_types<Launch>(params[0].scalar_type(), state, num_chunks(tables), tb, in, h);
}

template <template <typename, typename> class Launch>
void adam_step_impl(CLR_FUSED_ADAM_PARAMS) {
  const size_t n = params.size();
  TORCH_CHECK(n > 0 && grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "adam_step: params, grads, exp_avgs, exp_avg_sqs and steps must be non-empty lists of one length");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == n, "adam_step: one max_exp_avg_sq per parameter with amsgrad");
  const size_t ns = amsgrad ? 3 : 2;
  check_scales(exp_avgs[0].scalar_type(), scales, ns, n, "adam_step");
  const bool kahan = check_compensation(compensation, params, stochastic, tables, ns, exp_avgs[0].scalar_type(), "adam_step");
  if (kernels_stubbed()) return;
  const Tables tb = make_tables(tables, kahan);
  const StepInputs in = make_inputs(rows, counter, lr, mom, next, grad_mul, skip, ticket, advance);
  AdamHyper h{static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
              static_cast<float>(1.0 - beta2), static_cast<float>(eps), static_cast<float>(weight_decay),
              beta1, beta2, weight_decay, decoupled, maximize, amsgrad, stochastic, step_table.data_ptr<int64_t>(), nullptr};
  if (betas.has_value()) {
    TORCH_CHECK(betas->scalar_type() == at::kFloat && betas->numel() == 4, "adam_step: betas must be float32 [4]");
    h.betas = betas->data_ptr<float>();
  }
  dispatch_types<Launch>(params[0].scalar_type(), exp_avgs[0].scalar_type(), num_chunks(tables), tb, in, h);
}

// The generic step: Launch<A>::template On<P, S>::run(grid, tables, inputs,
// hyper, stochastic) runs algorithm A's kernel grid.
template <typename A, template <typename> class Launch>
void typed_step(CLR_FUSED_STEP_PARAMS) {
  const size_t n = params.size();
  constexpr size_t ns = A::kStates;
  TORCH_CHECK(n > 0 && grads.size() == n && states.size() == ns * n, "step (", A::kName,
              "): params, grads and every state list must be non-empty lists of one length (", ns, " state lists)");
  TORCH_CHECK(hyper.size() == static_cast<size_t>(A::kHyper), "step (", A::kName, "): ", A::kHyper,
              " hyperparameters expected, got ", hyper.size());
  const at::ScalarType state = ns > 0 ? states[0].scalar_type() : params[0].scalar_type();
  TORCH_CHECK(state != at::kChar || A::kInt8States, "step (", A::kName, "): its states cannot be int8 codes");
  check_scales(state, scales, ns, n, "step");
  TORCH_CHECK(A::kScalars == 0 ? !scalars.has_value() : scalars.has_value() && scalars->numel() == A::kScalars, "step (",
              A::kName, "): ", A::kScalars, " group scalars expected");
  const bool kahan = check_compensation(compensation, params, stochastic, tables, ns, state, "step");
  if (kernels_stubbed()) return;
  const Tables tb = make_tables(tables, kahan);
  const StepInputs in = make_inputs(rows, counter, lr, mom, next, grad_mul, skip, ticket, advance, scalars, write_scalars);
  const typename A::Hyper h = A::from(hyper.data());
  dispatch_types<Launch<A>::template On>(params[0].scalar_type(), state, num_chunks(tables), tb, in, h, stochastic);
}

template <template <typename> class Launch>
void algorithm_step_impl(CLR_FUSED_STEP_PARAMS) {
  switch (algorithm) {
#define CLR_FUSED_STEP_CASE(id, A) \
  case id:                         \
    return typed_step<A, Launch>(CLR_FUSED_STEP_NAMES);
    CLR_FUSED_ALGORITHMS(CLR_FUSED_STEP_CASE)
#undef CLR_FUSED_STEP_CASE
    default:
      TORCH_CHECK(false, "step: unknown algorithm ", algorithm);
  }
}

}  // namespace clr_fused
