"""The compiled CUDA extension: built and importable here; on a GPU, checked
against the torch backend like the Triton kernels."""

from __future__ import annotations

import os

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext

from .cases import ADAM_FLAGS, SCHED_IDS, SCHEDULES, SGD_FLAGS, SIZES, assert_same, run_pair

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_extension_loads_or_reports_why():
    mod = _ext.load()
    if os.environ.get("CLR_FUSED_REQUIRE_EXT") == "1":  # CI compiles it: it must load
        assert mod is not None, _ext.error()
    if mod is None:
        assert _ext.error() is not None
    else:
        assert mod.CHUNK == 16384 and callable(mod.StepPlan)
        if os.environ.get("CLR_FUSED_REQUIRE_EXT") == "1" and torch.version.cuda is not None:
            assert mod.HAS_CUDA_KERNELS  # CI builds with nvcc: the CUDA kernels are in


def test_ops_registered_for_torch_compile():
    """C++ ops with mutation-annotated schemas, a CPU (and in a CUDA build a
    CUDA) kernel, the autograd kernel that bumps versions, and fake impls."""
    mod = _ext.load()
    if mod is None:
        pytest.skip(f"extension absent here: {_ext.error()}")
    from clr_fused.kernels import compiled

    compiled._ops()  # registers the fake impls
    for name, mutated in (("sgd_step", ["params", "momentum_buffers", "scales", "counter", "ticket", "next", "compensation"]),
                          ("adam_step", ["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "scales", "steps", "counter", "ticket", "next",
                                         "compensation"])):  # fmt: skip
        op = getattr(torch.ops.clr_fused, name).default
        args = {a.name: a for a in op._schema.arguments}
        assert sorted(n for n, a in args.items() if a.alias_info is not None and a.alias_info.is_write) == sorted(
            mutated
        )
        for key in ["CPU", "Autograd"] + (["CUDA"] if mod.HAS_CUDA_KERNELS else []):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key), key
    # the fake impl runs on fake tensors without touching data
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p, g = torch.empty(4), torch.empty(4)
        t = [torch.empty(1, dtype=torch.int64)] * 2 + [
            torch.empty(1, dtype=torch.int64),
            torch.empty(1, dtype=torch.int32),
            torch.empty(1, dtype=torch.int64),
        ]
        torch.ops.clr_fused.sgd_step([p], [g], [], [], t, torch.empty(1, dtype=torch.int8), torch.empty(1, 16, dtype=torch.float64),
                                     torch.empty((), dtype=torch.int64), torch.empty(()), None, torch.empty(2), None, None,
                                     torch.empty(1, dtype=torch.int32), 0.0, 0.0, 0.0, False, False, False, False, True, [])  # fmt: skip


def test_cuda_backend_by_name_on_cpu_raises_with_reason():
    p = [torch.nn.Parameter(torch.zeros(3))]
    p[0].grad = torch.ones(3)
    with pytest.raises(cf.BackendUnavailable, match="CUDA tensors"):
        cf.Adam(p, lr=0.1, backend="cuda").step()
    assert torch.equal(p[0], torch.zeros(3))


@cuda
@pytest.mark.parametrize("spec", SCHEDULES, ids=SCHED_IDS)
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {})], ids=["sgd", "adam"])
def test_every_schedule_kind(cls, kw, spec):
    assert_same(*run_pair(cls, kw, spec, backend="cuda"))


@cuda
@pytest.mark.parametrize(
    "cls,kw", [("SGD", f) for f in SGD_FLAGS] + [(c, f) for c in ("Adam", "AdamW") for f in ADAM_FLAGS]
)
def test_every_flag(cls, kw):
    spec = cf.CyclicLR(0.001, 0.02, 3, 2, base_momentum=0.7, max_momentum=0.9)
    assert_same(*run_pair(cls, kw, spec, backend="cuda"))


@cuda
@pytest.mark.parametrize("state_dtype", [None, torch.float32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", dict(eps=1e-4))])
def test_low_precision(cls, kw, dtype, state_dtype):
    a, b, oa, ob = run_pair(
        cls, kw, cf.CyclicLR(1e-3, 1e-2, 3), dtype=dtype, state_dtype=state_dtype, sizes=SIZES, backend="cuda"
    )
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for x, y in zip(a, b):
        # float32 op order differs between paths: a few units in the last place
        torch.testing.assert_close(x.float(), y.float(), rtol=4 * ulp, atol=ulp * 1e-2)


@cuda
def test_found_inf_skips_on_device():
    ps = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in SIZES]
    opt = cf.Adam(ps, lr=cf.CyclicLR(1e-3, 1e-2, 3), backend="cuda", amsgrad=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in ps]
    opt.found_inf = torch.tensor(1.0, device="cuda")
    opt.grad_scale = torch.tensor(2.0, device="cuda")
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    assert opt.schedule_step.item() == 1 and all(opt.state[p]["step"].item() == 1 for p in ps)
