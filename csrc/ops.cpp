// The op schemas (TORCH_LIBRARY) and their autograd-key kernels.
//
// The CPU kernels are registered in cpu_ops.cpp, the CUDA ones in
// fused_optim.cu, fake (meta) ones from Python (clr_fused/kernels/compiled.py),
// so torch.compile sees one opaque op.  The autograd kernel does what
// torch's in-place ops do before they reach a backend: it refuses to mutate
// tensors that need grad while grad mode is on, and bumps the version counter
// of every tensor the schema marks mutated — in C++, not one Python call per
// tensor — then redispatches below autograd.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>

#include "step_api.h"

namespace clr_fused {

namespace {

std::atomic<bool> g_stubbed{false};

void prepare_mutation(at::TensorList ts) {
  const bool grad_mode = at::GradMode::is_enabled();
  for (const at::Tensor& t : ts) {
    TORCH_CHECK(!(grad_mode && t.requires_grad()),
                "clr_fused fused steps update tensors in place: call them under torch.no_grad()");
    t.unsafeGetTensorImpl()->bump_version();
  }
}

void prepare_mutation(const at::Tensor& t) { prepare_mutation(at::TensorList(t)); }

void prepare_mutation(const std::optional<at::Tensor>& t) {
  if (t.has_value()) prepare_mutation(*t);
}

void sgd_step_autograd(CLR_FUSED_SGD_PARAMS) {
  prepare_mutation(params);
  prepare_mutation(momentum_buffers);
  prepare_mutation(scales);
  prepare_mutation(counter);
  prepare_mutation(ticket);
  prepare_mutation(next);
  prepare_mutation(compensation);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::sgd_step", "").typed<void(CLR_FUSED_SGD_PARAMS)>();
  at::AutoDispatchBelowADInplaceOrView below;
  op.call(CLR_FUSED_SGD_NAMES);
}

void adam_step_autograd(CLR_FUSED_ADAM_PARAMS) {
  prepare_mutation(params);
  prepare_mutation(exp_avgs);
  prepare_mutation(exp_avg_sqs);
  prepare_mutation(max_exp_avg_sqs);
  prepare_mutation(scales);
  prepare_mutation(steps);
  prepare_mutation(counter);
  prepare_mutation(ticket);
  prepare_mutation(next);
  prepare_mutation(compensation);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::adam_step", "").typed<void(CLR_FUSED_ADAM_PARAMS)>();
  at::AutoDispatchBelowADInplaceOrView below;
  op.call(CLR_FUSED_ADAM_NAMES);
}

void step_autograd(CLR_FUSED_STEP_PARAMS) {
  prepare_mutation(params);
  prepare_mutation(states);
  prepare_mutation(scales);
  prepare_mutation(counter);
  prepare_mutation(ticket);
  prepare_mutation(next);
  prepare_mutation(scalars);
  prepare_mutation(compensation);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::step", "").typed<void(CLR_FUSED_STEP_PARAMS)>();
  at::AutoDispatchBelowADInplaceOrView below;
  op.call(CLR_FUSED_STEP_NAMES);
}

}  // namespace

bool kernels_stubbed() { return g_stubbed.load(std::memory_order_relaxed); }
void set_kernels_stubbed(bool on) { g_stubbed.store(on, std::memory_order_relaxed); }

}  // namespace clr_fused

TORCH_LIBRARY(clr_fused, m) {
  m.def(clr_fused::kSgdSchema);
  m.def(clr_fused::kAdamSchema);
  m.def(clr_fused::kStepSchema);
}

TORCH_LIBRARY_IMPL(clr_fused, Autograd, m) {
  m.impl("sgd_step", &clr_fused::sgd_step_autograd);
  m.impl("adam_step", &clr_fused::adam_step_autograd);
  m.impl("step", &clr_fused::step_autograd);
}
