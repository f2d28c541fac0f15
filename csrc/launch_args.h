// Host-side packing of the launch arguments (tables, step inputs) and the
// (parameter, state) dtype dispatch; shared by the CUDA and CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>
#include <utility>

#include "multi_tensor.cuh"
#include "storage_types.h"

namespace clr_fused {

// tables = [address tables..., numels, chunk_tensor, chunk_start]; with
// `compensated` (kahan_sum) the last address table is the compensation list's.
inline Tables make_tables(at::TensorList tables, bool compensated = false) {
  const int64_t n = static_cast<int64_t>(tables.size());
  const int64_t lists = n - 3 - (compensated ? 1 : 0);
  TORCH_CHECK(lists >= 2 && lists <= kMaxLists, "tables must hold 2..", kMaxLists,
              " address tables (and the compensation list's) and 3 chunk tables");
  Tables tb{};
  for (int64_t i = 0; i < lists; ++i) tb.addrs[i] = tables[i].data_ptr<int64_t>();
  tb.comp = compensated ? tables[lists].data_ptr<int64_t>() : nullptr;
  tb.numels = tables[n - 3].data_ptr<int64_t>();
  tb.chunk_tensor = tables[n - 2].data_ptr<int32_t>();
  tb.chunk_start = tables[n - 1].data_ptr<int64_t>();
  tb.num_tensors = tables[n - 3].numel();
  return tb;
}

inline unsigned num_chunks(at::TensorList tables) { return static_cast<unsigned>(tables.back().numel()); }

inline const double* double_scalar(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.numel() >= 1, name, " must be a float64 device scalar, got ", t.scalar_type());
  return t.data_ptr<double>();
}

inline StepInputs make_inputs(const at::Tensor& rows, const at::Tensor& counter, const at::Tensor& lr,
                              const std::optional<at::Tensor>& mom, const std::optional<at::Tensor>& next,
                              const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip,
                              const at::Tensor& ticket, bool advance,
                              const std::optional<at::Tensor>& scalars = std::nullopt, bool write_scalars = false) {
  TORCH_CHECK(rows.scalar_type() == at::kDouble && rows.dim() == 2 && rows.size(1) == kRowWidth, "rows must be float64 [n, 16]");
  TORCH_CHECK(counter.scalar_type() == at::kLong, "counter must be int64");
  TORCH_CHECK(ticket.scalar_type() == at::kInt, "ticket must be int32");
  StepInputs in{};
  in.rows = rows.data_ptr<double>();
  in.n_rows = static_cast<int>(rows.size(0));
  in.counter = counter.data_ptr<int64_t>();
  in.lr = double_scalar(lr, "lr");
  in.mom = mom.has_value() ? double_scalar(*mom, "mom") : nullptr;
  if (next.has_value()) {
    TORCH_CHECK(next->scalar_type() == at::kDouble && next->numel() == 2 && next->is_contiguous(), "next must be float64 [2]");
    in.next = next->data_ptr<double>();
  } else {
    in.next = nullptr;
  }
  in.grad_mul = grad_mul.has_value() ? grad_mul->data_ptr<float>() : nullptr;
  in.skip = skip.has_value() ? skip->data_ptr<bool>() : nullptr;
  in.ticket = ticket.data_ptr<int32_t>();
  in.advance = advance;
  if (scalars.has_value()) {
    TORCH_CHECK(scalars->scalar_type() == at::kDouble && scalars->dim() == 1 && scalars->is_contiguous(),
                "scalars must be a contiguous float64 vector");
    in.scalars = scalars->data_ptr<double>();
  } else {
    in.scalars = nullptr;
  }
  TORCH_CHECK(!write_scalars || in.scalars != nullptr, "write_scalars needs scalars");
  in.write_scalars = write_scalars;
  return in;
}

// Launcher<P, S>::run(args...) for the (param, state) storage types: states
// as float32, bfloat16, the parameter's dtype, or int8 codes (Q8; exp_avg_sq's
// codes are uint8, the first list decides).
template <template <typename, typename> class Launcher, typename P, typename... Args>
inline void with_state_type(at::ScalarType param, at::ScalarType state, Args&&... args) {
  if (state == at::kFloat) {
    Launcher<P, float>::run(std::forward<Args>(args)...);
  } else if (state == at::kChar) {
    Launcher<P, Q8>::run(std::forward<Args>(args)...);
  } else if (state == at::kBFloat16 && !std::is_same_v<P, at::Half>) {
    if constexpr (!std::is_same_v<P, at::Half>) Launcher<P, at::BFloat16>::run(std::forward<Args>(args)...);
  } else {
    TORCH_CHECK(state == param, "state dtype must be float32, bfloat16, int8 or the parameter dtype, got ", state);
    Launcher<P, P>::run(std::forward<Args>(args)...);
  }
}

template <template <typename, typename> class Launcher, typename... Args>
inline void dispatch_types(at::ScalarType param, at::ScalarType state, Args&&... args) {
  switch (param) {
    case at::kFloat:
      return with_state_type<Launcher, float>(param, state, std::forward<Args>(args)...);
    case at::kBFloat16:
      return with_state_type<Launcher, at::BFloat16>(param, state, std::forward<Args>(args)...);
    case at::kHalf:
      return with_state_type<Launcher, at::Half>(param, state, std::forward<Args>(args)...);
    default:
      TORCH_CHECK(false, "the fused kernels support float32, bfloat16 and float16 parameters, got ", param);
  }
}

}  // namespace clr_fused
