// Generic multi-tensor launcher.
//
// One source, three targets: nvcc compiles it for the GPU (fused_optim.cu);
// the host compiler compiles the same templates for the CPU backend
// (cpu_ops.cpp, with cpu_launch.h supplying the CUDA built-ins: a block is a
// task on one CPU thread, blockDim is the constant 1) and for the
// ThreadSanitizer test of the ticket (tests/cpp/ticket_tsan.cpp).  No ATen
// here, so that test needs nothing but the headers.
//
// One launch covers every tensor of a bucket.  The tables live on the device
// (built and cached by clr_fused/kernels/tensor_tables.py, shared with the
// Triton backend): per list an int64 [T] table of addresses, int64 [T]
// element counts, and per chunk (one block each) its tensor and start.
// A block walks its chunk with ILP 4: 4-element vector loads (16 bytes for
// fp32) when every list's address is aligned, a scalar path otherwise and
// for the tail.  Offsets are int64 throughout, so one tensor may exceed 2**31
// elements.  The per-algorithm functor sees float32 values only.
#pragma once

#include <cstdint>
#include <type_traits>

#include "constants.h"
#include "low_precision.cuh"
#include "schedule.cuh"

namespace clr_fused {

constexpr int kILP = 4;
constexpr int kThreads = 512;
constexpr int kMaxLists = 8;  // p, g, up to 3 state lists, and their scale lists (int8 states)

struct Tables {
  const int64_t* addrs[kMaxLists];  // p, g, then state lists
  // kahan_sum: the parameters' compensation buffers (their dtype), the last
  // address table; nullptr: none.  See load_param / compensation.
  const int64_t* comp;
  const int64_t* numels;
  const int32_t* chunk_tensor;
  const int64_t* chunk_start;
  int64_t num_tensors;
};

struct StepInputs {
  const double* rows;  // schedule rows, evaluated by the last block only (for `next`)
  int n_rows;
  int64_t* counter;  // schedule step (int64 scalar)
  // The LR (and cycled momentum / beta1) this update uses, read from the device
  // by every block: the group's live value (what param_groups[g]["lr"] holds,
  // so torch schedulers and in-place edits act as on torch's optimizers), a
  // user's tensor lr, or ReduceLROnPlateau's state.
  // float64, as torch's Python-float LR and momentum: Adam's step size and
  // decay factor are computed from the double itself (as torch does), SGD's
  // LR and momentum are rounded to float32 where torch rounds its scalars.
  const double* lr;
  const double* mom;  // nullptr: momentum / beta1 is the hyperparameter
  // nullptr, or [2]: the last block writes {lr, momentum} of the NEXT update,
  // the schedule at the advanced step (the group's last launch on this device).
  // It may alias lr / mom: every block has read them before the ticket.
  double* next;
  const float* grad_mul;  // nullptr: 1 (folds 1/grad_scale and the clip factor)
  const bool* skip;  // nullptr: never skip (found_inf / non-finite norm)
  int32_t* ticket;  // zero between launches
  bool advance;  // this launch advances the schedule counter
  // An algorithm's per-group running scalars (float64 [A::kScalars], e.g.
  // schedule-free's lr_max and weight sum), or nullptr.  Every launch of the
  // group reads them as they were before the step; the group's last launch on
  // its device (write_scalars) has its last block write the step's new values.
  double* scalars;
  bool write_scalars;
};

template <typename T>
struct alignas(sizeof(T) * kILP) Vec {
  T v[kILP];
};

#if defined(__CUDACC__) && !defined(CLR_FUSED_SCALAR_ONLY)
// On the GPU, 16-byte (fp32) vector accesses when every list is aligned.
// (CLR_FUSED_SCALAR_ONLY: a test-only build that the machine-code gates of
// tests/test_sass_gates.py must reject.)
constexpr bool kVectorPath = true;
#else
// On the CPU the scalar loop below, with blockDim.x the constant 1, is a plain
// unit-stride loop that the compiler vectorises itself (SSE, any alignment):
// see the -fopt-info-vec note in cpu_ops.cpp.
constexpr bool kVectorPath = false;
#endif

template <typename T>
__device__ __forceinline__ bool aligned(const T* ptr) {
  return kVectorPath && reinterpret_cast<uintptr_t>(ptr) % (sizeof(T) * kILP) == 0;
}

// float -> storage type, rounding once to nearest even.  The CPU build
// specialises it for BFloat16 (cpu_ops.cpp) with a branch-free form the
// compiler vectorises; on the GPU the conversion instruction does it.
template <typename T>
__device__ __forceinline__ T to_storage(float x) {
  return static_cast<T>(x);
}

// Which storage types round stochastically under kSr, and how a value is made
// from its bits: specialised for BFloat16 in launch_args.h (this header has
// no ATen, for the TSan test).
template <typename T>
struct StochasticStorage {
  static constexpr bool kApplies = false;
  __device__ __forceinline__ static T from_bits(uint16_t) { return T(); }
};

// The store of one element: round to nearest, or (kSr, a bfloat16 type)
// stochastically with element i's bits of the stream (0: the parameter, 1 + j: state list j).
template <typename T, bool kSr>
__device__ __forceinline__ T store_as(float x, const RandomBits& rb, int stream, int64_t i) {
  if constexpr (kSr && StochasticStorage<T>::kApplies) {
    return StochasticStorage<T>::from_bits(bf16_bits_stochastic(x, element_bits(rb, stream, i)));
  } else {
    return to_storage<T>(x);
  }
}

// The state lists of one tensor, as the kernels address them: S* per list, or
// for int8 states (S = Q8) the code lists and then their scale lists; and the
// parameter's compensation buffer (kahan_sum; nullptr: none).
template <typename S, int NS>
struct StatePtrs {
  S* s[NS > 0 ? NS : 1];
  void* comp;
};
template <int NS>
struct StatePtrs<Q8, NS> {
  void* codes[NS > 0 ? NS : 1];  // list 0 int8 (signed map), the others uint8
  float* scales[NS > 0 ? NS : 1];
  void* comp;
};

// ------------------------------------------------- Kahan-compensated parameters
// kahan_sum=True keeps, beside each 16-bit parameter p, a buffer c of its
// dtype holding what rounding p lost: the update sees x = p + c (exact in
// float32: c is below half an ulp of p), and writes p = round(x'), c =
// round(x' - p) (the subtraction is exact).  So the parameter carries about
// twice its dtype's mantissa across steps, in the same pass (optimi's
// kahan_sum, TransformerEngine's parameter remainders).  A non-finite x' (or
// one that rounds to inf) keeps no compensation: inf - inf must not make the
// next step's p + c a NaN.  Only 16-bit parameters have a compensated form.
template <typename P>
constexpr bool kCompensable = sizeof(P) == 2;

template <typename P>
__device__ __forceinline__ float load_param(const P* p, const P* c, int64_t i) {
  return static_cast<float>(p[i]) + static_cast<float>(c[i]);
}

// The store: p = to_storage<P>(x), c = compensation<P>(x).  (Each assigned
// from a call at the call site: a 16-bit struct held in a variable, or written
// through a reference, kept GCC from vectorising the loop; the compiler shares
// the one rounding.)
template <typename P>
__device__ __forceinline__ P compensation(float x) {
  const float r = x - static_cast<float>(to_storage<P>(x));
  return to_storage<P>(fabsf(r) <= 3.4028234663852886e38f ? r : 0.0f);  // NaN / inf: 0 (a select: vectorises)
}

// Vector loads and stores.  The addresses come from the device tables, so
// nvcc cannot tell they are global: a plain dereference compiles to generic
// LD.E.128 / ST.E.128.  Telling it (__isGlobal, assumed) gives LDG.E.128 /
// STG.E.128 on sm_90 (64-bit for 16-bit types), plain weak accesses; the
// .ca/.cg intrinsics would do it too but as STRONG accesses (inline asm).
// Checked on the SASS by tests/test_sass_gates.py.
template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {
#ifdef __CUDACC__
  __builtin_assume(__isGlobal(p));
#endif
  return *reinterpret_cast<const Vec<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T>& v) {
#ifdef __CUDACC__
  __builtin_assume(__isGlobal(p));
#endif
  *reinterpret_cast<Vec<T>*>(p) = v;
}

// Everything a block needs before the element loop: chunk bounds, schedule.
struct ChunkInfo {
  int64_t t, start, end, k;
  double lr, mom;  // float64 (StepInputs)
  float grad_mul;
  bool skipped;
};

__device__ __forceinline__ ChunkInfo chunk_info(const Tables& tb, const StepInputs& in) {
  ChunkInfo c;
  const int64_t chunk = blockIdx.x;
  c.t = tb.chunk_tensor[chunk];
  c.start = tb.chunk_start[chunk];
  const int64_t n = tb.numels[c.t];
  c.end = c.start + kChunk < n ? c.start + kChunk : n;
  c.k = *in.counter;
  c.lr = *in.lr;  // one value per block: the schedule itself is evaluated once per step (finish_step)
  c.mom = in.mom != nullptr ? *in.mom : 0.0;
  c.grad_mul = in.grad_mul != nullptr ? *in.grad_mul : 1.f;
  c.skipped = in.skip != nullptr && *in.skip;
  return c;
}

// Apply op(p, g, s) to every element of [start, end).  P: parameter (and
// gradient) storage type, S: state storage type, NS: number of state lists;
// kSr: bfloat16 stores round stochastically (streams of rb: 0 the parameter,
// 1 + j state list j).
template <typename P, typename S, int NS, bool kSr, bool kKahan, typename Op>
__device__ __forceinline__ void for_each_plain(P* p, const P* g, const StatePtrs<S, NS>& sp, int64_t start, int64_t end,
                                               const RandomBits& rb, const Op& op) {
  S* const(&s)[NS > 0 ? NS : 1] = sp.s;
  P* const c = static_cast<P*>(sp.comp);  // kKahan only
#ifdef __CUDACC__
  // table addresses: tell nvcc they are global (LDG/STG, not generic LD/ST)
  __builtin_assume(__isGlobal(p));
  __builtin_assume(__isGlobal(g));
  if constexpr (kKahan) __builtin_assume(__isGlobal(c));
#pragma unroll
  for (int j = 0; j < NS; ++j) __builtin_assume(__isGlobal(s[j]));
#endif
  bool vec_ok = aligned(p) && aligned(g) && (!kKahan || aligned(c));
#pragma unroll
  for (int j = 0; j < NS; ++j) vec_ok = vec_ok && aligned(s[j]);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * kILP;
  int64_t i = start + static_cast<int64_t>(threadIdx.x) * kILP;
  if (vec_ok) {
    for (; i + kILP <= end; i += stride) {
      Vec<P> pv = load_vec(p + i);
      const Vec<P> gv = load_vec(g + i);
      Vec<P> cv;
      if constexpr (kKahan) cv = load_vec(c + i);
      Vec<S> sv[NS > 0 ? NS : 1];
#pragma unroll
      for (int j = 0; j < NS; ++j) sv[j] = load_vec<S>(s[j] + i);
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        float pf = kKahan ? load_param(pv.v, cv.v, e) : static_cast<float>(pv.v[e]);
        float sf[NS > 0 ? NS : 1];
#pragma unroll
        for (int j = 0; j < NS; ++j) sf[j] = static_cast<float>(sv[j].v[e]);
        op(pf, static_cast<float>(gv.v[e]), sf);
        if constexpr (kKahan) {
          pv.v[e] = to_storage<P>(pf);
          cv.v[e] = compensation<P>(pf);
        } else {
          pv.v[e] = store_as<P, kSr>(pf, rb, 0, i + e);
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) sv[j].v[e] = store_as<S, kSr>(sf[j], rb, 1 + j, i + e);
      }
      store_vec(p + i, pv);
      if constexpr (kKahan) store_vec(c + i, cv);
#pragma unroll
      for (int j = 0; j < NS; ++j) store_vec<S>(s[j] + i, sv[j]);
    }
    // The tail that does not fill a vector: one element per thread.
    const int64_t tail = end - (end - start) % kILP;
    i = tail + threadIdx.x;
    if (i >= end) return;
  } else {
    i = start + threadIdx.x;
  }
  for (; i < end; i += blockDim.x) {
    float pf = kKahan ? load_param(p, c, i) : static_cast<float>(p[i]);
    float sf[NS > 0 ? NS : 1];
#pragma unroll
    for (int j = 0; j < NS; ++j) sf[j] = static_cast<float>(s[j][i]);
    op(pf, static_cast<float>(g[i]), sf);
    if constexpr (kKahan) {
      p[i] = to_storage<P>(pf);
      c[i] = compensation<P>(pf);
    } else {
      p[i] = store_as<P, kSr>(pf, rb, 0, i);
    }
#pragma unroll
    for (int j = 0; j < NS; ++j) s[j][i] = store_as<S, kSr>(sf[j], rb, 1 + j, i);
  }
}

// int8 states: quantization blocks of kQBlock elements.  On the GPU a warp
// takes a block (4 elements per lane) and reduces its scale with shuffles;
// on the CPU (one "thread" per block of the grid) the block is a unit-stride
// loop.  op sees the decoded float32 states and returns the new ones, from
// which the parameter is updated (unquantized, as bitsandbytes and torchao do)
// and the block re-quantized with its new largest magnitude as the scale.
#ifdef __CUDACC__
constexpr int kQLanes = 32;
#else
constexpr int kQLanes = 1;
#endif
constexpr int kQPerLane = static_cast<int>(kQBlock) / kQLanes;
static_assert(kChunk % kQBlock == 0, "a chunk must hold whole quantization blocks");

__device__ __forceinline__ uint32_t lanes_max(uint32_t v) {
#ifdef __CUDACC__
#pragma unroll
  for (int o = kQLanes / 2; o > 0; o >>= 1) {
    const uint32_t w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
#endif
  return v;
}

// State list 0 (exp_avg, momentum_buffer) has signed codes, the others
// (exp_avg_sq, max_exp_avg_sq) unsigned: compile-time per list, so the
// element loops have no branch (the CPU compiler vectorises them).
template <bool kSigned>
__device__ __forceinline__ float decode_at(const void* codes, float scale, int64_t i) {
  if constexpr (kSigned) {
    return q8_decode<true>(static_cast<const int8_t*>(codes)[i], scale);
  } else {
    return q8_decode<false>(static_cast<const uint8_t*>(codes)[i], scale);
  }
}

// Re-quantizes one lane's n new values of a list (as q8_encode_input made
// them) with the block's scale.
template <bool kSigned>
__device__ __forceinline__ void encode_lane(void* codes, float* scales, int64_t blk, int64_t first, int n,
                                            const float* values, uint32_t amax, int64_t lane) {
  const float sc = bits_float(lanes_max(amax));
  const float f = q8_encode_factor<kSigned>(sc);
  if constexpr (kSigned) {
    int8_t* c = static_cast<int8_t*>(codes) + first;
    for (int e = 0; e < n; ++e) c[e] = static_cast<int8_t>(q8_encode<true>(values[e], f));
  } else {
    uint8_t* c = static_cast<uint8_t*>(codes) + first;
    for (int e = 0; e < n; ++e) c[e] = static_cast<uint8_t>(q8_encode<false>(values[e], f));
  }
  if (lane == 0) scales[blk] = sc;
}

template <typename P, int NS, bool kSr, bool kKahan, typename Op>
__device__ __forceinline__ void for_each_q8(P* p, const P* g, const StatePtrs<Q8, NS>& sp, int64_t start, int64_t end,
                                            const RandomBits& rb, const Op& op) {
  static_assert(NS > 0, "int8 states need a state list");
  P* const c = static_cast<P*>(sp.comp);  // kKahan only
  const int64_t lane = static_cast<int64_t>(threadIdx.x) % kQLanes;
  const int64_t warps = static_cast<int64_t>(blockDim.x) / kQLanes;
  for (int64_t b0 = start + (static_cast<int64_t>(threadIdx.x) / kQLanes) * kQBlock; b0 < end; b0 += warps * kQBlock) {
    const int64_t blk = b0 / kQBlock;
    const int64_t first = b0 + lane * kQPerLane;
    const int64_t left = end - first;
    const int n = left <= 0 ? 0 : left < kQPerLane ? static_cast<int>(left) : kQPerLane;  // this lane's elements
    float scale[NS];
    uint32_t amax[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      scale[j] = sp.scales[j][blk];
      amax[j] = 0u;
    }
    float st[NS][kQPerLane];
    // One element: decode, update, store the parameter, keep the new states.
    const auto element = [&](int e, float& pf, float gf) {
      const int64_t i = first + e;
      float sf[NS];
      sf[0] = decode_at<true>(sp.codes[0], scale[0], i);
#pragma unroll
      for (int j = 1; j < NS; ++j) sf[j] = decode_at<false>(sp.codes[j], scale[j], i);
      op(pf, gf, sf);
      st[0][e] = q8_encode_input<true>(sf[0]);
#pragma unroll
      for (int j = 1; j < NS; ++j) st[j][e] = q8_encode_input<false>(sf[j]);  // the update's own sqrt (low_precision.cuh)
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        const uint32_t m = magnitude_bits(sf[j]);
        amax[j] = m > amax[j] ? m : amax[j];
      }
    };
    bool full_vec = false;
    if constexpr (kQPerLane == kILP) {  // the GPU: a lane's 4 elements as one vector of p and of g
      full_vec = n == kQPerLane && aligned(p) && aligned(g) && (!kKahan || aligned(c));
      if (full_vec) {
        Vec<P> pv = load_vec(p + first);
        const Vec<P> gv = load_vec(g + first);
        Vec<P> cv;
        if constexpr (kKahan) cv = load_vec(c + first);
#pragma unroll
        for (int e = 0; e < kILP; ++e) {
          float pf = kKahan ? load_param(pv.v, cv.v, e) : static_cast<float>(pv.v[e]);
          element(e, pf, static_cast<float>(gv.v[e]));
          if constexpr (kKahan) {
            pv.v[e] = to_storage<P>(pf);
            cv.v[e] = compensation<P>(pf);
          } else {
            pv.v[e] = store_as<P, kSr>(pf, rb, 0, first + e);
          }
        }
        store_vec(p + first, pv);
        if constexpr (kKahan) store_vec(c + first, cv);
      }
    }
    if (!full_vec) {
      for (int e = 0; e < n; ++e) {
        float pf = kKahan ? load_param(p, c, first + e) : static_cast<float>(p[first + e]);
        element(e, pf, static_cast<float>(g[first + e]));
        if constexpr (kKahan) {
          p[first + e] = to_storage<P>(pf);
          c[first + e] = compensation<P>(pf);
        } else {
          p[first + e] = store_as<P, kSr>(pf, rb, 0, first + e);
        }
      }
    }
    encode_lane<true>(sp.codes[0], sp.scales[0], blk, first, n, st[0], amax[0], lane);
#pragma unroll
    for (int j = 1; j < NS; ++j) encode_lane<false>(sp.codes[j], sp.scales[j], blk, first, n, st[j], amax[j], lane);
  }
}

// A tensor with a compensation buffer (kahan_sum) takes the compensated copy
// of the loop, chosen once per chunk (never with stochastic rounding: the op
// refuses the pair).
template <typename P, typename S, int NS, bool kSr, typename Op>
__device__ __forceinline__ void for_each_element(P* p, const P* g, const StatePtrs<S, NS>& sp, int64_t start, int64_t end,
                                                 const RandomBits& rb, const Op& op) {
  if constexpr (kCompensable<P> && !kSr) {
    if (sp.comp != nullptr) {
      if constexpr (std::is_same_v<S, Q8>) {
        return for_each_q8<P, NS, false, true>(p, g, sp, start, end, rb, op);
      } else {
        return for_each_plain<P, S, NS, false, true>(p, g, sp, start, end, rb, op);
      }
    }
  }
  if constexpr (std::is_same_v<S, Q8>) {
    for_each_q8<P, NS, kSr, false>(p, g, sp, start, end, rb, op);
  } else {
    for_each_plain<P, S, NS, kSr, false>(p, g, sp, start, end, rb, op);
  }
}

// True in one block: the last to finish.  Every thread of every block has read
// the counters by then (classic threadfence reduction ticket); only the
// update path is atomic-free, the ticket is not on it.
// Ordering: each block's reads of the counters come before its
// __syncthreads(); thread 0 then fences and draws the ticket.  The block that
// draws gridDim.x - 1 has seen every other block's draw (a single
// modification order on the ticket), so every read of the old counters
// happened before the writes it does after the second barrier.  On the CPU
// (cpu_launch.h) the draw is an acq_rel fetch_add, the same argument in the
// C++ memory model, which ThreadSanitizer checks in CI.
__device__ __forceinline__ bool last_block(int32_t* ticket) {
  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    int32_t drawn = atomicAdd(ticket, 1);
    is_last = drawn == static_cast<int32_t>(gridDim.x) - 1;
    // Reset with an atomic too: a plain store here races (CUDA's and C++'s
    // memory models alike) with the other blocks' relaxed atomicAdds, which
    // no fence orders before it (found by tests/gpu_sim/sim_tsan.cpp).
    if (is_last) atomicExch(ticket, 0);
  }
  __syncthreads();
  if (is_last) __threadfence();
  return is_last;
}

// Whether the launch's blocks draw the ticket: someone must run finish_step.
__device__ __forceinline__ bool needs_last_block(const StepInputs& in) {
  return in.advance || in.next != nullptr || in.write_scalars;
}

// In the last block (thread 0): the schedule at the step the next update will
// see -- written to `next` -- and the counter advanced to it.  A skipped
// (non-finite) step moves neither.
__device__ __forceinline__ void finish_step(const StepInputs& in, const ChunkInfo& c) {
  if (threadIdx.x != 0) return;
  const int64_t k_next = c.k + (c.skipped ? 0 : 1);
  if (in.next != nullptr) {
    const LrMom s = evaluate_rows(in.rows, in.n_rows, k_next, nullptr);
    in.next[0] = s.lr;  // float64, as torch's schedulers write a Python float
    in.next[1] = s.mom;
  }
  if (in.advance) *in.counter = k_next;
}

template <typename P>
__device__ __forceinline__ P* addr(const int64_t* table, int64_t t) {
  return reinterpret_cast<P*>(table[t]);
}

// Tensor t's state lists from the tables (lists 2.. after params and grads).
template <typename S, int NS>
__device__ __forceinline__ StatePtrs<S, NS> state_ptrs(const Tables& tb, int64_t t) {
  StatePtrs<S, NS> r{};
  r.comp = tb.comp != nullptr ? addr<void>(tb.comp, t) : nullptr;
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    if constexpr (std::is_same_v<S, Q8>) {
      r.codes[j] = addr<void>(tb.addrs[2 + j], t);
      r.scales[j] = addr<float>(tb.addrs[2 + NS + j], t);
    } else {
      r.s[j] = addr<S>(tb.addrs[2 + j], t);
    }
  }
  return r;
}

}  // namespace clr_fused
