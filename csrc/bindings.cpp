// Python bindings of the fused steps.  clr_fused/kernels/cuda_update.py wraps
// them in torch.library custom ops (with fake implementations), so
// torch.compile and CUDA graphs see opaque, honestly annotated mutations.
#include <torch/extension.h>

#include <optional>
#include <vector>

namespace clr_fused {
void sgd_step(const std::vector<at::Tensor>& addr_tables, const at::Tensor& numels, const at::Tensor& chunk_tensor,
              const at::Tensor& chunk_start, const at::Tensor& fresh, const at::Tensor& rows, at::Tensor counter,
              const std::optional<at::Tensor>& plateau_lr, const std::optional<at::Tensor>& grad_mul,
              const std::optional<at::Tensor>& skip, at::Tensor ticket, double momentum, double dampening,
              double weight_decay, bool use_momentum, bool cycle_momentum, bool nesterov, bool maximize, bool advance,
              at::ScalarType param_dtype, at::ScalarType state_dtype);
void adam_step(const std::vector<at::Tensor>& addr_tables, const at::Tensor& step_addrs, const at::Tensor& numels,
               const at::Tensor& chunk_tensor, const at::Tensor& chunk_start, const at::Tensor& rows,
               at::Tensor counter, const std::optional<at::Tensor>& plateau_lr,
               const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip, at::Tensor ticket,
               double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool cycle_momentum,
               bool decoupled, bool maximize, bool advance, at::ScalarType param_dtype, at::ScalarType state_dtype);
}  // namespace clr_fused

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clr_fused CUDA kernels: multi-tensor SGD/Adam with the LR schedule evaluated on the device";
  m.def("sgd_step", &clr_fused::sgd_step, "fused multi-tensor SGD step (one launch per bucket)");
  m.def("adam_step", &clr_fused::adam_step, "fused multi-tensor Adam/AdamW step (one launch per bucket)");
  m.attr("CHUNK") = 16384;
}
