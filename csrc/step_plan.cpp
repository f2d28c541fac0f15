// StepPlan: the O(1)-Python launch plan of a clr_fused optimizer.
//
// Python builds the plan once (buckets, state lists, device address tables:
// clr_fused/optim/plan.py) and hands it here.  Each step, one check() call
// walks every parameter of every param group in C++ and confirms that nothing
// the kernels rely on changed: the same parameter objects in the same groups;
// for every parameter its address, dtype, sizes and strides (so `p.data =
// p.data[:10]`, `set_`, `resize_` are caught: the tables hold the old element
// counts); a gradient exactly where there was one, dense, with the
// parameter's dtype, sizes and strides; and every state tensor's address,
// dtype, sizes and strides (and kahan_sum's compensation buffers').  A gradient that only moved (zero_grad(set_to_none=True) and a new
// backward) is the one change handled here: its address is patched into the
// bucket's grad table.  Anything else returns false and Python rebuilds the
// plan.  Then sgd()/adam() call the registered op through the dispatcher
// with the lists held here, so no tensor list crosses into Python.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <vector>

#include "step_api.h"

namespace clr_fused {

namespace {

// A tensor's storage address, read without data_ptr()'s copy-on-write work:
// this runs for every tensor on every step.
inline const void* address(const at::Tensor& t) {
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  return impl->has_storage() && impl->storage_initialized() ? impl->data() : nullptr;
}

struct Param;
void prefetch(const std::vector<Param>& ps, size_t i);

// What the kernels rely on of one tensor, besides its storage address.
struct Geometry {
  caffe2::TypeMeta dtype;
  // Inline storage up to 5 dimensions: the check walks thousands of these
  // each step, and a heap vector would add a dependent load per tensor.
  c10::SmallVector<int64_t, 5> sizes, strides;

  static Geometry of(const at::Tensor& t) {
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    Geometry g;
    g.dtype = impl->dtype();
    g.sizes.assign(impl->sizes().begin(), impl->sizes().end());
    g.strides.assign(impl->strides().begin(), impl->strides().end());
    return g;
  }
  // sizes() / strides() live inside the TensorImpl: no extra dependent load.
  bool same(const c10::TensorImpl* impl) const {
    return impl->dtype() == dtype && impl->sizes().equals(sizes) && impl->strides().equals(strides);
  }
};

struct Param {
  py::object obj;  // the object in param_groups[g]["params"] (identity check)
  at::Tensor tensor;  // the same tensor, for data_ptr() and grad()
  const void* data = nullptr;
  Geometry geometry;
  int bucket = -1;  // -1: no grad expected; kUnchecked: grad expected, gathered by Python
  int64_t slot = 0;
};

constexpr int kUnchecked = -2;

// The check is bound by memory latency (parameter -> storage, parameter ->
// autograd meta -> gradient -> storage: separate heap objects for every
// tensor).  Prefetch each level a few parameters ahead.
void prefetch(const std::vector<Param>& ps, size_t i) {
  if (i + 12 < ps.size()) __builtin_prefetch(ps[i + 12].tensor.unsafeGetTensorImpl());
  if (i + 8 < ps.size()) {
    const c10::TensorImpl* impl = ps[i + 8].tensor.unsafeGetTensorImpl();
    __builtin_prefetch(impl->storage().unsafeGetStorageImpl());
    __builtin_prefetch(impl->autograd_meta());
  }
  if (i + 4 < ps.size()) {
    const at::Tensor& g = ps[i + 4].tensor.unsafeGetTensorImpl()->grad();
    if (g.defined()) {
      __builtin_prefetch(g.unsafeGetTensorImpl());
    }
  }
  if (i + 2 < ps.size()) {
    const at::Tensor& g = ps[i + 2].tensor.unsafeGetTensorImpl()->grad();
    if (g.defined()) __builtin_prefetch(g.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl());
  }
}

struct Bucket {
  std::vector<at::Tensor> params, grads, steps;
  std::vector<std::vector<at::Tensor>> states;  // momentum_buffers, or exp_avgs, exp_avg_sqs[, max_exp_avg_sqs]
  std::vector<at::Tensor> compensation;  // kahan_sum's buffers, or none
  std::vector<const void*> state_data;  // flattened, for the check
  std::vector<Geometry> state_geometry;  // the same order
  std::vector<at::Tensor> tables;  // [addrs (params, grads, states...), numels, chunk_tensor, chunk_start]
  std::optional<at::Tensor> step_table;
  std::vector<int64_t> grad_addrs;  // host copy of tables[1]
  bool aligned = false;  // the Triton kernels were told every address is 16-byte aligned
};

}  // namespace

class __attribute__((visibility("hidden"))) StepPlan {
 public:
  explicit StepPlan(const std::vector<std::vector<py::object>>& groups) {
    for (const auto& group : groups) {
      std::vector<Param> ps;
      ps.reserve(group.size());
      for (const py::object& obj : group) {
        Param p;
        p.obj = obj;
        p.tensor = obj.cast<at::Tensor>();
        p.data = address(p.tensor);
        p.geometry = Geometry::of(p.tensor);
        ps.push_back(std::move(p));
      }
      groups_.push_back(std::move(ps));
    }
  }

  // A bucket whose gradients Python gathers itself each step (the reference
  // backend, DTensor shards, layouts that need dense stand-ins): only the
  // presence of their gradients is checked here.
  void add_unchecked(const std::vector<std::pair<int64_t, int64_t>>& positions) {
    for (const auto& [g, i] : positions) at(g, i).bucket = kUnchecked;
  }

  // A bucket the kernels read through address tables; returns its index.
  int64_t add_bucket(const std::vector<std::pair<int64_t, int64_t>>& positions, std::vector<at::Tensor> params,
                     const std::vector<at::Tensor>& grads, std::vector<std::vector<at::Tensor>> states,
                     std::vector<at::Tensor> steps, std::vector<at::Tensor> tables, std::optional<at::Tensor> step_table,
                     bool aligned, std::vector<at::Tensor> compensation) {
    TORCH_CHECK(positions.size() == params.size() && grads.size() == params.size(), "StepPlan.add_bucket: list lengths differ");
    TORCH_CHECK(tables.size() >= 5 && tables[1].numel() == static_cast<int64_t>(params.size()), "StepPlan.add_bucket: bad tables");
    Bucket b;
    const int index = static_cast<int>(buckets_.size());
    for (size_t s = 0; s < positions.size(); ++s) {
      Param& p = at(positions[s].first, positions[s].second);
      p.bucket = index;
      p.slot = static_cast<int64_t>(s);
      b.grad_addrs.push_back(reinterpret_cast<int64_t>(address(grads[s])));
    }
    for (const auto& list : states) {
      for (const auto& t : list) {
        b.state_data.push_back(address(t));
        b.state_geometry.push_back(Geometry::of(t));
      }
    }
    TORCH_CHECK(compensation.empty() || compensation.size() == b.grad_addrs.size(), "StepPlan.add_bucket: bad compensation");
    for (const auto* list : {&steps, &compensation}) {
      for (const auto& t : *list) {
        b.state_data.push_back(address(t));
        b.state_geometry.push_back(Geometry::of(t));
      }
    }
    b.compensation = std::move(compensation);
    b.params = std::move(params);
    b.grads = grads;  // for the launch that follows the build (check() refills them)
    b.states = std::move(states);
    b.steps = std::move(steps);
    b.tables = std::move(tables);
    b.step_table = std::move(step_table);
    b.aligned = aligned;
    buckets_.push_back(std::move(b));
    return index;
  }

  // True when the plan still describes param_groups (`groups`: each group's
  // "params" list); patches moved gradients into the grad tables.
  bool check(const py::list& groups) {
    if (static_cast<size_t>(py::len(groups)) != groups_.size()) return false;
    dirty_.assign(buckets_.size(), 0);
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      PyObject* list = PyList_Check(groups[gi].ptr()) ? groups[gi].ptr() : nullptr;
      const std::vector<Param>& ps = groups_[gi];
      if (list == nullptr || static_cast<size_t>(PyList_GET_SIZE(list)) != ps.size()) return false;
      PyObject* const* items = reinterpret_cast<PyListObject*>(list)->ob_item;
      const int64_t n = static_cast<int64_t>(ps.size());
      if (n < kParallelCheck || at::get_num_threads() < 2) {
        if (!check_range(ps, items, 0, n)) return false;
        continue;
      }
      // Thousands of parameters: the walk is bound by memory latency (a few
      // dependent loads per tensor), so threads overlap it.  Each writes only
      // its own slots; the shared flags are atomic.  The GIL stays with this
      // thread, which holds the list; the others only read its item array.
      std::atomic<bool> ok{true};
      at::parallel_for(0, n, kParallelCheck / 4, [&](int64_t begin, int64_t end) {
        if (ok.load(std::memory_order_relaxed) && !check_range(ps, items, begin, end)) ok.store(false, std::memory_order_relaxed);
      });
      if (!ok.load()) return false;
    }
    for (const Bucket& b : buckets_) {
      size_t k = 0;
      for (const auto& list : b.states) {
        for (const auto& t : list) {
          if (!same_state(b, k++, t)) return false;
        }
      }
      for (const auto* list : {&b.steps, &b.compensation}) {
        for (const auto& t : *list) {
          if (!same_state(b, k++, t)) return false;
        }
      }
    }
    for (size_t i = 0; i < buckets_.size(); ++i) {
      if (dirty_[i]) upload_grad_table(buckets_[i]);
    }
    return true;
  }

  // The gradients check() found, for the fused clip norm.
  std::vector<at::Tensor> grads(int64_t bucket) { return get(bucket).grads; }

  void sgd(int64_t bucket, const at::Tensor& fresh, const at::Tensor& rows, const at::Tensor& counter, const at::Tensor& lr,
           const std::optional<at::Tensor>& mom, const std::optional<at::Tensor>& next,
           const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip, const at::Tensor& ticket,
           double momentum, double dampening, double weight_decay, bool use_momentum, bool nesterov, bool maximize,
           bool stochastic, bool advance) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::sgd_step", "").typed<void(CLR_FUSED_SGD_PARAMS)>();
    Bucket& b = get(bucket);
    const std::vector<at::Tensor> none;
    TORCH_CHECK(b.states.size() == (use_momentum ? 1u : 0u) || (use_momentum && b.states.size() == 2u),
                "StepPlan.sgd: not an SGD bucket");
    op.call(b.params, b.grads, use_momentum ? b.states.at(0) : none, b.states.size() == 2 ? b.states[1] : none,
            b.tables, fresh, rows, counter, lr, mom, next, grad_mul, skip, ticket, momentum, dampening, weight_decay,
            use_momentum, nesterov, maximize, stochastic, advance, b.compensation);
    release(b);
  }

  void adam(int64_t bucket, const at::Tensor& rows, const at::Tensor& counter, const at::Tensor& lr,
            const std::optional<at::Tensor>& mom, const std::optional<at::Tensor>& next,
            const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip, const at::Tensor& ticket,
            const std::optional<at::Tensor>& betas, double beta1, double beta2, double eps, double weight_decay,
            bool amsgrad, bool decoupled, bool maximize, bool stochastic, bool advance) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::adam_step", "").typed<void(CLR_FUSED_ADAM_PARAMS)>();
    Bucket& b = get(bucket);
    const size_t ns = amsgrad ? 3u : 2u;  // state lists, then (int8 states) as many scale lists
    TORCH_CHECK((b.states.size() == ns || b.states.size() == 2 * ns) && b.step_table.has_value(),
                "StepPlan.adam: not an Adam bucket");
    const std::vector<at::Tensor> none;
    std::vector<at::Tensor> scales;
    for (size_t j = ns; j < b.states.size(); ++j) scales.insert(scales.end(), b.states[j].begin(), b.states[j].end());
    op.call(b.params, b.grads, b.states[0], b.states[1], amsgrad ? b.states[2] : none, scales, b.steps, b.tables,
            *b.step_table, rows, counter, lr, mom, next, grad_mul, skip, ticket, betas, beta1, beta2, eps, weight_decay,
            amsgrad, decoupled, maximize, stochastic, advance, b.compensation);
    release(b);
  }

  // The generic step (algorithms.h) of a bucket: its state lists, then (int8
  // states) as many scale lists, flattened for the op.
  void step(int64_t bucket, int64_t algorithm, const at::Tensor& rows, const at::Tensor& counter, const at::Tensor& lr,
            const std::optional<at::Tensor>& mom, const std::optional<at::Tensor>& next,
            const std::optional<at::Tensor>& grad_mul, const std::optional<at::Tensor>& skip, const at::Tensor& ticket,
            const std::vector<double>& hyper, bool stochastic, bool advance, const std::optional<at::Tensor>& scalars,
            bool write_scalars) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clr_fused::step", "").typed<void(CLR_FUSED_STEP_PARAMS)>();
    Bucket& b = get(bucket);
    const bool q8 = !b.states.empty() && !b.states[0].empty() && b.states[0][0].scalar_type() == at::kChar;
    const size_t ns = q8 ? b.states.size() / 2 : b.states.size();
    std::vector<at::Tensor> states, scales;
    for (size_t j = 0; j < b.states.size(); ++j) {
      auto& out = j < ns ? states : scales;
      out.insert(out.end(), b.states[j].begin(), b.states[j].end());
    }
    op.call(algorithm, b.params, b.grads, states, scales, b.tables, rows, counter, lr, mom, next, grad_mul, skip, ticket,
            hyper, stochastic, advance, scalars, write_scalars, b.compensation);
    release(b);
  }

  // Drops the gradient references check() took (the plan must not keep freed
  // gradients alive across zero_grad(set_to_none=True)).
  void release_all() {
    for (Bucket& b : buckets_) release(b);
  }

 private:
  // Groups with at least this many parameters are checked on several threads.
  static constexpr int64_t kParallelCheck = 4096;

  static bool same_state(const Bucket& b, size_t k, const at::Tensor& t) {
    return address(t) == b.state_data[k] && b.state_geometry[k].same(t.unsafeGetTensorImpl());
  }

  // Parameters [begin, end) of one group: true while nothing the plan depends on changed.
  bool check_range(const std::vector<Param>& ps, PyObject* const* items, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      prefetch(ps, static_cast<size_t>(i));
      const Param& p = ps[i];
      if (items[i] != p.obj.ptr()) return false;
      const c10::TensorImpl* impl = p.tensor.unsafeGetTensorImpl();
      if (address(p.tensor) != p.data || !p.geometry.same(impl)) return false;
      // TensorImpl::grad(), not Tensor::grad(): no non-leaf warning check.
      // torch checks a .grad against its parameter only when it is assigned;
      // `p.data = ...` changes the parameter behind it, so its dtype, sizes
      // and strides are checked here too.
      const at::Tensor& g = impl->grad();
      if (p.bucket == -1) {
        if (g.defined()) return false;
        continue;
      }
      if (!g.defined() || g.layout() != at::kStrided) return false;  // sparse: the rebuild refuses it
      if (p.bucket == kUnchecked) {
        // gathered by Python each step; its dtype and sizes must still be the parameter's
        const c10::TensorImpl* gi = g.unsafeGetTensorImpl();
        if (gi->dtype() != impl->dtype() || !gi->sizes().equals(impl->sizes())) return false;
        continue;
      }
      Bucket& b = buckets_[p.bucket];
      const void* ga = address(g);
      if (ga == nullptr || !p.geometry.same(g.unsafeGetTensorImpl())) return false;
      const int64_t addr = reinterpret_cast<int64_t>(ga);
      if (b.aligned && addr % 16 != 0) return false;  // a moved grad that breaks the vector path: rebuild
      if (addr != b.grad_addrs[p.slot]) {
        b.grad_addrs[p.slot] = addr;
        __atomic_store_n(&dirty_[p.bucket], static_cast<char>(1), __ATOMIC_RELAXED);
      }
      b.grads[p.slot] = g;
    }
    return true;
  }

  Param& at(int64_t g, int64_t i) {
    TORCH_CHECK(g >= 0 && g < static_cast<int64_t>(groups_.size()) && i >= 0 && i < static_cast<int64_t>(groups_[g].size()),
                "StepPlan: no parameter ", i, " in group ", g);
    return groups_[g][i];
  }

  Bucket& get(int64_t bucket) {
    TORCH_CHECK(bucket >= 0 && bucket < static_cast<int64_t>(buckets_.size()), "StepPlan: no bucket ", bucket);
    return buckets_[bucket];
  }

  static void release(Bucket& b) {
    for (auto& g : b.grads) g = at::Tensor();
  }

  static void upload_grad_table(Bucket& b) {
    at::Tensor& table = b.tables[1];
    const size_t bytes = b.grad_addrs.size() * sizeof(int64_t);
    if (table.is_cpu()) {
      std::memcpy(table.data_ptr(), b.grad_addrs.data(), bytes);
    } else {
      // Pinned staging + an async copy on the current stream, after any launch
      // that still reads the old table; the caching host allocator keeps the
      // staging buffer alive until the copy is done.
      at::Tensor host = at::empty({static_cast<int64_t>(b.grad_addrs.size())}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      std::memcpy(host.data_ptr(), b.grad_addrs.data(), bytes);
      table.copy_(host, /*non_blocking=*/true);
    }
  }

  std::vector<std::vector<Param>> groups_;
  std::vector<Bucket> buckets_;
  std::vector<char> dirty_;  // per bucket: a gradient moved this step (its table needs the upload)
};

void bind_step_plan(py::module& m) {
  py::class_<StepPlan>(m, "StepPlan", "The launch plan of one optimizer, checked each step in C++ (step_plan.cpp).")
      .def(py::init<const std::vector<std::vector<py::object>>&>(), py::arg("groups"))
      .def("add_unchecked", &StepPlan::add_unchecked, py::arg("positions"))
      .def("add_bucket", &StepPlan::add_bucket, py::arg("positions"), py::arg("params"), py::arg("grads"),
           py::arg("states"), py::arg("steps"), py::arg("tables"), py::arg("step_table"), py::arg("aligned"),
           py::arg("compensation"))
      .def("check", &StepPlan::check, py::arg("groups"))
      .def("grads", &StepPlan::grads, py::arg("bucket"))
      .def("sgd", &StepPlan::sgd)
      .def("adam", &StepPlan::adam)
      .def("step", &StepPlan::step)
      .def("release_all", &StepPlan::release_all);
}

}  // namespace clr_fused
