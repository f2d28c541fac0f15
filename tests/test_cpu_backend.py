"""The ``cpu`` backend: csrc/fused_kernels.cuh compiled for the CPU.

The same kernel templates as the ``cuda`` backend, run with the chunks spread
over at::parallel_for's threads, against the torch backend over the whole
matrix (every schedule kind, every flag with fixed and cycled momentum,
low precision with param or fp32 state, found_inf, grad_scale, clipping with
a NaN step, unaligned views, sizes across chunk boundaries), with one thread
and with several: the same bits either way.  The last-block ticket under
real concurrency, and a ThreadSanitizer build of it (tests/cpp/).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext

from .cases import ADAM_FLAGS, SCHED_IDS, SCHEDULES, SGD_FLAGS, assert_same, run_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [1, 3, 127, 128, 129, 1000, 4097, 16385, 65537]

pytestmark = pytest.mark.skipif(_ext.load() is None, reason=f"the extension is not built here: {_ext.error()}")


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _cpu_pair(*args, **kwargs):
    kwargs.setdefault("sizes", SIZES)
    return run_pair(*args, backend="cpu", device="cpu", **kwargs)


@pytest.mark.parametrize("spec", SCHEDULES, ids=SCHED_IDS)
@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", {})], ids=["sgd", "adam"])
def test_every_schedule_kind(threads, cls, kw, spec):
    assert_same(*_cpu_pair(cls, kw, spec))


@pytest.mark.parametrize("cycled", [False, True], ids=["fixed-momentum", "cycled-momentum"])
@pytest.mark.parametrize(
    "cls,kw",
    [("SGD", f) for f in SGD_FLAGS] + [(c, f) for c in ("Adam", "AdamW") for f in ADAM_FLAGS],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)
def test_every_flag(cls, kw, cycled):
    spec = cf.CyclicLR(0.001, 0.02, 3, 2, cycle_momentum=cycled, base_momentum=0.7, max_momentum=0.9)
    assert_same(*_cpu_pair(cls, kw, spec))


@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["state-as-param", "state-fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "cls,kw", [("SGD", dict(momentum=0.9, weight_decay=1e-3)), ("Adam", dict(eps=1e-4)), ("AdamW", dict(eps=1e-4))]
)
def test_low_precision(cls, kw, dtype, state_dtype):
    a, b, oa, ob = _cpu_pair(
        cls, kw, cf.CyclicLR(1e-3, 1e-2, 3, cycle_momentum=False), dtype=dtype, state_dtype=state_dtype
    )
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for x, y in zip(a, b):
        assert x.dtype == dtype
        # float32 op order differs between paths: a few units in the last place
        torch.testing.assert_close(x.float(), y.float(), rtol=4 * ulp, atol=ulp * 1e-2)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9, nesterov=True)), ("AdamW", dict(amsgrad=True))])
def test_same_bits_with_one_and_several_threads(cls, kw):
    runs = []
    for n in (1, 4):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            a, _, oa, _ = _cpu_pair(cls, kw, cf.OneCycleLR(0.01, 10), steps=6)
        finally:
            torch.set_num_threads(before)
        runs.append((a, oa))
    (a1, o1), (a4, o4) = runs
    for x, y in zip(a1, a4):
        assert torch.equal(x, y)
        for key, v in o1.state[x].items():
            assert torch.equal(v, o4.state[y][key]), key


def test_found_inf_clip_and_misaligned_views(threads):
    """Skip on found_inf / non-finite norm; unaligned storage and a non-dense
    parameter (its own launch, through dense stand-ins)."""

    def make():
        base = torch.randn(4097 + 1)
        ps = [torch.nn.Parameter(base[1:].clone()[0:]), torch.nn.Parameter(torch.randn(130))]
        ps.append(torch.nn.Parameter(torch.randn(1001)[1:]))  # an unaligned, dense view
        ps.append(torch.nn.Parameter(torch.randn(40, 30)[:, ::2]))  # not dense: grads get their own layout
        return ps

    torch.manual_seed(0)
    a = make()
    torch.manual_seed(0)
    b = make()
    assert a[2].data_ptr() % 16 != 0
    oa = cf.SGD(a, lr=cf.StepLR(0.1, 2), momentum=0.9, nesterov=True, backend="cpu", max_grad_norm=0.3)
    ob = cf.SGD(b, lr=cf.StepLR(0.1, 2), momentum=0.9, nesterov=True, backend="torch", max_grad_norm=0.3)
    for i in range(6):
        for ps, o in ((a, oa), (b, ob)):
            o.grad_scale = torch.tensor(4.0)
            o.found_inf = torch.tensor(float(i == 1))
            for j, p in enumerate(ps):
                p.grad = torch.full_like(p, 4.0 * (i + j + 1))
                if i == 3:
                    p.grad[(0,) * p.grad.dim()] = float("inf")
            o.step()
    assert_same(a, b, oa, ob)
    assert oa.schedule_step.item() == 4
    kept = [bk for bk in oa._plan.buckets if bk.native_index >= 0]
    assert len(kept) == 1 and oa._plan.buckets[0].native is not None


def test_ticket_under_concurrency_counters_exact():
    """Hundreds of steps over many chunks on 4 threads: the schedule counter and
    every Adam step count come out exactly, and the ticket is back at zero."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        ps = [torch.nn.Parameter(torch.randn(n)) for n in [5 * 16384 + 7, 16384, 3, 2 * 16384 + 1] * 6]
        opt = cf.Adam(ps, lr=cf.CyclicLR(1e-4, 1e-3, 7), backend="cpu")
        for _ in range(300):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
    finally:
        torch.set_num_threads(before)
    assert opt.schedule_step.item() == 300
    assert all(opt.state[p]["step"].item() == 300.0 for p in ps)
    assert all(int(b.ticket.item()) == 0 for b in opt._plan.buckets)


def _tsan_build(tmp_path, *defines):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ here")
    exe = tmp_path / "ticket_tsan"
    cmd = [gxx, "-std=c++17", "-O1", "-g", "-fsanitize=thread", "-Wno-tsan", "-pthread", *defines,
           "-I", os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "tests", "cpp"), os.path.join(ROOT, "tests", "cpp", "ticket_tsan.cpp"),
           "-o", str(exe)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    return subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)


def test_ticket_thread_sanitizer_reports_nothing(tmp_path):
    run = _tsan_build(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ThreadSanitizer" not in run.stderr
    assert run.stdout.startswith("ok:"), run.stdout


def test_ticket_thread_sanitizer_catches_a_relaxed_ticket(tmp_path):
    """The check can fail: with a relaxed ticket (no acquire/release) TSan
    reports the race between the blocks' counter reads and the last block's write."""
    run = _tsan_build(tmp_path, "-DCLR_FUSED_TICKET_ORDER=__ATOMIC_RELAXED")
    assert run.returncode == 66, run.stdout + run.stderr
    assert "ThreadSanitizer: data race" in run.stderr


def packed_float_ops(
    objdump_text: str, pattern: str = r"v?(?:mul|add|sub|div|sqrt)ps|vfn?m(?:add|sub)\d+ps"
) -> dict[str, int]:
    """Per kernel symbol in ``objdump -d -C`` output: how many packed fp32 SSE/AVX
    arithmetic instructions (mulps, addps, subps, divps, sqrtps, v-prefixed
    too, and the FMA forms vfmadd...ps), or of ``pattern``."""
    out = {}
    for block in re.split(r"\n(?=[0-9a-f]+ <)", objdump_text):
        m = re.match(r"[0-9a-f]+ <(.*)>:", block)
        if m and "_kernel<" in m.group(1):
            name = re.search(r"\w+_kernel<[^>]*>", m.group(1)).group(0)
            # a kernel's element loops may sit in out-of-line parts (its lambdas): all count
            out[name] = out.get(name, 0) + len(re.findall(rf"\s(?:{pattern})\s", block))
    return out


def _probe(tmp_path, *extra, pattern=None):
    from torch.utils.cpp_extension import include_paths

    from clr_fused._build_flags import CXX_FLAGS

    gxx, objdump = shutil.which("g++"), shutil.which("objdump")
    if gxx is None or objdump is None:
        pytest.skip("no g++/objdump here")
    obj = tmp_path / "probe.o"
    torch_includes = [f"-I{d}" for d in include_paths()]  # c10/util/BFloat16.h
    subprocess.run([gxx, "-std=c++20", *CXX_FLAGS, *extra, "-I", os.path.join(ROOT, "csrc"), *torch_includes, "-c",
                    os.path.join(ROOT, "tests", "cpp", "vectorize_probe.cpp"), "-o", str(obj)], check=True)  # fmt: skip
    text = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-C", str(obj)], check=True, capture_output=True, text=True
    ).stdout
    return packed_float_ops(text) if pattern is None else packed_float_ops(text, pattern)


_PROBED = [
    "sgd_kernel<float, float, 0", "sgd_kernel<float, float, 1", "adam_kernel<float, float, 2",
    "adam_kernel<float, float, 3", "sgd_kernel<c10::BFloat16, c10::BFloat16, 1", "sgd_kernel<c10::BFloat16, float, 1",
    "adam_kernel<c10::BFloat16, c10::BFloat16, 2", "adam_kernel<c10::BFloat16, float, 2",
    "adam_kernel<float, c10::BFloat16, 2", "adam_kernel<float, clr_fused::Q8, 2", "sgd_kernel<float, clr_fused::Q8, 1",
    "algorithm_kernel<clr_fused::Lion, float, float", "algorithm_kernel<clr_fused::SGDScheduleFree, float, float",
    "algorithm_kernel<clr_fused::AdamWScheduleFree, float, float",
]  # fmt: skip
_SR = "adam_kernel<c10::BFloat16, clr_fused::Q8, 2"  # with stochastic rounding (kSr)
PROBED = {f"{k}, false, false>" for k in _PROBED} | {f"{_SR}, false, true>"}  # the baseline copy (two roundings)
PROBED_FMA = {f"{k}, true, false>" for k in _PROBED} | {f"{_SR}, true, true>"}  # the AVX2 / AVX-512 copies


def test_element_loops_are_vectorised(tmp_path):
    """With the extension's flags, the fp32 kernels (SGD with/without momentum,
    Adam, Adam+amsgrad) and the bf16 ones (bf16 or fp32 state) compile to
    packed SSE arithmetic on the CPU."""
    ops = _probe(tmp_path)
    assert set(ops) == PROBED
    assert all(n >= 8 for n in ops.values()), ops


def test_fma_copies_are_vectorised_with_fused_multiply_adds(tmp_path):
    """The kFma instantiation that the AVX2 / AVX-512 copies run, compiled for
    AVX2 + FMA: packed arithmetic, and packed fused multiply-adds in every
    kernel (not calls to libm's fmaf)."""
    ops = _probe(tmp_path, "-mavx2", "-mfma", "-DCLR_FUSED_PROBE_FMA=true")
    assert set(ops) == PROBED_FMA
    assert all(n >= 8 for n in ops.values()), ops
    fmas = _probe(tmp_path, "-mavx2", "-mfma", "-DCLR_FUSED_PROBE_FMA=true", pattern=r"vfn?m(?:add|sub)\d+ps")
    assert all(n >= 1 for n in fmas.values()), fmas


def test_every_element_loop_is_vectorised(tmp_path):
    """GCC's own report: not one element loop of any probed kernel (each
    weight-decay / form variant is a loop of its own) is left scalar.  The
    packed-op counts above would miss one scalar loop beside vectorised ones
    (a select on a uniform bool once kept schedule-free AdamW's weight-decay
    loop scalar, 3x slower)."""
    import re as _re

    src = open(os.path.join(ROOT, "csrc", "multi_tensor.cuh")).read().splitlines()
    line = next(i + 1 for i, t in enumerate(src) if "for (; i < end; i += blockDim.x)" in t)
    for extra in ((), ("-mavx2", "-mfma", "-DCLR_FUSED_PROBE_FMA=true")):
        report = _probe_report(tmp_path, *extra)
        here = [r for r in report.splitlines() if _re.search(rf"multi_tensor\.cuh:{line}:\d+: ", r)]
        assert any("loop vectorized" in r for r in here), here[:5]
        assert not [r for r in here if "couldn't vectorize loop" in r], extra


def _probe_report(tmp_path, *extra) -> str:
    from torch.utils.cpp_extension import include_paths

    from clr_fused._build_flags import CXX_FLAGS

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ here")
    out = subprocess.run([gxx, "-std=c++20", *CXX_FLAGS, *extra, "-fopt-info-vec-all", "-I", os.path.join(ROOT, "csrc"),
                          *[f"-I{d}" for d in include_paths()], "-c", os.path.join(ROOT, "tests", "cpp", "vectorize_probe.cpp"),
                          "-o", str(tmp_path / "report.o")], check=True, capture_output=True, text=True)  # fmt: skip
    return out.stderr


def test_vectorisation_check_fails_on_scalar_code(tmp_path):
    ops = _probe(tmp_path, "-fno-tree-vectorize", "-fno-tree-slp-vectorize")
    assert set(ops) == PROBED
    assert all(n == 0 for n in ops.values()), ops


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_amsgrad_nan_propagates_like_torch(backend):
    """torch.maximum keeps a NaN in max_exp_avg_sq; so must the fused kernels."""
    p = torch.nn.Parameter(torch.randn(37))
    q = torch.nn.Parameter(p.detach().clone())
    ours = cf.Adam([p], lr=1e-2, amsgrad=True, backend=backend)
    ref = torch.optim.Adam([q], lr=1e-2, amsgrad=True)
    for i in range(3):
        g = torch.randn(37)
        if i == 1:
            g[5] = float("nan")
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.isnan(ours.state[p]["max_exp_avg_sq"][5]) and torch.isnan(p[5])
    torch.testing.assert_close(p, q, equal_nan=True)


def test_bf16_rounding_is_bit_identical_to_torch():
    """The CPU kernels' branch-free float -> bfloat16 (csrc/cpu_storage.h) against
    torch's own conversion, bit for bit: random magnitudes over the whole
    range, subnormals, overflow to inf, inf and NaN, through one SGD update the
    torch backend computes with the same float32 operations."""
    gen = torch.Generator().manual_seed(3)
    n = 65537
    g = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-140, 120, (n,), generator=gen).float())
    g[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, -0.0, 3.4e38])
    g = g.to(torch.bfloat16)
    out = []
    for backend in ("cpu", "torch"):
        p = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16))
        opt = cf.SGD([p], lr=0.3, momentum=0.9, backend=backend, state_dtype=torch.float32)
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    nan = torch.isnan(out[1])
    assert nan.sum() == 1 and torch.equal(torch.isnan(out[0]), nan)
    # every other value bit for bit; the NaN is c10's canonical 0x7FC0 (torch's
    # vectorised copy keeps other NaN payload bits, so NaN bits are not compared)
    assert torch.equal(out[0][~nan].view(torch.int16), out[1][~nan].view(torch.int16))
    assert out[0][nan].view(torch.int16).item() == 0x7FC0


_ISA_SCRIPT = r"""
import json, sys, torch, clr_fused as cf
SIZES = (1, 7, 100, 1023, 4097, 65537)
SGD = [dict(lr=2**-7), dict(lr=2**-7, momentum=0.9), dict(lr=2**-7, momentum=0.9, dampening=0.1, weight_decay=1e-2),
       dict(lr=2**-7, momentum=0.9, nesterov=True, maximize=True, weight_decay=1e-3)]
ADAM = [("Adam", dict(lr=2**-10)), ("Adam", dict(lr=2**-10, amsgrad=True, weight_decay=1e-2)), ("AdamW", dict(lr=2**-10)),
        ("Adam", dict(lr=2**-10, betas=(0.3, 0.99), maximize=True)), ("AdamW", dict(lr=2**-10, amsgrad=True, weight_decay=0.1))]

def final(make):
    out = []
    for n in SIZES:
        torch.manual_seed(n)
        p = torch.nn.Parameter(torch.randn(n))
        opt = make(p)
        for _ in range(30):
            p.grad = torch.randn(n)
            opt.step()
        out.append(p.detach())
    return torch.cat(out)

counts = {}
for kw in SGD:
    ours = final(lambda p: cf.SGD([p], backend="cpu", **kw))
    counts[f"SGD {kw}"] = {"loop": int((ours != final(lambda p: torch.optim.SGD([p], foreach=False, **kw))).sum())}
for name, kw in ADAM:
    ours = final(lambda p: getattr(cf, name)([p], backend="cpu", **kw))
    loop = final(lambda p: getattr(torch.optim, name)([p], foreach=False, **kw))
    fused = final(lambda p: getattr(torch.optim, name)([p], fused=True, **kw))
    counts[f"{name} {kw}"] = {"loop": int((ours != loop).sum()), "fused": int((ours != fused).sum()),
                              "fused_vs_loop": int((fused != loop).sum())}
json.dump({"isa": cf._ext.load().cpu_isa(), "counts": counts}, open(sys.argv[1], "w"))
"""

# torch's CPU kernels at each capability, beside the copy of ours that runs on it.
_TORCH_CAPABILITY = {"baseline": "default", "avx2": "avx2", "avx512": "avx512"}


def test_each_isa_copy_rounds_as_torch_at_that_capability(tmp_path):
    """Every copy of the CPU kernels (baseline, AVX2, AVX-512: cpu_ops.cpp)
    against torch at the same ATEN_CPU_CAPABILITY, fp32, 30 steps, sizes 1 to
    65,537: SGD (every flag) equals torch's for-loop step bit for bit; Adam /
    AdamW equal torch's fused CPU step bit for bit, so they differ from the
    for-loop step exactly where torch's fused step does (torch's for-loop
    takes MKL's square root, which is not always correctly rounded)."""
    import json
    import subprocess
    import sys

    best = _ext.load().cpu_isa()
    isas = {"baseline": ["baseline"], "avx2": ["baseline", "avx2"], "avx512": ["baseline", "avx2", "avx512"]}[best]
    for isa in isas:
        env = {**os.environ, "CLR_FUSED_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": _TORCH_CAPABILITY[isa]}
        out = tmp_path / f"{isa}.json"
        run = subprocess.run(
            [sys.executable, "-c", _ISA_SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=900
        )
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(out.read_text())
        assert result["isa"] == isa
        assert len(result["counts"]) == 9
        for case, c in result["counts"].items():
            if case.startswith("SGD"):
                assert c["loop"] == 0, (isa, case, c)
            else:
                assert c["fused"] == 0 and c["loop"] == c["fused_vs_loop"], (isa, case, c)
