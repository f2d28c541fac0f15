// Python bindings of the fused steps.  clr_fused/kernels/cuda_update.py wraps
// them in torch.library custom ops (with fake implementations), so
// torch.compile and CUDA graphs see opaque, honestly annotated mutations.
#include <torch/extension.h>

#include "step_api.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clr_fused CUDA kernels: multi-tensor SGD/Adam with the LR schedule evaluated on the device";
  m.def("sgd_step", &clr_fused::sgd_step, "fused multi-tensor SGD step (one launch per bucket)");
  m.def("adam_step", &clr_fused::adam_step, "fused multi-tensor Adam/AdamW step (one launch per bucket)");
  m.attr("CHUNK") = clr_fused::kChunk;
}
