// The Python module clr_fused._C.  Importing it also registers the ops
// torch.ops.clr_fused.sgd_step / adam_step (ops.cpp, cpu_ops.cpp and, in a
// CUDA build, fused_optim.cu).
#include <torch/extension.h>

#include "constants.h"
#include "schedule_kinds.h"
#include "step_api.h"

namespace clr_fused {
void bind_step_plan(py::module& m);
const char* cpu_isa();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clr_fused kernels: multi-tensor SGD/Adam with the LR schedule evaluated on the device (CPU and CUDA)";
  m.attr("CHUNK") = clr_fused::kChunk;
  py::dict kinds;
#define CLR_FUSED_KIND_ENTRY(name, enumerator, code) kinds[#name] = static_cast<int>(clr_fused::enumerator);
  CLR_FUSED_SCHEDULE_KINDS(CLR_FUSED_KIND_ENTRY)
#undef CLR_FUSED_KIND_ENTRY
  m.attr("SCHEDULE_KINDS") = kinds;
  py::dict algorithms;  // the generic step's algorithms (algorithms.h): class name -> id
  for (const auto& [name, id] : clr_fused::algorithm_ids()) algorithms[py::str(name)] = id;
  m.attr("ALGORITHMS") = algorithms;
#ifdef CLR_FUSED_WITH_CUDA
  m.attr("HAS_CUDA_KERNELS") = true;
#else
  m.attr("HAS_CUDA_KERNELS") = false;
#endif
  m.def("set_kernels_stubbed", &clr_fused::set_kernels_stubbed, py::arg("on"),
        "benchmarks only: pack arguments but run no kernel (host-cost timing)");
  m.def("kernels_stubbed", &clr_fused::kernels_stubbed);
  m.def("cpu_isa", &clr_fused::cpu_isa, "the instruction set the CPU kernels run with here: avx512, avx2 or baseline (x86-64 SSE2)");
  clr_fused::bind_step_plan(m);
}
