// The entry points' bodies, templated on the launcher: CUDA (fused_optim.cu)
// or the host emulation (host_emulation.cpp).
#pragma once

#include "fused_kernels.cuh"
#include "launch_args.h"
#include "step_api.h"

namespace clr_fused {

// Launch<P, S>::run(grid, tables, inputs, hyper, ...) starts the kernel grid.
template <template <typename, typename> class Launch>
void sgd_step_impl(CLR_FUSED_SGD_PARAMS) {
  const Tables tb = make_tables(addr_tables, numels, chunk_tensor, chunk_start);
  const StepInputs in = make_inputs(rows, counter, plateau_lr, grad_mul, skip, ticket, advance);
  const SgdHyper h{static_cast<float>(momentum), static_cast<float>(1.0 - dampening), static_cast<float>(weight_decay),
                   use_momentum, cycle_momentum, nesterov, maximize, fresh.data_ptr<int8_t>()};
  dispatch_types<Launch>(param_dtype, state_dtype, static_cast<unsigned>(chunk_tensor.numel()), tb, in, h);
}

template <template <typename, typename> class Launch>
void adam_step_impl(CLR_FUSED_ADAM_PARAMS) {
  const Tables tb = make_tables(addr_tables, numels, chunk_tensor, chunk_start);
  const StepInputs in = make_inputs(rows, counter, plateau_lr, grad_mul, skip, ticket, advance);
  const AdamHyper h{static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                    static_cast<float>(1.0 - beta2), static_cast<float>(eps),
                    static_cast<float>(weight_decay), cycle_momentum, decoupled, maximize, amsgrad,
                    step_addrs.data_ptr<int64_t>()};
  dispatch_types<Launch>(param_dtype, state_dtype, static_cast<unsigned>(chunk_tensor.numel()), tb, in, h);
}

}  // namespace clr_fused
