"""The CUDA kernels' code (csrc/fused_kernels.cuh, schedule.cuh) run on the CPU.

csrc/host_emulation.cpp compiles the very same kernel templates as plain C++
(one thread per block, blocks in sequence) with the real argument packing and
the real Python wrapper (kernels/cuda_update.py); these tests compare that
against the torch backend, so the kernels' math, indexing, vector and tail
paths, skip logic and step-counter epilogue are checked without a GPU.
Concurrency (the ticket ordering) and the compiled device code itself still
need the GPU tests.
"""

from __future__ import annotations

import os

import pytest
import torch

import clr_fused as cf
from clr_fused import backends
from clr_fused.kernels import cuda_update

from .test_triton import ADAM_FLAGS, SCHEDULES, SCHED_IDS, SGD_FLAGS, _assert_same, _run_pair

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SIZES = [1, 3, 127, 128, 129, 1000, 4097, 16385, 65537]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the real kernels are tested instead")


@pytest.fixture(scope="module")
def emulation():
    from torch.utils.cpp_extension import load

    return load(
        name="clr_fused_host_emulation",
        sources=[os.path.join(CSRC, "host_emulation.cpp")],
        extra_include_paths=[CSRC],
        extra_cflags=["-O1"],
    )


@pytest.fixture
def cuda_on_cpu(emulation, monkeypatch):
    monkeypatch.setattr(cuda_update, "_module", lambda: emulation)
    real = backends.why_unavailable
    monkeypatch.setattr(backends, "why_unavailable", lambda name, dev: None if name == "cuda" else real(name, dev))


@pytest.mark.parametrize("spec", SCHEDULES, ids=SCHED_IDS)
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {})], ids=["sgd", "adam"])
def test_every_schedule_kind(cuda_on_cpu, cls, kw, spec):
    _assert_same(*_run_pair(cls, kw, spec, sizes=SIZES, backend="cuda"))


@pytest.mark.parametrize("cycled", [False, True], ids=["fixed-momentum", "cycled-momentum"])
@pytest.mark.parametrize(
    "cls,kw",
    [("SGD", f) for f in SGD_FLAGS] + [(c, f) for c in ("Adam", "AdamW") for f in ADAM_FLAGS],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)
def test_every_flag(cuda_on_cpu, cls, kw, cycled):
    spec = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=cycled, base_momentum=0.7, max_momentum=0.9)
    _assert_same(*_run_pair(cls, kw, spec, sizes=SIZES, backend="cuda"))


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["state-as-param", "state-fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9, weight_decay=1e-3)), ("Adam", dict(eps=1e-4)), ("AdamW", dict(eps=1e-4))])
def test_low_precision(cuda_on_cpu, cls, kw, dtype, state_dtype):
    a, b, oa, ob = _run_pair(cls, kw, cf.CyclicLR(1e-3, 1e-2, 3, cycle_momentum=False), dtype=dtype, state_dtype=state_dtype, sizes=SIZES, backend="cuda")
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for x, y in zip(a, b):
        assert x.dtype == dtype
        # float32 op order differs between paths: a few units in the last place
        torch.testing.assert_close(x.float(), y.float(), rtol=4 * ulp, atol=ulp * 1e-2)


def test_found_inf_clip_and_misaligned_views(cuda_on_cpu):
    """Skip on found_inf / non-finite norm; unaligned storage takes the scalar path."""

    def make():
        base = torch.randn(4097 + 1)
        ps = [torch.nn.Parameter(base[1:].clone()[0:]), torch.nn.Parameter(torch.randn(130))]
        # an unaligned, dense view: data_ptr offset by one element
        ps.append(torch.nn.Parameter(torch.randn(1001)[1:]))
        return ps

    torch.manual_seed(0)
    a = make()
    torch.manual_seed(0)
    b = make()
    assert a[2].data_ptr() % 16 != 0
    oa = cf.SGD(a, lr=cf.StepLR(0.1, 2), momentum=0.9, nesterov=True, backend="cuda", max_grad_norm=0.3)
    ob = cf.SGD(b, lr=cf.StepLR(0.1, 2), momentum=0.9, nesterov=True, backend="torch", max_grad_norm=0.3)
    for i in range(6):
        for ps, o in ((a, oa), (b, ob)):
            o.grad_scale = torch.tensor(4.0)
            o.found_inf = torch.tensor(float(i == 1))
            for j, p in enumerate(ps):
                p.grad = torch.full_like(p, 4.0 * (i + j + 1))
                if i == 3:
                    p.grad[0] = float("inf")
            o.step()
    _assert_same(a, b, oa, ob)
    assert oa.schedule_step.item() == 4
