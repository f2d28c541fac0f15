// Fused SGD-momentum and Adam/AdamW functors on the generic multi-tensor
// launcher, with the schedule evaluated in-kernel from the device step counter.
// Templated on the parameter storage type P (float, BFloat16, Half) and the
// state storage type S (P or float); math is float32, one rounding at the end.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <utility>
#include <vector>

#include "multi_tensor.cuh"

namespace clr_fused {

struct SgdHyper {
  float momentum, dampening, weight_decay;
  bool use_momentum, cycle_momentum, nesterov, maximize;
  const int8_t* fresh;  // [T]: momentum buffer created this step
};

template <typename P, typename S, int NS>
__global__ void __launch_bounds__(kThreads) sgd_kernel(Tables tb, StepInputs in, SgdHyper h) {
  const ChunkInfo c = chunk_info(tb, in);
  if (!c.skipped) {
    const float mom = h.cycle_momentum ? c.mom : h.momentum;
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    const bool fresh = h.fresh[c.t] != 0;
    const float lr = c.lr;
    S* s[NS > 0 ? NS : 1] = {NS > 0 ? addr<S>(tb.addrs[2], c.t) : nullptr};
    for_each_element<P, S, NS>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                               [&](float& p, float g, float* st) {
                                 float d = g * gm;
                                 if (h.weight_decay != 0.f) d += h.weight_decay * p;
                                 if constexpr (NS > 0) {
                                   // torch starts the buffer at the first gradient, undamped
                                   float b = fresh ? d : st[0] * mom + (1.f - h.dampening) * d;
                                   st[0] = b;
                                   d = h.nesterov ? d + b * mom : b;
                                 }
                                 p = p - d * lr;
                               });
  }
  if (in.advance && last_block(in.ticket) && threadIdx.x == 0) *in.counter = c.k + (c.skipped ? 0 : 1);
}

struct AdamHyper {
  float beta1, beta2, eps, weight_decay;
  bool cycle_momentum, decoupled, maximize;
};

template <typename P, typename S, int NS>  // NS = 2 (m, v) or 3 (with max_v: amsgrad)
__global__ void __launch_bounds__(kThreads) adam_kernel(Tables tb, StepInputs in, AdamHyper h, const int64_t* steps) {
  const ChunkInfo c = chunk_info(tb, in);
  const float b1 = h.cycle_momentum ? c.mom : h.beta1;
  const float step = *reinterpret_cast<const float*>(steps[c.t]) + 1.f;
  if (!c.skipped) {
    const float gm = h.maximize ? -c.grad_mul : c.grad_mul;
    const float lr = c.lr;
    const float bc1 = 1.f - exp2f(step * log2f(b1));
    const float bc2_sqrt = sqrtf(1.f - exp2f(step * log2f(h.beta2)));
    const float step_size = lr / bc1;
    S* s[NS];
    s[0] = addr<S>(tb.addrs[2], c.t);
    s[1] = addr<S>(tb.addrs[3], c.t);
    if constexpr (NS == 3) s[2] = addr<S>(tb.addrs[4], c.t);
    for_each_element<P, S, NS>(addr<P>(tb.addrs[0], c.t), addr<const P>(tb.addrs[1], c.t), s, c.start, c.end,
                               [&](float& p, float g, float* st) {
                                 g = g * gm;
                                 if (h.weight_decay != 0.f) {
                                   if (h.decoupled) {
                                     p = p * (1.f - lr * h.weight_decay);
                                   } else {
                                     g = g + h.weight_decay * p;
                                   }
                                 }
                                 const float m = st[0] * b1 + g * (1.f - b1);
                                 float v = st[1] * h.beta2 + (1.f - h.beta2) * g * g;
                                 st[0] = m;
                                 st[1] = v;
                                 if constexpr (NS == 3) {
                                   v = fmaxf(st[NS - 1], v);
                                   st[NS - 1] = v;
                                 }
                                 const float denom = sqrtf(v) / bc2_sqrt + h.eps;
                                 p = p - m / denom * step_size;
                               });
  }
  // The last block advances every tensor's step (and the schedule counter).
  if (last_block(in.ticket)) {
    if (!c.skipped) {
      for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
        float* sp = reinterpret_cast<float*>(steps[t]);
        *sp = *sp + 1.f;
      }
    }
    if (in.advance && threadIdx.x == 0) *in.counter = c.k + (c.skipped ? 0 : 1);
  }
}

namespace {

Tables make_tables(const std::vector<at::Tensor>& addr_tables, const at::Tensor& numels, const at::Tensor& chunk_tensor,
                   const at::Tensor& chunk_start) {
  TORCH_CHECK(addr_tables.size() <= static_cast<size_t>(kMaxLists), "too many tensor lists");
  Tables tb{};
  for (size_t i = 0; i < addr_tables.size(); ++i) tb.addrs[i] = addr_tables[i].data_ptr<int64_t>();
  tb.numels = numels.data_ptr<int64_t>();
  tb.chunk_tensor = chunk_tensor.data_ptr<int32_t>();
  tb.chunk_start = chunk_start.data_ptr<int64_t>();
  tb.num_tensors = numels.numel();
  return tb;
}

StepInputs make_inputs(const at::Tensor& rows, at::Tensor& counter, const std::optional<at::Tensor>& plateau_lr,
                       const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip,
                       at::Tensor& ticket, bool advance) {
  TORCH_CHECK(rows.scalar_type() == at::kDouble && rows.size(1) == kRowWidth, "rows must be float64 [n, 16]");
  TORCH_CHECK(counter.scalar_type() == at::kLong, "counter must be int64");
  StepInputs in{};
  in.rows = rows.data_ptr<double>();
  in.n_rows = static_cast<int>(rows.size(0));
  in.counter = counter.data_ptr<int64_t>();
  in.plateau_lr = plateau_lr.has_value() ? plateau_lr->data_ptr<float>() : nullptr;
  in.grad_mul = grad_mul.has_value() ? grad_mul->data_ptr<float>() : nullptr;
  in.skip = skip.has_value() ? skip->data_ptr<bool>() : nullptr;
  in.ticket = ticket.data_ptr<int32_t>();
  in.advance = advance;
  return in;
}

// Launcher<P, S>::run(args...) for the (param, state) storage types.
template <template <typename, typename> class Launcher, typename P, typename... Args>
void with_state_type(at::ScalarType param, at::ScalarType state, Args&&... args) {
  if (state == at::kFloat) {
    Launcher<P, float>::run(std::forward<Args>(args)...);
  } else {
    TORCH_CHECK(state == param, "state dtype must be float32 or the parameter dtype, got ", state);
    Launcher<P, P>::run(std::forward<Args>(args)...);
  }
}

template <template <typename, typename> class Launcher, typename... Args>
void dispatch_types(at::ScalarType param, at::ScalarType state, Args&&... args) {
  switch (param) {
    case at::kFloat:
      return with_state_type<Launcher, float>(param, state, std::forward<Args>(args)...);
    case at::kBFloat16:
      return with_state_type<Launcher, at::BFloat16>(param, state, std::forward<Args>(args)...);
    case at::kHalf:
      return with_state_type<Launcher, at::Half>(param, state, std::forward<Args>(args)...);
    default:
      TORCH_CHECK(false, "the cuda backend supports float32, bfloat16 and float16 parameters, got ", param);
  }
}

template <typename P, typename S>
struct SgdLaunch {
  static void run(unsigned grid, cudaStream_t stream, const Tables& tb, const StepInputs& in, const SgdHyper& h) {
    if (h.use_momentum) {
      sgd_kernel<P, S, 1><<<grid, kThreads, 0, stream>>>(tb, in, h);
    } else {
      sgd_kernel<P, S, 0><<<grid, kThreads, 0, stream>>>(tb, in, h);
    }
  }
};

template <typename P, typename S>
struct AdamLaunch {
  static void run(unsigned grid, cudaStream_t stream, const Tables& tb, const StepInputs& in, const AdamHyper& h,
                  bool amsgrad, const int64_t* steps) {
    if (amsgrad) {
      adam_kernel<P, S, 3><<<grid, kThreads, 0, stream>>>(tb, in, h, steps);
    } else {
      adam_kernel<P, S, 2><<<grid, kThreads, 0, stream>>>(tb, in, h, steps);
    }
  }
};

}  // namespace

void sgd_step(const std::vector<at::Tensor>& addr_tables, const at::Tensor& numels, const at::Tensor& chunk_tensor,
              const at::Tensor& chunk_start, const at::Tensor& fresh, const at::Tensor& rows, at::Tensor counter,
              const std::optional<at::Tensor>& plateau_lr, const std::optional<at::Tensor>& grad_mul,
              const std::optional<at::Tensor>& skip, at::Tensor ticket, double momentum, double dampening,
              double weight_decay, bool use_momentum, bool cycle_momentum, bool nesterov, bool maximize, bool advance,
              at::ScalarType param_dtype, at::ScalarType state_dtype) {
  const c10::cuda::CUDAGuard guard(numels.device());
  const Tables tb = make_tables(addr_tables, numels, chunk_tensor, chunk_start);
  const StepInputs in = make_inputs(rows, counter, plateau_lr, grad_mul, skip, ticket, advance);
  const SgdHyper h{static_cast<float>(momentum), static_cast<float>(dampening), static_cast<float>(weight_decay),
                   use_momentum, cycle_momentum, nesterov, maximize, fresh.data_ptr<int8_t>()};
  const auto grid = static_cast<unsigned>(chunk_tensor.numel());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_types<SgdLaunch>(param_dtype, state_dtype, grid, stream, tb, in, h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void adam_step(const std::vector<at::Tensor>& addr_tables, const at::Tensor& step_addrs, const at::Tensor& numels,
               const at::Tensor& chunk_tensor, const at::Tensor& chunk_start, const at::Tensor& rows,
               at::Tensor counter, const std::optional<at::Tensor>& plateau_lr,
               const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip, at::Tensor ticket,
               double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool cycle_momentum,
               bool decoupled, bool maximize, bool advance, at::ScalarType param_dtype, at::ScalarType state_dtype) {
  const c10::cuda::CUDAGuard guard(numels.device());
  const Tables tb = make_tables(addr_tables, numels, chunk_tensor, chunk_start);
  const StepInputs in = make_inputs(rows, counter, plateau_lr, grad_mul, skip, ticket, advance);
  const AdamHyper h{static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps),
                    static_cast<float>(weight_decay), cycle_momentum, decoupled, maximize};
  const auto grid = static_cast<unsigned>(chunk_tensor.numel());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t* steps = step_addrs.data_ptr<int64_t>();
  dispatch_types<AdamLaunch>(param_dtype, state_dtype, grid, stream, tb, in, h, amsgrad, steps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace clr_fused
