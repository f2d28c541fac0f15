"""Generated schedule kinds (clr_fused/schedule_codegen.py): a closed form
written once in schedule_math.py, traced into the C++ and Triton copies the
kernels call.  The tracer is checked on a probe that uses every construct it
takes (floor // and % of negative numbers, int / float mixes, min / max,
where, select, & and |, cos, sqrt, pow, unary minus): the C++ copy bit for bit against
Python (the same libm), the Triton copy bit for bit where it is arithmetic and
to float64 rounding where it calls the interpreter's transcendentals.  The
generated kinds themselves run through every backend in tests/cases.py's
SCHEDULES and against transformers in test_llm_schedules.py."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
import torch

import clr_fused as cf
from clr_fused import schedule_codegen as cg
from clr_fused import schedule_math as sm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arith(p, k, ops):
    """Integer and float64 arithmetic only: exact on every copy."""
    a, b, x, y = ops.i64(p, 0), ops.i64(p, 1), ops.f64(p, 2), ops.f64(p, 3)
    d = ops.maximum(1, b)
    q = (k - a) // d  # negative numerators: floor, as Python
    r = (a - k) % d
    s = k // ops.minimum(-1, b)  # a negative divisor
    t = (a - k) % ops.minimum(-1, b)
    m = ops.minimum(q, r) * 3 - -a + s - t
    f = ops.to_float(m) / d + x * 0.1 - y / 3
    g = -f + ops.where(k == b, 1, 0) + ops.where(x != y, 2.5, 1)
    pick = ops.where((k < a) | (q >= 2) & (x > 0.5), f, g)
    # select on a parameter (one branch in Python, both in the kernels) and on the step, of pairs
    h1, h2 = ops.select(b > 2, lambda: (f * 2, g), lambda: (g, f - 1))
    h3 = ops.select(k > a, lambda: h1 - h2, lambda: h2)
    return ops.maximum(pick, ops.minimum(y, 7)) - ops.where(k >= 3, x, 0.25) + h3


def _transcendental(p, k, ops):
    a, x = ops.i64(p, 0), ops.f64(p, 2)
    f = ops.to_float(k - a) / 7.0 + x
    return ops.cos(f) + ops.sqrt(ops.maximum(0.0, f * f + 1.0)) + ops.pow(2.5, (k - a) % 7) * ops.pow(x, 0.5)


PROBES = {"arith": _arith, "transcendental": _transcendental}


def _inputs(n=400, seed=0):
    rng = random.Random(seed)
    rows, ks = [], []
    for i in range(n):
        a, b = rng.randint(-60, 60), rng.randint(-9, 9)
        x, y = rng.uniform(-2.0, 3.0), rng.choice([rng.uniform(-5.0, 9.0), 0.5])
        if i % 5 == 0:
            y = x  # x != y false
        # ROW_WIDTH apart, as the kernel reads them
        rows.append([float(a), float(b), x, y] + [0.0] * (sm.ROW_WIDTH - 4))
        ks.append(rng.choice([rng.randint(0, 200), rng.randint(0, 2**40), b % 200, 0, 3]))
    return rows, ks


def _python(fn, rows, ks):
    return [float(fn(row, k, sm.PY_OPS)) for row, k in zip(rows, ks)]


@pytest.mark.parametrize("probe", list(PROBES))
def test_torch_ops_run_a_generated_closed_form_as_python(probe):
    """The same function on device tensors (the torch backend's path), bit for bit."""
    fn = PROBES[probe]
    rows, ks = _inputs(120)
    want = _python(fn, rows, ks)
    got = [float(fn(row, torch.tensor(k), sm.TORCH_OPS)) for row, k in zip(rows, ks)]
    if probe == "arith":
        assert got == want
    else:
        assert got == pytest.approx(want, rel=1e-14)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("probe", list(PROBES))
def test_cpp_copy_is_python_bit_for_bit(probe, tmp_path):
    fn = PROBES[probe]
    src = tmp_path / "probe.cpp"
    src.write_text(
        "#include <cstdio>\n#define __device__\n#define __forceinline__ inline\n"
        '#include "schedule.cuh"\nnamespace clr_fused {\n'
        + cg.cpp_function("probe", fn)
        + "}\nint main() {\n  double p[16] = {0};\n  long long k;\n"
        '  while (scanf("%lf %lf %lf %lf %lld", &p[0], &p[1], &p[2], &p[3], &k) == 5)\n'
        '    printf("%a\\n", clr_fused::probe(p, static_cast<int64_t>(k)));\n}\n'
    )
    exe = tmp_path / "probe"
    subprocess.run(
        ["g++", "-std=c++20", "-O2", "-ffp-contract=off", f"-I{ROOT}/csrc", str(src), "-o", str(exe)], check=True
    )
    rows, ks = _inputs()
    stdin = "".join(f"{r[0]!r} {r[1]!r} {r[2]!r} {r[3]!r} {k}\n" for r, k in zip(rows, ks))
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.split()
    got = [float.fromhex(v) for v in out]
    assert len(got) == len(rows)
    assert got == _python(fn, rows, ks)  # the same float64 bits (glibc's cos / sqrt / pow on both sides)


_KERNEL = """
@triton.jit
def _probe_kernel(rows, ks, out):
    i = tl.program_id(0)
    tl.store(out + i, _probe(rows + i * 16, tl.load(ks + i)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("probe", list(PROBES))
def test_triton_copy_is_python(probe):
    pytest.importorskip("triton")
    from clr_fused.kernels import triton_schedule

    fn = PROBES[probe]
    ns = dict(vars(triton_schedule))  # the helpers the generated code calls (_f64, _i64, _pow, _py_floordiv ...)
    cg.exec_source(cg.triton_function("_probe", fn) + _KERNEL, ns)
    rows, ks = _inputs(200)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows_t = torch.tensor(rows, dtype=torch.float64, device=dev)
    out = torch.empty(len(rows), dtype=torch.float64, device=dev)
    ns["_probe_kernel"][(len(rows),)](rows_t, torch.tensor(ks, dtype=torch.int64, device=dev), out)
    want = _python(fn, rows, ks)
    if probe == "arith":
        assert out.tolist() == want
    else:  # tl.cos / tl.sqrt / exp2-log2 pow: not libm's last bit
        assert out.tolist() == pytest.approx(want, rel=1e-13)


def test_generated_headers_are_current_and_every_generated_kind_is_in_the_extension():
    """csrc/schedule_generated*.h as the codegen writes them now (conftest and
    setup.py write them), and the built extension knows every generated kind."""
    for name, text in cg.cpp_headers().items():
        with open(os.path.join(ROOT, "csrc", name)) as f:
            assert f.read() == text, name
    assert sm.GENERATED, "no generated kind"
    names = {code: name for name, code in sm.KINDS.items()}
    for code in sm.GENERATED:
        assert f"X({names[code]}, " in cg.cpp_headers()[cg.KINDS_HEADER]
    from clr_fused import _ext

    module = _ext.load()
    if module is not None:
        assert {n: c for n, c in dict(module.SCHEDULE_KINDS).items() if c in sm.GENERATED} == {
            names[c]: c for c in sm.GENERATED
        }


def _if_on_traced(p, k, ops):
    return 1.0 if k > 3 else 2.0


def _power(p, k, ops):
    return ops.to_float(k) ** 2


def _float_mod(p, k, ops):
    return ops.to_float(k) % 2.0


def _where_on_number(p, k, ops):
    return ops.where(k, 1.0, 2.0)


def _bool_as_number(p, k, ops):
    return (k > 2) + 1.0


@pytest.mark.parametrize(
    "fn,match",
    [
        (_if_on_traced, "control flow"),
        (_power, "ops.pow"),
        (_float_mod, "float %"),
        (_where_on_number, "condition must be a comparison"),
        (_bool_as_number, "comparison used as a number"),
    ],
)
def test_the_tracer_refuses_what_straight_line_code_cannot_mirror(fn, match):
    with pytest.raises(TypeError, match=match):
        cg.trace(fn)


def _lr_momentum(p, k, ops):
    return ops.f64(p, 0) * ops.to_float(k), ops.f64(p, 1) - ops.to_float(k)


def test_a_closed_form_returning_lr_and_momentum_prints_both():
    assert "__device__ inline LrMom probe(" in cg.cpp_function("probe", _lr_momentum)
    assert cg.triton_function("_probe", _lr_momentum).rstrip().endswith("return v2, v5")


def _schedules():
    from .cases import SCHEDULES

    return [s for s in SCHEDULES if not isinstance(s, float) and not isinstance(s, cf.ReduceLROnPlateau)]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_kernel_lr_is_the_python_definition(backend):
    """The live LR and momentum the kernels write (float64, what g["lr"] reads)
    at every step equal the closed form in schedule_math (PY_OPS) bit for bit on
    the cpu backend (the same float64 operations and libm), and to float64
    rounding on Triton (the interpreter's cos / exp2 / log2)."""
    from .cases import backends

    if backend not in backends(backend):
        pytest.skip(f"backend {backend!r} does not run here")
    for spec in _schedules():
        p = torch.nn.Parameter(torch.zeros(3))
        opt = cf.SGD([p], lr=spec, momentum=0.9 if spec.cycles_momentum else 0.0, backend=backend)
        rows = [list(r) for r in sm.pack(spec.segments())]
        for k in range(25):
            lr, mom = sm.evaluate_rows(rows, k, sm.PY_OPS)
            mom = mom if spec.cycles_momentum else None
            got = float(opt.param_groups[0]["lr"])
            got_mom = opt.get_last_momentum()[0] if spec.cycles_momentum else None
            if backend == "cpu":
                assert (got, got_mom) == (lr, mom), (spec, k, got, got_mom, lr, mom)
            else:
                assert got == pytest.approx(lr, rel=1e-13, abs=0.0), (spec, k, got, lr)
                assert got_mom == (None if mom is None else pytest.approx(mom, rel=1e-13, abs=0.0)), (spec, k)
            p.grad = torch.ones_like(p)
            opt.step()
